#!/usr/bin/env bash
# Run the test suite with the project venv. pytest exit 5 ("no tests collected") is a failure here:
# a suite that ran nothing must not look green.
set -uo pipefail
cd "$(dirname "$0")/.."
.venv/bin/python -m pytest tests -q -p no:cacheprovider "$@"
rc=$?
if [ "$rc" -eq 5 ]; then
  echo "error: pytest collected no tests" >&2
  exit 1
fi
exit "$rc"
