#!/bin/bash
# Run the checks and the test suite (as root) with the installed virtual environment:
# ruff, mypy, the suite on this host, then (when run with no arguments, as CI does) the
# cgroup tests and a smoke set in a cgroup-v2-only guest (scripts/test-v2.sh).
# Arguments go to pytest on this host, and skip the guest.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
VENV=/opt/corral/venv
"$VENV/bin/ruff" check supervisor plugins tests bench executors
"$VENV/bin/mypy" supervisor plugins tests bench executors
"$VENV/bin/python" -m pytest "$@"
if [ $# -eq 0 ]; then
    bash scripts/test-v2.sh
fi
