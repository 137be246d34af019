"""No container process can reach the host's ``corral-init`` binary (CVE-2019-5736).

Launchers, inits and jobs before their exec run from a sealed in-memory copy, made
once by the zygote: their ``/proc/PID/exe`` is that copy, which cannot be written
nor resized, never the host's file, which a privileged job could otherwise open
through ``/proc`` and rewrite once nothing runs it.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from supervisor.client import Client
from tests.conftest import Daemon, init_pid, live_children

#: linux/fcntl.h
F_GET_SEALS = 1034
F_SEAL_SHRINK, F_SEAL_GROW, F_SEAL_WRITE = 0x0002, 0x0004, 0x0008


def _runs_sealed_copy(pid: int, host_binary: Path) -> bool:
    """Whether process *pid* runs a sealed memfd, not *host_binary*."""
    fd = os.open(f"/proc/{pid}/exe", os.O_RDONLY | os.O_CLOEXEC)
    try:
        st, host = os.fstat(fd), os.stat(host_binary)
        if (st.st_dev, st.st_ino) == (host.st_dev, host.st_ino):
            return False
        seals = fcntl.fcntl(fd, F_GET_SEALS)  # EINVAL (OSError) on anything but a memfd
        return seals & (F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE) == (
            F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE
        )
    except OSError:
        return False
    finally:
        os.close(fd)


def test_the_zygote_and_the_inits_run_a_sealed_copy_of_the_binary(
    daemon: Daemon, client: Client, container: str, artifacts: tuple[Path, Path]
) -> None:
    init = init_pid(daemon, container)
    assert _runs_sealed_copy(init, artifacts[0])
    zygotes = [
        pid
        for pid in live_children(daemon.pid)
        if Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[1:2] == [b"zygote"]
    ]
    assert zygotes and all(_runs_sealed_copy(pid, artifacts[0]) for pid in zygotes)
    # The container works as before.
    assert client.run(container, "echo hi") == [0, "hi\n", ""]
