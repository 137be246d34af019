#!/bin/bash
# Run the test suite (as root) with the installed virtual environment.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
VENV=/opt/corral/venv
"$VENV/bin/ruff" check supervisor plugins tests bench
"$VENV/bin/mypy" supervisor plugins tests bench
exec "$VENV/bin/python" -m pytest "$@"
