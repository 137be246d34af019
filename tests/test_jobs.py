"""Talking to running jobs through the socket: signals, and how a job ended (issue #14)."""

from __future__ import annotations

import base64
import json
import time

import pytest

from supervisor import errors
from supervisor.client import Client
from tests.conftest import Daemon, wait_for_output, wait_until


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
    # Both still run (each shell has exec'd its sleep, or is about to).
    wait_until(lambda: client.run(container, "pidof sleep | wc -w")[1].strip() == "2")
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


def test_a_raw_stream_brings_each_chunk_as_its_bytes_after_a_line(
    client: Client, container: str
) -> None:
    """Every byte value, and more than one chunk of 128 KiB, exactly as the job wrote them."""
    script = "printf 'a\\000\\377\\n'; head -c 300000 /dev/urandom | tee /tmp/x; echo e >&2"
    job = client.spawn(container, script, user="root")
    client.sock.sendall(
        json.dumps(["stream", container, job, {"encoding": "raw"}]).encode() + b"\n"
    )
    got: dict[str, bytes] = {"stdout": b"", "stderr": b""}
    sizes = []
    while isinstance(header := json.loads(client.file.readline()), list):
        name, size = header
        sizes.append(size)
        got[name] += client.file.read(size)
    assert header == {"type": "object", "payload": []}
    assert max(sizes) <= 128 * 1024 and len(sizes) >= 3
    _, written, _ = client.run(container, "cat /tmp/x", encoding="base64", user="root")
    assert got == {"stdout": b"a\0\377\n" + base64.b64decode(written), "stderr": b"e\n"}
    again = client.stream_bytes(container, job)  # the client's reading of the same
    assert b"".join(data for name, data in again if name == "stdout") == got["stdout"]


def test_raw_is_for_stream_only(client: Client, container: str) -> None:
    job = client.spawn(container, "true")
    with pytest.raises(errors.InvalidRequest, match="link: encoding 'raw' is not one of"):
        client.link(container, job, encoding="raw")


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


# -- per-job limits and accounting (a cgroup per job) ------------------------------------

#: A shell that burns CPU until it has used *ticks* of it (utime + stime from its own
#: /proc stat, fields 14 and 15, in 1/100 s): no fork, only builtins.
BURN = (
    "while read -r _ _ _ _ _ _ _ _ _ _ _ _ _ u s _ < /proc/$$/stat; "
    "[ $((u + s)) -lt {ticks} ]; do :; done"
)


def test_timeout_kills_every_process_of_the_job(
    client: Client, container: str, daemon: Daemon
) -> None:
    # The child ignores TERM, sits in a process group of its own and outlives its shell.
    script = "(trap '' TERM; set -m; sleep 1000 & echo ready; wait) & wait"
    job = client.spawn(container, script, timeout=1)
    wait_for_output(daemon, container, job)
    wait_until(lambda: client.run(container, "pidof sleep")[0] == 0, what="the child's sleep")
    status, out, _, report = client.link(container, job, ended=True)
    assert status == 137
    assert report["ended"] == {"exit_code": None, "signal": 9, "killed_by": "timeout"}
    assert client.run(container, "pidof sleep || echo none")[1] == "none\n"


def test_timeout_reaches_what_outlives_the_leader(client: Client, container: str) -> None:
    job = client.spawn(container, "sleep 1000 & echo ready", timeout=1)
    assert client.link(container, job, ended=True)[3]["ended"]["exit_code"] == 0
    assert client.run(container, "pidof sleep")[0] == 0  # the leader is gone, its child not
    wait_until(
        lambda: client.run(container, "pidof sleep || echo none")[1] == "none\n",
        what="the job's child to be killed at the timeout",
    )


def test_cpu_time_limit(client: Client, container: str) -> None:
    status, _, _, report = client.run(
        container, "while :; do :; done", cpu_time=0.3, ended=True, usage=True
    )
    assert status == 137
    assert report["ended"]["killed_by"] == "cpu_limit"
    assert 0.3 <= report["usage"]["cpu_total"] < 1.0


def test_usage_is_the_jobs_own_while_another_job_burns_cpu(
    client: Client, container: str, daemon: Daemon
) -> None:
    other = client.spawn(container, "echo ready; while :; do :; done")
    wait_for_output(daemon, container, other)
    status, _, err, report = client.run(container, BURN.format(ticks=100), usage=True)
    assert status == 0, err
    usage = report["usage"]
    assert 0.9 <= usage["cpu_total"] <= 1.1, usage
    assert abs(usage["cpu_user"] + usage["cpu_system"] - usage["cpu_total"]) < 0.05
    assert usage["wall_time"] >= usage["cpu_total"] * 0.9
    assert usage["memory_peak"] is None or usage["memory_peak"] > 0
    client.signal(container, other, "KILL")
    # It burned meanwhile, and is counted apart: the container's total holds both.
    other_cpu = client.link(container, other, usage=True)[3]["usage"]["cpu_total"]
    assert other_cpu > 0.1
    assert client.info(container)["cpu_stat"]["usage"] / 1e9 >= usage["cpu_total"] + other_cpu


def test_usage_counts_what_the_job_started(client: Client, container: str) -> None:
    # Two children burn 0.5 s each; the shells' own starts add a little (tens of ms on an
    # emulated guest): without the children the job would read a few ms.
    burn = BURN.format(ticks=50)
    script = f"sh -c '{burn}' & sh -c '{burn}' & wait"
    report = client.run(container, script, usage=True)[3]
    assert 0.9 <= report["usage"]["cpu_total"] <= 1.5, report


def test_stream_reports_usage_at_its_end(client: Client, container: str) -> None:
    job = client.spawn(container, "echo hi")
    lines = raw_stream(client, container, job, {"usage": True})
    final = lines[-1]["payload"]  # type: ignore[index]
    assert final["status"] == 0 and set(final) == {"status", "usage"}
    assert set(final["usage"]) == {
        "cpu_user",
        "cpu_system",
        "cpu_total",
        "memory_peak",
        "wall_time",
    }


@pytest.mark.parametrize(
    ("opts", "message"),
    [
        ({"timeout": 0}, "timeout must be seconds above 0"),
        ({"timeout": -1}, "timeout must be seconds above 0"),
        ({"cpu_time": 1e12}, "cpu_time must be seconds above 0 and at most"),
        ({"timeout": "1"}, "timeout"),
        ({"timeout": True}, "timeout"),
    ],
)
def test_bad_limits_are_refused(
    client: Client, container: str, opts: dict[str, object], message: str
) -> None:
    with pytest.raises(errors.InvalidRequest, match=message):
        client.spawn(container, "true", **opts)


def test_timeout_holds_across_a_daemon_restart(fresh_daemon: Daemon) -> None:
    d = fresh_daemon
    with d.client() as c:
        handle = c.create()
        job = c.spawn(handle, "echo ready; exec sleep 1000", timeout=2)
        wait_for_output(d, handle, job)
    d.kill9()
    d.start()
    with d.client() as c:
        status, out, _, report = c.link(handle, job, ended=True, usage=True)
        assert (status, out) == (137, "ready\n")
        assert report["ended"]["killed_by"] == "timeout"
        assert 2 <= report["usage"]["wall_time"] < 30
        c.destroy(handle)


# -- stdin and terminals ------------------------------------------------------------------


class Screen:
    """What a job printed, read as it comes on a ``stream`` connection of its own."""

    def __init__(self, daemon: Daemon, handle: str, job: int) -> None:
        self.client = daemon.client(timeout=20)
        self.chunks = self.client.stream(handle, job)
        self.text = ""

    def expect(self, text: str) -> str:
        """Read until *text* has appeared (after what earlier calls consumed); the text
        up to its end."""
        while text not in self.text:
            self.text += next(self.chunks)[1]
        seen, _, self.text = self.text.partition(text)
        return seen + text

    def close(self) -> None:
        self.client.close()


def test_stdin_pipe_with_eof(client: Client, container: str) -> None:
    job = client.spawn(container, "cat; echo end", stdin=True)
    assert client.call("stdin", container, job, "hello ") == "ok"
    client.call(
        "stdin", container, job, base64.b64encode(b"\xff\n").decode(), {"encoding": "base64"}
    )
    client.call("stdin", container, job, None)
    status, out, _ = client.link(container, job, encoding="base64")
    assert (status, base64.b64decode(out)) == (0, b"hello \xff\nend\n")


def test_a_job_that_does_not_read_makes_the_writer_wait(
    client: Client, container: str, daemon: Daemon
) -> None:
    job = client.spawn(container, "read -r line; echo got $line; exec sleep 100", stdin=True)
    with daemon.client() as writer:
        # One line, then 512 KiB it never reads: more than its pipe holds, so the write
        # cannot complete; it waits (the daemon serves on meanwhile) until the job ends.
        writer.sock.sendall(
            json.dumps(["stdin", container, job, "a\n" + "x" * (1 << 19)]).encode() + b"\n"
        )
        wait_for_output(daemon, container, job, "got a\n")
        assert client.call("ping") == "pong"
        client.signal(container, job, "KILL")
        with pytest.raises(errors.InvalidState, match=f"job {job} (has ended|no longer reads)"):
            writer.call("ping")  # the stdin reply comes first
    assert client.link(container, job) == [137, "got a\n", ""]


def test_bad_stdin_and_resize_are_refused(client: Client, container: str, daemon: Daemon) -> None:
    plain = client.spawn(container, "echo ready; exec sleep 100")
    piped = client.spawn(container, "cat; echo eof; exec sleep 100", stdin=True)
    wait_for_output(daemon, container, plain)
    with pytest.raises(errors.InvalidRequest, match=f"job {plain} has no stdin"):
        client.call("stdin", container, plain, "x")
    with pytest.raises(errors.InvalidRequest, match=f"job {piped} has no terminal"):
        client.call("resize", container, piped, 24, 80)
    with pytest.raises(errors.InvalidRequest, match="rows must be an integer from 1 to 65535"):
        client.call("resize", container, piped, 0, 80)
    with pytest.raises(errors.InvalidRequest, match="DATA is not base64"):
        client.call("stdin", container, piped, "***", {"encoding": "base64"})
    with pytest.raises(errors.InvalidRequest, match="DATA must be a string or null"):
        client.call("stdin", container, piped, 5)
    with pytest.raises(errors.InvalidRequest, match="tty must be"):
        client.spawn(container, "true", tty={"rows": 24})
    with pytest.raises(errors.UnknownJob):
        client.call("stdin", container, 999, "x")
    client.call("stdin", container, piped, None)
    wait_for_output(daemon, container, piped, "eof\n")
    with pytest.raises(errors.InvalidState, match=f"job {piped}: its stdin is closed"):
        client.call("stdin", container, piped, "x")
    client.signal(container, piped, "KILL")
    assert client.link(container, piped) == [137, "eof\n", ""]
    client.signal(container, plain, "KILL")
    assert "".join(c for _, c in client.stream(container, plain)) == "ready\n"
    with pytest.raises(errors.InvalidRequest, match="has no stdin"):
        client.call("stdin", container, plain, "x")


def test_interactive_shell_on_a_terminal(client: Client, container: str, daemon: Daemon) -> None:
    job = client.spawn(container, "PS1='$ ' exec sh -i", tty={"rows": 24, "cols": 80})
    screen = Screen(daemon, container, job)
    try:
        screen.expect("$ ")
        client.call("stdin", container, job, "echo hi\n")
        assert screen.expect("hi\r\n$ ").endswith("echo hi\r\nhi\r\n$ ")  # echoed, then run
        client.call("stdin", container, job, "tty; stty size\n")
        assert "/dev/pts/" in screen.expect("24 80\r\n")
        client.call("resize", container, job, 40, 120)
        client.call("stdin", container, job, "stty size\n")
        screen.expect("40 120\r\n")
        # Ctrl-C ends the foreground job with SIGINT; the shell lives on.
        client.call("stdin", container, job, "sleep 100\n")
        screen.expect("sleep 100\r\n")
        wait_until(lambda: client.run(container, "pidof sleep")[0] == 0, what="sleep to run")
        client.call("stdin", container, job, "\x03")
        screen.expect("$ ")
        client.call("stdin", container, job, "echo status=$?\n")
        screen.expect("status=130\r\n")
        client.call("stdin", container, job, "exit 7\n")
        status, out, _ = client.link(container, job)
        assert status == 7 and "status=130" in out
    finally:
        screen.close()


def test_ctrl_c_ends_a_terminal_job_with_signal_2(
    client: Client, container: str, daemon: Daemon
) -> None:
    job = client.spawn(container, "echo ready; exec sleep 100", tty={"rows": 24, "cols": 80})
    wait_for_output(daemon, container, job, "ready\r\n")
    client.call("stdin", container, job, "\x03")
    status, out, _, report = client.link(container, job, ended=True)
    assert (status, out) == (130, "ready\r\n^C")
    assert report["ended"]["signal"] == 2


def test_a_terminal_job_survives_kill_9_of_the_daemon_and_is_reattached(
    fresh_daemon: Daemon,
) -> None:
    d = fresh_daemon
    with d.client() as c:
        handle = c.create({"grace_time": 60})
        job = c.spawn(handle, "PS1='$ ' exec sh -i", tty={"rows": 24, "cols": 80})
        wait_for_output(d, handle, job, "$ ")
        c.call("stdin", handle, job, "sleep 1; echo while-away\n")
    d.kill9()
    time.sleep(1.5)  # it prints while no daemon runs
    d.start()
    with d.client() as c:
        screen = Screen(d, handle, job)
        try:
            screen.expect("while-away\r\n$ ")  # kept like any output
            c.call("stdin", handle, job, "echo again\n")
            screen.expect("again\r\n$ ")
            c.call("resize", handle, job, 30, 100)
            c.call("stdin", handle, job, "stty size; exit\n")
            screen.expect("30 100\r\n")
        finally:
            screen.close()
        assert c.link(handle, job)[0] == 0
        c.destroy(handle)


# -- the Python clients' job objects ------------------------------------------------------


def test_popen_like_job_object(client: Client, container: str) -> None:
    job = client.popen(container, "read -r name; echo hello $name; cat >&2", stdin=True)
    job.write("corral\n")
    output = job.output()
    assert next(output) == ("stdout", b"hello corral\n")  # as it comes, before the end
    job.write(b"\xff")
    job.close_stdin()
    assert job.wait() == 0
    assert (job.stdout, job.stderr) == (b"hello corral\n", b"\xff")
    assert job.ended == {"exit_code": 0, "signal": None, "killed_by": None}
    assert job.usage is not None and job.usage["cpu_total"] is not None


def test_popen_terminal_signal_and_resize(client: Client, container: str) -> None:
    job = client.popen(
        container, "stty size; echo ready; exec sleep 100", tty={"rows": 5, "cols": 7}
    )
    screen = b""
    for _, chunk in job.output():
        screen += chunk
        if b"ready" in screen:
            break
    assert screen.startswith(b"5 7\r\n")
    job.resize(9, 11)
    job.send_signal("INT")
    assert job.wait() == 130 and job.ended is not None and job.ended["signal"] == 2


def test_run_hands_output_over_as_it_comes(client: Client, container: str) -> None:
    seen: list[tuple[str, bytes]] = []
    result = client.run(
        container, "echo one; echo two >&2; exit 4", output=lambda *item: seen.append(item)
    )
    assert sorted(seen) == [("stderr", b"two\n"), ("stdout", b"one\n")]
    assert result == [4, "one\n", "two\n"]


def test_trio_job_object(daemon: Daemon) -> None:
    import trio

    from supervisor.client import TrioClient

    async def main() -> tuple[object, ...]:
        async with await TrioClient.connect(daemon.socket) as c:
            handle = await c.create()
            job = await c.popen(handle, "cat", stdin=True)
            await job.write("abc")
            first = None
            async for item in job.output():
                first = item
                break
            await job.close_stdin()
            status = await job.wait()
            await c.destroy(handle)
            return first, status, job.stdout

    assert trio.run(main) == (("stdout", b"abc"), 0, b"abc")
