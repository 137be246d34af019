"""Per-namespace sysctls of a container's network namespace, set while its init sets up.

``/proc/sys/net`` shows the network namespace of the thread that opens it, so the
value is written by a thread of its own that enters the namespace (``setns`` moves
only the calling thread) and then ends: no thread of the daemon's pools ever
runs in a container's namespace. About 0.1-0.3 ms, beside the veth's set-up.
"""

from __future__ import annotations

import ctypes
import os
import threading
from collections.abc import Awaitable, Callable

import trio

from plugins.net.links import LinkError

CLONE_NEWNET = 0x40000000
#: Who may open ICMP echo sockets (``SOCK_DGRAM``, ``IPPROTO_ICMP``) without
#: ``CAP_NET_RAW``: every group, as Docker sets it, so ``ping`` works for any user.
PING_GROUP_RANGE = ("/proc/sys/net/ipv4/ping_group_range", b"0 2147483647")

_libc = ctypes.CDLL(None, use_errno=True)


def _write_in(netns: int, settings: tuple[tuple[str, bytes], ...]) -> None:
    """Enter the network namespace *netns* (this thread only) and write *settings*;
    closes *netns*."""
    try:
        if _libc.setns(netns, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns: {os.strerror(err)}")
        for path, value in settings:
            fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
            try:
                os.write(fd, value)
            finally:
                os.close(fd)
    finally:
        os.close(netns)


def start_in_namespace(netns: int, *settings: tuple[str, bytes]) -> Callable[[], Awaitable[None]]:
    """Start writing each ``(path under /proc/sys/net, value)`` of *settings* in the network
    namespace *netns* (an fd, left open); the function returned waits for it.

    The wait raises:
        LinkError: naming the sysctl and the kernel's reason.
    """
    token = trio.lowlevel.current_trio_token()
    done = trio.Event()
    failure: list[OSError] = []
    fd = os.dup(netns)  # the thread's own: the caller's may close while it runs

    def work() -> None:
        try:
            _write_in(fd, settings)
        except OSError as exc:
            failure.append(exc)
        finally:
            try:
                token.run_sync_soon(done.set)
            except trio.RunFinishedError:
                pass

    async def wait() -> None:
        await done.wait()
        if failure:
            names = ", ".join(path for path, _ in settings)
            raise LinkError(f"{names} in the container's network namespace: {failure[0]}")

    # A thread that ends with its task: a pooled one would stay in the namespace.
    threading.Thread(target=work, name="corral-netns-sysctl", daemon=True).start()
    return wait
