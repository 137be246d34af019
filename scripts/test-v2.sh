#!/bin/bash
# The cgroup tests and a smoke set of the suite in a cgroup-v2-only guest (QEMU, the host's
# root shared read-only; see scripts/v2vm.sh), as root, after scripts/install.sh.
#   bash scripts/test-v2.sh            # the cgroup tests and the smoke set (about 7 minutes)
#   bash scripts/test-v2.sh tests      # the whole suite in the guest (about 20 minutes)
# Arguments go to pytest in the guest. This host's cgroup controllers are all on v1.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# Limits, OOM, stop and kill, destroy, restart and leaks on v2; the disk quota on a depot
# whose filesystem is not the root one (the guest's /tmp); the init joining a v2 cgroup.
SMOKE=(
    tests/cgroups
    tests/fs/test_quota.py
    tests/test_leaks.py
    tests/test_restart.py
    tests/isolation/test_init.py::test_cgroup_directive_moves_the_container
    tests/isolation/test_init.py::test_launcher_sets_up_while_the_cgroups_are_still_to_come
    tests/isolation/test_userns.py
)
[ $# -gt 0 ] || set -- "${SMOKE[@]}"
CMD="/opt/corral/venv/bin/python -m pytest -p no:cacheprovider -q -rfEs $(printf '%q ' "$@")"
# A stalled guest kernel (exit 126; seen once under TCG, not reproduced) boots once more;
# the first run's console tail stays in the log.
rc=0; bash scripts/v2vm.sh "$CMD" || rc=$?
if [ $rc -eq 126 ]; then
    echo "test-v2: the guest's kernel stalled; running the guest once more" >&2
    rc=0; bash scripts/v2vm.sh "$CMD" || rc=$?
fi
exit $rc
