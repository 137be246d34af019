#!/bin/bash
# Run the test suite (as root) with the installed virtual environment.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
VENV=/opt/corral/venv
"$VENV/bin/ruff" check supervisor plugins tests
"$VENV/bin/mypy" supervisor plugins tests
exec "$VENV/bin/python" -m pytest "$@"
