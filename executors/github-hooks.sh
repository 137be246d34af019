#!/bin/sh
# The GitHub Actions runner's container hooks on Corral: point the runner's
# ACTIONS_RUNNER_CONTAINER_HOOKS at this file (installed as
# /usr/local/lib/corral/github-hooks.sh by scripts/install.sh). The runner writes one
# JSON object to stdin; corral-github-hooks reads it (docs/ci-executors.md).
exec corral-github-hooks "$@"
