"""Create/destroy cycles leave no mount, process, namespace or depot file behind."""

from __future__ import annotations

import os
from pathlib import Path

from tests.conftest import Daemon, leftovers


def _namespaces() -> set[str]:
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            for kind in ("mnt", "pid", "net", "uts", "ipc"):
                try:
                    found.add(os.readlink(entry / "ns" / kind))
                except OSError:
                    pass
    return found


def test_200_create_destroy_cycles_leave_nothing(daemon: Daemon) -> None:
    namespaces_before = _namespaces()
    with daemon.client() as c:
        for i in range(200):
            handle = c.create()
            if i % 20 == 0:
                assert c.run(handle, "echo hi") == [0, "hi\n", ""]
            c.destroy(handle)
        assert c.list() == []
    assert leftovers(daemon) == {"mounts": [], "processes": [], "depot": [], "cgroups": []}
    assert _namespaces() <= namespaces_before
