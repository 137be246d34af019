"""Bad input gets a clear error, and the daemon keeps serving everyone."""

from __future__ import annotations

import fcntl
import json
import socket
import struct
import termios
import threading
import time

import pytest

from tests.conftest import Daemon, wait_until


def raw(daemon: Daemon, data: bytes) -> list[dict]:
    """Send raw bytes on a fresh connection; return every reply line until the daemon closes or goes quiet."""
    return [json.loads(line) for line in raw_bytes(daemon, data).splitlines()]


def raw_bytes(daemon: Daemon, data: bytes) -> bytes:
    """Send raw bytes on a fresh connection; return what the daemon sends until it closes."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(5)
        s.connect(str(daemon.socket))
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        received = b""
        while chunk := s.recv(65536):
            received += chunk
    return received


def error(reply: dict) -> tuple[str, str]:
    assert reply["type"] == "error", reply
    return reply["payload"]["code"], reply["payload"]["message"]


def test_ping_and_echo(daemon: Daemon) -> None:
    replies = raw(daemon, b'["ping"]\n["echo", {"a": [1, "x"]}]\n')
    assert [r["payload"] for r in replies] == ["pong", {"a": [1, "x"]}]


def test_requests_answered_in_order(daemon: Daemon) -> None:
    lines = b"".join(json.dumps(["echo", i]).encode() + b"\n" for i in range(100))
    assert [r["payload"] for r in raw(daemon, lines)] == list(range(100))


@pytest.mark.parametrize(
    "line, code, words",
    [
        (b'["nope"]', "unknown_command", "nope"),
        (b'{"ping": 1}', "invalid_request", "array"),
        (b"[]", "invalid_request", "array"),
        (b"[1]", "invalid_request", "command name"),
        (b'["info", 5]', "invalid_request", "HANDLE must be a string"),
        (b'["info"]', "invalid_request", "missing argument HANDLE"),
        (b'["info", "nosuch"]', "unknown_handle", "nosuch"),
        (b'["link", "nosuch", 1]', "unknown_handle", "nosuch"),
        (b'["create", {"bogus": 1}]', "invalid_request", "bogus"),
        (b'["create", {"grace_time": "soon"}]', "invalid_request", "grace_time"),
        (b'["create", []]', "invalid_request", "CONFIG"),
        (b'["ping", 1]', "invalid_request", "at most 0"),
    ],
)
def test_bad_requests_keep_the_connection(
    daemon: Daemon, line: bytes, code: str, words: str
) -> None:
    replies = raw(daemon, line + b'\n["ping"]\n')
    got_code, message = error(replies[0])
    assert got_code == code and words in message
    assert replies[1]["payload"] == "pong"  # same connection still served


@pytest.mark.parametrize(
    "line, words",
    [(b"[not json", "not valid JSON"), (b'["echo", "\xff"]', "not valid UTF-8")],
)
def test_unreadable_lines_close_the_connection(daemon: Daemon, line: bytes, words: str) -> None:
    replies = raw(daemon, line + b'\n["ping"]\n')
    assert len(replies) == 1
    code, message = error(replies[0])
    assert code == "invalid_request" and words in message


def test_oversize_line_is_refused(daemon: Daemon) -> None:
    replies = raw(daemon, b'["echo", "' + b"x" * (1 << 20) + b'"]\n["ping"]\n')
    assert len(replies) == 1
    code, message = error(replies[0])
    assert code == "invalid_request" and "longer than" in message
    with daemon.client() as c:  # and the daemon serves others
        assert c.ping() == "pong"


def test_wrong_option_types(daemon: Daemon, container: str) -> None:
    for opts, words in [
        ({"privileged": "yes"}, "privileged"),
        ({"bogus": True}, "bogus"),
        ({"rlimits": {"nofiles": 1}}, "nofiles"),
        ({"dir": "relative"}, "absolute"),
    ]:
        line = json.dumps(["spawn", container, "true", opts]).encode() + b"\n"
        code, message = error(raw(daemon, line)[0])
        assert code == "invalid_request" and words in message, message
    code, message = error(raw(daemon, json.dumps(["link", container, "1"]).encode() + b"\n")[0])
    assert code == "invalid_request" and "JOB_ID must be an integer" in message
    code, message = error(raw(daemon, json.dumps(["link", container, 999]).encode() + b"\n")[0])
    assert code == "unknown_job" and "999" in message


def test_many_clients_at_once(daemon: Daemon) -> None:
    clients = [daemon.client() for _ in range(50)]
    try:
        for i, c in enumerate(clients):
            c.sock.sendall(json.dumps(["echo", i]).encode() + b"\n")
        assert [json.loads(c.file.readline())["payload"] for c in clients] == list(range(50))
    finally:
        for c in clients:
            c.close()


PONG = b'{"type":"object","payload":"pong"}\n'


def test_ping_reply_bytes(daemon: Daemon) -> None:
    # An exact ["ping"] is answered without JSON; other spellings go through it: same bytes.
    assert raw_bytes(daemon, b'["ping"]\n') == PONG
    assert raw_bytes(daemon, b'[ "ping" ]\n') == PONG
    assert raw_bytes(daemon, b'["ping"]\n["ping"]\n') == PONG * 2


def test_pings_among_other_requests_in_order(daemon: Daemon) -> None:
    data = b'["ping"]\n["echo", 1]\n["ping"]\n\n["ping"]\n["nope"]\n["ping"]\n["echo", 2]\n'
    replies = raw(daemon, data)
    assert [r["payload"] for r in replies[:4]] == ["pong", 1, "pong", "pong"]
    assert error(replies[4])[0] == "unknown_command"
    assert [r["payload"] for r in replies[5:]] == ["pong", 2]


def test_ping_split_across_writes(daemon: Daemon) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(5)
        s.connect(str(daemon.socket))
        for part in (b'["pi', b'ng"]\n["pi', b'ng"]', b"\n"):
            s.sendall(part)
            time.sleep(0.05)  # pacing, not waiting: each part arrives on its own
        received = b""
        while len(received) < 2 * len(PONG):
            received += s.recv(65536)
    assert received == PONG * 2


def test_one_connection_alternates_pings_and_other_requests(daemon: Daemon) -> None:
    with daemon.client() as c:
        for i in range(200):
            assert c.ping() == "pong"
            assert c.call("echo", i) == i
            assert c.ping() == "pong"


#: Bytes of replies waiting to be read that mean the daemon's side is full (the
#: socket buffers hold about 200 KiB; the replies total 3.5 MB).
FULL = 150_000


def queued(s: socket.socket) -> int:
    """Bytes received on *s* and not read yet."""
    return struct.unpack("i", fcntl.ioctl(s, termios.FIONREAD, b"\0\0\0\0"))[0]


def test_many_pipelined_pings_with_a_slow_reader(daemon: Daemon) -> None:
    # More replies than the socket buffers hold: the daemon must wait for room, not drop any.
    count = 100_000
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(30)
        s.connect(str(daemon.socket))
        sender = threading.Thread(target=s.sendall, args=(b'["ping"]\n' * count,))
        sender.start()
        # Read nothing until the daemon has filled the socket: then it must wait for room.
        wait_until(lambda: queued(s) >= FULL, what="the daemon to fill the socket")
        received = bytearray()
        while len(received) < count * len(PONG):
            chunk = s.recv(1 << 20)
            assert chunk
            received += chunk
        sender.join()
    assert received == PONG * count


def test_client_gone_with_unread_replies(daemon: Daemon) -> None:
    for _ in range(5):
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.connect(str(daemon.socket))
            s.sendall(b'["ping"]\n' * 20_000)  # closed without reading a reply
    with daemon.client() as c:
        assert c.ping() == "pong"


def strict_json(line: bytes) -> dict:
    """A reply line as JSON proper: NaN and Infinity, which Python would read, refused."""

    def refuse(name: str) -> None:
        raise AssertionError(f"reply carries {name}, which is not JSON: {line!r}")

    return json.loads(line, parse_constant=refuse)


@pytest.mark.parametrize(
    "request_text, words",
    [
        ('["copy", "{h}", "in", null, "/tmp/x"]', "SRC must be a string, got null"),
        ('["copy", "{h}", "out", "/etc/hostname", null]', "DST must be a string, got null"),
        ("[" * 1000 + "]" * 1000, "deeper than 32 levels"),
        ('["echo", ' + "[" * 990 + "]" * 990 + "]", "deeper than 32 levels"),
        ('["spawn", "{h}", "true", {"env": {"\\ud800": "x"}}]', "lone surrogate"),
        ('["spawn", "{h}", "true", {"env": ["A=\\udfff"]}]', "lone surrogate"),
        ('["create", {"env": {"\\ud800": "x"}}]', "lone surrogate"),
        ('["run", "{h}", "echo \\ud800"]', "lone surrogate"),
        ('["echo", NaN]', "NaN is not JSON"),
        ('["echo", -Infinity]', "-Infinity is not JSON"),
        ('["echo", 1e400]', "1e400 is out of range"),
        ('["create", {"grace_time": 1e999}]', "out of range"),
    ],
)
def test_hostile_values_are_invalid_requests(
    daemon: Daemon, container: str, request_text: str, words: str
) -> None:
    line = request_text.replace("{h}", container).encode()
    replies = raw_bytes(daemon, line + b'\n["ping"]\n').splitlines()
    code, message = error(strict_json(replies[0]))
    assert code == "invalid_request" and words in message, message
    assert strict_json(replies[1])["payload"] == "pong"  # the connection is still served


def test_raw_bytes_as_surrogates_still_reach_a_job(daemon: Daemon, container: str) -> None:
    """\\udc80-\\udcff stand for single bytes, as in output: they are not refused."""
    line = json.dumps(["run", container, "printf %s \udcff | od -An -tx1"]).encode()
    reply = strict_json(raw_bytes(daemon, line + b"\n"))
    assert reply["payload"][1].split() == ["ff"]
