# Shared set-up for scripts/demo and scripts/test: a project virtualenv with netshield installed.
# Sourced, not run. Usage: ensure_venv [EXTRAS]
ensure_venv() {
  local extras="${1:-}"
  if ! python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    echo "netshield needs Python 3.11 or newer as python3 (found: $(python3 --version 2>&1))" >&2
    exit 2
  fi
  if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv || { echo "python3 -m venv failed: install the python3-venv package" >&2; exit 2; }
  fi
  local stamp=".venv/.netshield-installed${extras:+-$extras}"
  if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    .venv/bin/python -m pip install -q --disable-pip-version-check -e ".${extras:+[$extras]}"
    touch "$stamp"
  fi
}
