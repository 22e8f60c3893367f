"""The package's layers, read from the source: reference/data only reads (nothing
of reference outside it but leaf helpers), the binary format is defined once,
and the preprocessing does not import torch."""
import ast
import os
import subprocess
import sys

from conftest import ROOT

REFERENCE = os.path.join(ROOT, "reference")
# Helpers below every layer: they may be imported from reference/data, and import nothing of reference.
LEAF_HELPERS = {"reference.jsonfile", "reference.hugepages", "reference.malloc"}


def modules(folder: str):
    for dirpath, _, names in os.walk(folder):
        for name in sorted(names):
            if name.endswith(".py"):
                path = os.path.join(dirpath, name)
                parts = os.path.relpath(path, ROOT)[:-3].split(os.sep)
                if parts[-1] == "__init__":
                    parts = parts[:-1]
                yield path, ".".join(parts), name == "__init__.py"


def imported(path: str, module: str, is_package: bool) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in the file, at any depth (function bodies too)."""
    package = module if is_package else module.rsplit(".", 1)[0]
    found = []
    for node in ast.walk(ast.parse(open(path).read(), path)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                base = node.module or ""
            else:
                anchor = package.split(".")
                anchor = anchor[:len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([node.module] if node.module else []))
            if node.module is None:  # from . import x: the names are modules
                found += [(node.lineno, f"{base}.{alias.name}") for alias in node.names]
            else:
                found.append((node.lineno, base))
    return found


def inside(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def test_data_imports_nothing_of_reference_outside_data():
    offending = []
    for path, module, is_package in modules(os.path.join(REFERENCE, "data")):
        for line, name in imported(path, module, is_package):
            if inside(name, "reference") and not inside(name, "reference.data") and name not in LEAF_HELPERS:
                offending.append(f"{os.path.relpath(path, ROOT)}:{line}: imports {name}")
    assert not offending, "reference/data must only read; move what needs more up a layer:\n" + "\n".join(offending)


def test_the_checker_catches_a_lower_layer_reaching_up(tmp_path):
    folder = tmp_path / "reference" / "data"
    folder.mkdir(parents=True)
    (folder / "bad.py").write_text("from ..metrics import roc_auc\nfrom .binary import NUM_DENSE\n"
                                   "def f():\n    from reference.preprocess import Pipeline\n")
    names = [name for _, name in imported(str(folder / "bad.py"), "reference.data.bad", False)]
    assert names == ["reference.metrics", "reference.data.binary", "reference.preprocess"]


def test_leaf_helpers_import_nothing_of_reference():
    for name in LEAF_HELPERS:
        path = os.path.join(ROOT, *name.split(".")) + ".py"
        outside = [n for _, n in imported(path, name, False) if inside(n, "reference")]
        assert not outside, f"{name} is allowed in reference/data as a leaf helper, but imports {outside}"


def test_format_constants_are_defined_once():
    definitions = []
    for path, _, _ in modules(REFERENCE):
        for node in ast.walk(ast.parse(open(path).read(), path)):
            if isinstance(node, (ast.Assign, ast.AnnAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                for target in targets:
                    if isinstance(target, ast.Name) and target.id in ("NUM_DENSE", "NUM_SPARSE", "COLUMNS",
                                                                      "RECORD_BYTES", "NUM_FIELDS"):
                        definitions.append((os.path.relpath(path, ROOT), target.id))
    assert sorted(definitions) == [("reference/data/binary.py", n) for n in
                                   ("COLUMNS", "NUM_DENSE", "NUM_SPARSE", "RECORD_BYTES")]


def test_preprocessing_does_not_import_torch_and_keeps_its_command():
    code = "import sys, reference.preprocess; print('torch' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "False", proc.stderr
    proc = subprocess.run([sys.executable, "-m", "reference.preprocess", "--help"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.startswith("usage: python -m reference.preprocess"), proc.stderr
