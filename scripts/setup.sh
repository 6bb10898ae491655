#!/usr/bin/env bash
# Create ./.venv (Python 3.11) and install telechat_ms with its test extras. Idempotent: a second run only
# re-checks the install. Override the interpreter with PYTHON=/path/to/python3.11.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3
"$PYTHON" -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else 1)' || {
  echo "error: telechat_ms needs Python 3.11 (mindspore 2.9.0 wheels); found $("$PYTHON" --version 2>&1)" >&2
  exit 2
}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.telechat_ms-installed
if [ ! -f "$stamp" ] || [ setup.py -nt "$stamp" ]; then
  echo "setting up .venv (first run: mindspore, mindformers, torch; a few minutes) ..."
  # torch==2.13.0 (CPU) is preferred from a local wheel directory when pip's config has one (find-links)
  if ! .venv/bin/python -m pip install -e ".[test]" > .venv/install.log 2>&1; then
    tail -30 .venv/install.log >&2
    echo "error: pip install failed; full log in .venv/install.log" >&2
    exit 1
  fi
  touch "$stamp"
fi
.venv/bin/python -c "import telechat_ms, mindspore; print('telechat_ms', telechat_ms.__version__, '| mindspore', mindspore.__version__)" 2>/dev/null | tail -1
