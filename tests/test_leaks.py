"""Create/destroy cycles leave no mount, process, namespace, cgroup or depot file behind."""

from __future__ import annotations

import json
import os
from pathlib import Path

from tests.conftest import Daemon, leftovers

KINDS = ("mnt", "pid", "net", "uts", "ipc")


def _namespaces_in_use() -> set[str]:
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            for kind in KINDS:
                try:
                    found.add(os.readlink(entry / "ns" / kind))
                except OSError:
                    pass
    return found


def _container_namespaces(daemon: Daemon, handle: str) -> set[str]:
    record = json.loads((daemon.depot / handle / "state.json").read_text())
    pid = record["plugins"]["isolation"]["pid"]
    return {os.readlink(f"/proc/{pid}/ns/{kind}") for kind in KINDS}


def test_200_create_destroy_cycles_leave_nothing(daemon: Daemon) -> None:
    created: set[str] = set()
    host = {os.readlink(f"/proc/self/ns/{kind}") for kind in KINDS}
    with daemon.client() as c:
        before = set(c.list())
        for i in range(200):
            handle = c.create()
            namespaces = _container_namespaces(daemon, handle)
            assert not namespaces & host  # five namespaces of its own
            created |= namespaces
            if i % 20 == 0:
                assert c.run(handle, "echo hi") == [0, "hi\n", ""]
            c.destroy(handle)
        assert set(c.list()) == before
    assert not created & _namespaces_in_use()
    assert leftovers(daemon) == {"mounts": [], "processes": [], "depot": sorted(before), "cgroups": []}
