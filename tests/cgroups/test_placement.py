"""Where a container's processes are, in every cgroup hierarchy of the host.

No process of a container may stay in the daemon's cgroup (often the host's root) of
any hierarchy, those without Corral's controllers included (v1 ``blkio``,
``name=systemd``, a hybrid host's v2 tree): a privileged job with a user and cgroup
namespace could make cgroups there, outside Corral's parent. And each container has
its own cgroup namespace, rooted at its cgroups.
"""

from __future__ import annotations

import re
from pathlib import Path

from plugins.cgroups.group import INIT_LEAF
from supervisor.client import Client
from tests.conftest import Daemon, cgroup_layout, init_pid


def _hierarchies(cgroup_file: str) -> dict[str, str]:
    """``/proc/PID/cgroup`` as hierarchy (its controllers, or "" for v2) -> path."""
    found = {}
    for line in cgroup_file.splitlines():
        _, names, path = line.split(":", 2)
        found[names] = path
    return found


def test_every_hierarchy_puts_the_container_under_the_parent(
    daemon: Daemon, client: Client, container: str
) -> None:
    seen = _hierarchies(Path(f"/proc/{init_pid(daemon, container)}/cgroup").read_text())
    status, out, _ = client.run(container, "cat /proc/self/cgroup")
    assert status == 0
    wanted = f"/{daemon.cgroup_parent}/{container}"
    # With memory on v2 the init is in a leaf of its own there (see plugins/cgroups/jobs.py).
    nested = cgroup_layout(daemon)["memory"].version == 2
    v2_wanted = f"{wanted}/{INIT_LEAF}" if nested else wanted
    outside = {
        names: path
        for names, path in seen.items()
        if path != (v2_wanted if names == "" else wanted)  # v2's line names no controller
    }
    # In every hierarchy of the host (blkio, name=systemd, the v2 tree...).
    assert outside == {}, f"the init is outside {wanted} in {outside}"
    # Inside, its own cgroup namespace: each hierarchy's root is the container's cgroup,
    # where the job is at the root or in its own job cgroup right under it (issue #14).
    paths = set(_hierarchies(out).values())
    # (On a v2-only host the one hierarchy is the job's: "/job-N".)
    assert paths and all(re.fullmatch(r"/(job-\d+)?", path) for path in paths), out
