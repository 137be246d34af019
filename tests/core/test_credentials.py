"""The client's credentials, as the server takes them from a connection (no root needed)."""

from __future__ import annotations

import os
import socket

from supervisor.credentials import Credentials, peer_credentials, proc_groups


def test_the_peer_is_the_connecting_process_with_its_groups() -> None:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with ours, theirs:
        who = peer_credentials(ours)
    assert (who.pid, who.uid, who.gid) == (os.getpid(), os.geteuid(), os.getegid())
    assert sorted(who.groups) == sorted(os.getgroups())


def test_proc_groups_are_dropped_when_the_pid_is_not_that_clients() -> None:
    assert sorted(proc_groups(os.getpid(), os.geteuid())) == sorted(os.getgroups())
    assert proc_groups(os.getpid(), os.geteuid() + 1) == ()  # the pid names another's process
    assert proc_groups(2**22 + 1, 0) == ()  # beyond pid_max: no such process


def test_membership_counts_the_primary_group() -> None:
    who = Credentials(1, 4242, 100, (65534,))
    assert who.in_group(100) and who.in_group(65534) and not who.in_group(0)
    assert not who.root and Credentials(1, 0, 0, ()).root
