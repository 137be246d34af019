"""``events``: what happens to containers, as it happens, to any number of subscribers."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from supervisor import errors
from supervisor.client import Client
from tests.conftest import NOTHING_LEFT, Daemon, init_pid, leftovers, wait_for_output, wait_until

MB = 1 << 20


class Subscriber:
    """A raw connection subscribed with ``events``: reads one line at a time."""

    def __init__(self, daemon: Daemon, *filters: dict[str, Any], timeout: float = 20) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(str(daemon.socket))
        self.file = self.sock.makefile("rb")
        self.send(["events", *filters])
        first = self.line()
        assert first[0] == "watching", first  # from here on, events are seen

    def send(self, request: list[Any]) -> None:
        self.sock.sendall(json.dumps(request).encode() + b"\n")

    def line(self) -> Any:
        line = self.file.readline()
        assert line, "the daemon closed the subscription"
        return json.loads(line)

    def events_of(self, handle: str, until: str) -> list[dict[str, Any]]:
        """The events of *handle* up to and including one of kind/new state *until*."""
        seen = []
        while True:
            message = self.line()
            if message[0] == "event" and message[1]["handle"] == handle:
                seen.append(message[1])
                if until in (message[1]["kind"], message[1].get("new")):
                    return seen

    def close(self) -> None:
        self.file.close()
        self.sock.close()


@contextmanager
def subscribed(daemon: Daemon, *filters: dict[str, Any]) -> Iterator[Subscriber]:
    subscriber = Subscriber(daemon, *filters)
    try:
        yield subscriber
    finally:
        subscriber.close()


def summary(event: dict[str, Any]) -> tuple[Any, ...]:
    fields = {k: v for k, v in event.items() if k not in ("kind", "handle", "time")}
    return (event["kind"], *fields.values())


def test_a_subscriber_sees_a_container_life_in_order(daemon: Daemon, client: Client) -> None:
    with subscribed(daemon) as a, subscribed(daemon, {"kinds": ["state", "oom"]}) as b:
        handle = client.create({"limits": {"mem": 64 * MB}})
        assert client.run(handle, "exit 3")[0] == 3
        client.spawn(handle, "dd if=/dev/zero of=/dev/null bs=300M count=1")  # OOM: stopped
        seen = [summary(e) for e in a.events_of(handle, "stopped")]
        client.destroy(handle)
        seen += [summary(e) for e in a.events_of(handle, "destroyed")]
        assert seen[:3] == [
            ("state", "born", "active"),
            ("job_started", 1, None),
            ("job_exited", 1, 3),
        ]
        assert ("job_started", 2, None) in seen and ("job_exited", 2, 137) in seen
        assert seen.index(("oom",)) < seen.index(("state", "active", "stopped"))
        assert seen[-1] == ("state", "stopped", "destroyed")
        # Another subscriber, of two kinds, saw those only, in the same order.
        assert [summary(e) for e in b.events_of(handle, "destroyed")] == [
            s for s in seen if s[0] in ("state", "oom")
        ]


def test_a_jobs_log_tag_is_in_its_start_event_and_the_daemons_log(
    daemon: Daemon, client: Client, container: str
) -> None:
    with subscribed(daemon, {"kinds": ["job_started"]}) as s:
        job = client.spawn(container, "true", log_tag="build 7/lint")
        (started,) = s.events_of(container, "job_started")
    assert (started["job_id"], started["log_tag"]) == (job, "build 7/lint")
    spawned = [r for r in daemon.log_records("job spawned") if r.get("job_id") == job]
    assert [r.get("log_tag") for r in spawned if r.get("handle") == container] == ["build 7/lint"]
    for bad in ("", "x" * 129, "a\nb"):
        with pytest.raises(errors.InvalidRequest, match="log_tag must be 1 to 128 printable"):
            client.spawn(container, "true", log_tag=bad)


def test_limits_net_rules_and_grace_are_events(daemon: Daemon, client: Client) -> None:
    with subscribed(daemon, {"kinds": ["limit", "net", "grace_expired"]}) as s:
        handle = client.create({"grace_time": 0.2})
        client.call("limit", handle, "pids", 50)
        client.call("net", handle, "out", "198.18.0.2:80", {"protocol": "tcp"})
        assert s.line()[1] | {"time": 0} == {
            "kind": "limit",
            "handle": handle,
            "resource": "pids",
            "value": 50,
            "time": 0,
        }
        net = s.line()[1]
        assert (net["kind"], net["direction"]) == ("net", "out")
        assert net["rule"]["network"] == "198.18.0.2/32" and net["rule"]["ports"] == [80, 80]
    with daemon.client() as other:  # the creating connection closes: the grace time runs
        other.ping()
    client.close()
    with subscribed(daemon, {"handles": [handle], "kinds": ["grace_expired"]}) as s:
        assert summary(s.line()[1]) == ("grace_expired", 0.2)
        assert s.line() == {"type": "object", "payload": []}  # its last container is gone


def test_a_subscription_to_handles_ends_once_they_are_destroyed(
    daemon: Daemon, client: Client
) -> None:
    handle = client.create()
    with subscribed(daemon, {"handles": [handle], "kinds": ["state"]}) as s:
        client.destroy(handle)
        assert summary(s.line()[1]) == ("state", "active", "stopped")
        assert summary(s.line()[1]) == ("state", "stopped", "destroyed")
        assert s.line() == {"type": "object", "payload": []}


def test_another_request_ends_the_subscription(daemon: Daemon) -> None:
    with subscribed(daemon) as s:
        s.send(["ping"])
        assert s.line() == {"type": "object", "payload": []}
        assert s.line() == {"type": "object", "payload": "pong"}


@pytest.mark.parametrize(
    ("filters", "error", "words"),
    [
        ({"kinds": ["state", "sneeze"]}, errors.InvalidRequest, "unknown kind 'sneeze'"),
        ({"handles": ["no-such-container"]}, errors.UnknownHandle, "no-such-container"),
        ({"handles": []}, errors.InvalidRequest, "handles must be a non-empty list"),
        ({"colour": ["x"]}, errors.InvalidRequest, "unknown option 'colour'"),
    ],
)
def test_bad_filters_are_refused_naming_the_problem(
    client: Client, filters: dict[str, Any], error: type[Exception], words: str
) -> None:
    with pytest.raises(error, match=words):
        client.call("events", filters)
    assert client.ping() == "pong"


def test_a_subscriber_that_does_not_read_loses_events_not_the_daemon(
    daemon: Daemon, client: Client
) -> None:
    handle = client.create()
    count = 6000  # more lines than the socket buffers and the subscription hold
    try:
        with subscribed(daemon, {"handles": [handle], "kinds": ["limit"]}) as slow:
            # Pipelined limit writes, each an event, while the subscriber reads nothing:
            # every one is answered.
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.settimeout(60)
                s.connect(str(daemon.socket))
                request = json.dumps(["limit", handle, "pids", 100]).encode() + b"\n"
                sender = threading.Thread(target=s.sendall, args=(request * count,))
                sender.start()  # the replies are read meanwhile
                replies = b""
                while replies.count(b"\n") < count:
                    replies += s.recv(1 << 20)
                sender.join()
            assert replies.count(b'"payload":100') == count
            events = dropped = 0
            while events + dropped < count:
                line = slow.line()
                if line[0] == "dropped":
                    assert events > 0 and line[1] > 0  # after what was kept, before the rest
                    dropped += line[1]
                else:
                    events += 1
            assert dropped > 0 and events + dropped == count
    finally:
        client.destroy(handle)


# -- pause and resume ---------------------------------------------------------------------------

#: A job counting into /tmp/count; it prints "ready" once it has counted.
COUNTER = (
    "i=0; while :; do i=$((i+1)); echo $i > /tmp/count; [ $i = 1 ] && echo ready; sleep 0.01; done"
)


def counted(daemon: Daemon, handle: str) -> int:
    """The counter's last value, read through the init's root (as well while it is frozen)."""
    text = Path(f"/proc/{init_pid(daemon, handle)}/root/tmp/count").read_text().strip()
    return int(text or 0)  # empty: frozen between the truncation and the write


def test_pause_stops_a_counting_job_and_resume_continues_it(daemon: Daemon, client: Client) -> None:
    handle = client.create()
    try:
        wait_for_output(daemon, handle, client.spawn(handle, COUNTER))
        with subscribed(daemon, {"handles": [handle], "kinds": ["state"]}) as s:
            assert client.call("pause", handle) == "ok"  # once every process is frozen
            assert summary(s.line()[1]) == ("state", "active", "paused")
            assert client.info(handle)["state"] == "paused"
            frozen = counted(daemon, handle)
            time.sleep(0.3)  # a window to measure in: running, it would count about 30
            assert counted(daemon, handle) == frozen
            with pytest.raises(errors.InvalidState, match="cannot spawn while paused"):
                client.spawn(handle, "true")
            with pytest.raises(errors.InvalidState, match="cannot pause while paused"):
                client.call("pause", handle)
            assert client.call("resume", handle) == "ok"
            assert summary(s.line()[1]) == ("state", "paused", "active")
        wait_until(lambda: counted(daemon, handle) > frozen, what="the counter to go on")
        with pytest.raises(errors.InvalidState, match="cannot resume while active"):
            client.call("resume", handle)
    finally:
        client.destroy(handle)


def test_a_paused_container_is_stopped_by_stop_and_cannot_be_paused_then(
    daemon: Daemon, client: Client
) -> None:
    handle = client.create()
    try:
        job = client.spawn(handle, "trap 'exit 42' TERM; " + COUNTER)
        wait_for_output(daemon, handle, job)
        client.call("pause", handle)
        client.stop(handle)  # thawed first: the job hears TERM
        assert client.link(handle, job)[0] == 42
        assert client.info(handle)["state"] == "stopped"
        with pytest.raises(errors.InvalidState, match="cannot pause while stopped"):
            client.call("pause", handle)
    finally:
        client.destroy(handle)


def test_a_paused_container_stays_paused_across_a_restart_and_is_destroyed(
    fresh_daemon: Daemon,
) -> None:
    d = fresh_daemon
    with d.client() as c:
        handle = c.create({"grace_time": None})
        job = c.spawn(handle, COUNTER)
        wait_for_output(d, handle, job)
        c.call("pause", handle)
        frozen = counted(d, handle)
    d.kill9()
    d.start()
    with d.client() as c:
        assert c.info(handle)["state"] == "paused"
        assert counted(d, handle) == frozen  # the restart took a while: nothing counted
        assert job in c.info(handle)["job_ids"]
        c.call("resume", handle)
        wait_until(lambda: counted(d, handle) > frozen, what="the counter to go on")
        c.call("pause", handle)
        c.destroy(handle)
    assert leftovers(d) == NOTHING_LEFT
