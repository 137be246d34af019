"""Talking to running jobs through the socket: signals, and how a job ended (issue #14)."""

from __future__ import annotations

import json

import pytest

from supervisor import errors
from supervisor.client import Client
from tests.conftest import Daemon, wait_for_output


def raw_stream(client: Client, handle: str, job: int, opts: dict[str, object]) -> list[object]:
    """Every line ``stream`` sends, the final reply object last (decoded as JSON)."""
    client.sock.sendall(json.dumps(["stream", handle, job, opts]).encode() + b"\n")
    lines: list[object] = []
    while not (lines and isinstance(lines[-1], dict)):
        lines.append(json.loads(client.file.readline()))
    return lines


def test_signal_by_name_ends_the_job_and_link_says_so(
    client: Client, container: str, daemon: Daemon
) -> None:
    job = client.spawn(container, "echo ready; exec sleep 100")
    wait_for_output(daemon, container, job)
    assert client.signal(container, job, "INT") == "ok"
    status, out, _, report = client.link(container, job, ended=True)
    assert (status, out) == (130, "ready\n")
    assert report == {"ended": {"exit_code": None, "signal": 2, "killed_by": None}}


def test_an_exit_code_above_128_is_no_signal(client: Client, container: str) -> None:
    status, _, _, report = client.run(container, "exit 130", ended=True)
    assert status == 130
    assert report["ended"] == {"exit_code": 130, "signal": None, "killed_by": None}


def test_signal_reaches_the_whole_process_group(
    client: Client, container: str, daemon: Daemon
) -> None:
    # The shell waits on a child; SIGTERM by number reaches both.
    job = client.spawn(container, "sleep 100 & echo ready; wait; echo not reached")
    wait_for_output(daemon, container, job)
    client.signal(container, job, 15)
    status, out, _, report = client.link(container, job, ended=True)
    assert (status, out) == (143, "ready\n")
    assert report["ended"]["signal"] == 15
    assert client.run(container, "pidof sleep || echo none")[1] == "none\n"


def test_signal_to_one_pid_of_the_job(client: Client, container: str, daemon: Daemon) -> None:
    job = client.spawn(container, "sleep 100 & echo $!; echo ready; wait $!; echo child ended $?")
    wait_for_output(daemon, container, job)
    with daemon.client() as reader:
        child = int(next(chunk for _, chunk in reader.stream(container, job)).split()[0])
    client.signal(container, job, "SIGKILL", pid=child)
    status, out, _ = client.link(container, job)
    assert status == 0
    assert out.endswith("child ended 137\n")  # the shell lived on: only the child was hit


def test_bad_signals_are_refused_and_change_nothing(
    client: Client, container: str, daemon: Daemon
) -> None:
    job = client.spawn(container, "echo ready; exec sleep 100")
    other = client.spawn(container, "echo $$; echo ready; exec sleep 100")
    wait_for_output(daemon, container, job)
    wait_for_output(daemon, container, other)
    with daemon.client() as reader:
        other_pid = int(next(reader.stream(container, other))[1].split()[0])
    with pytest.raises(errors.InvalidRequest, match="unknown signal name 'NOPE'"):
        client.signal(container, job, "NOPE")
    with pytest.raises(errors.InvalidRequest, match="no signal number 0"):
        client.signal(container, job, 0)
    with pytest.raises(errors.InvalidRequest, match="no signal number 99"):
        client.signal(container, job, 99)
    with pytest.raises(errors.InvalidRequest, match="SIGNAL must be a name or a number"):
        client.signal(container, job, [2])  # type: ignore[arg-type]
    with pytest.raises(errors.UnknownJob, match=f"container {container}: no job 999"):
        client.signal(container, 999, "INT")
    with pytest.raises(errors.InvalidRequest, match="pid must be a process of the job"):
        client.signal(container, job, "KILL", pid=1)
    # Another job's process (its leader), or one that does not exist: not this job's.
    for pid in (other_pid, 99999):
        with pytest.raises(errors.InvalidRequest, match=f"job {job}: no such process in the job"):
            client.signal(container, job, "KILL", pid=pid)
    assert client.run(container, "pidof sleep | wc -w")[1].strip() == "2"  # both still run
    client.signal(container, job, "KILL")
    assert client.link(container, job)[0] == 137
    with pytest.raises(errors.UnknownJob):
        client.signal(container, job, "INT")  # linked: forgotten
    client.signal(container, other, "KILL")
    # Not linked: still known, but ended once its output is drained.
    assert "".join(chunk for _, chunk in client.stream(container, other)).endswith("ready\n")
    with pytest.raises(errors.InvalidState, match=f"job {other} has ended"):
        client.signal(container, other, "INT")


def test_stream_ends_with_the_status_when_asked(client: Client, container: str) -> None:
    job = client.spawn(container, "echo out; exit 3")
    assert raw_stream(client, container, job, {"ended": True}) == [
        ["stdout", "out\n"],
        {
            "type": "object",
            "payload": {
                "status": 3,
                "ended": {"exit_code": 3, "signal": None, "killed_by": None},
            },
        },
    ]
    # Asked for nothing: the final payload is [] as ever.
    assert raw_stream(client, container, job, {}) == [
        ["stdout", "out\n"],
        {"type": "object", "payload": []},
    ]
    assert client.link(container, job) == [3, "out\n", ""]


def test_stop_is_the_reason(daemon: Daemon, client: Client) -> None:
    handle = client.create()
    job = client.spawn(handle, "echo ready; exec sleep 1000")
    wait_for_output(daemon, handle, job)
    client.stop(handle)
    assert client.link(handle, job, ended=True)[3]["ended"] == {
        "exit_code": None,
        "signal": 15,
        "killed_by": "stop",
    }
    client.destroy(handle)
