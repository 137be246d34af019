"""Fuzzing the protocol: generated requests through the socket of a private daemon.

Requests are known command names (and a few unknown ones) with arguments of
random shapes: the handle of a live container or junk, nested arrays and
objects, odd strings (lone surrogates, NUL, very long), numbers past 64 bits,
``NaN``/``Infinity``/``1e400`` as raw JSON tokens, arrays nested past the limit,
lines that are not JSON. Every reply line must be strict JSON (no NaN or
Infinity) in ASCII, no reply may be ``internal``, and afterwards the daemon
still answers and has left nothing on the host.

Host paths are never random: those of ``copy``, ``image-import`` and the create
options ``rootfs`` and ``bind_mounts`` are built under a scratch directory, so a
generated request cannot copy the host into a container or write outside it.
``image-pull`` is left out (it would reach registries over the network).
``CORRAL_FUZZ_EXAMPLES`` changes the number of requests (default 200).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from supervisor.errors import CorralError
from tests.conftest import NOTHING_LEFT, Daemon, leftovers

EXAMPLES = int(os.environ.get("CORRAL_FUZZ_EXAMPLES", "200"))
#: Seconds one request may take: every script generated ends at once.
REPLY_TIMEOUT = 20


@dataclass(frozen=True)
class Raw:
    """Text put into the request line as it is (``NaN``, deep nesting)."""

    text: str


@dataclass(frozen=True)
class Handle:
    """The live container's handle, whatever it is when the request is sent."""


@dataclass(frozen=True)
class HostPath:
    """A path under the scratch directory."""

    parts: tuple[str, ...]
    trailing_slash: bool


def encode(value: Any, handle: str, scratch: Path) -> str:
    """The JSON text of *value*, with the placeholders filled in (``ensure_ascii``: a lone
    surrogate travels as its ``\\udXXX`` escape)."""
    if isinstance(value, Raw):
        return value.text
    if isinstance(value, Handle):
        return json.dumps(handle)
    if isinstance(value, HostPath):
        path = f"{scratch}/{'/'.join(value.parts)}" + ("/" if value.trailing_slash else "")
        return json.dumps(path)
    if isinstance(value, list):
        return "[" + ",".join(encode(v, handle, scratch) for v in value) + "]"
    if isinstance(value, dict):
        items = (f"{json.dumps(k)}:{encode(v, handle, scratch)}" for k, v in value.items())
        return "{" + ",".join(items) + "}"
    return json.dumps(value)


# -- strategies ------------------------------------------------------------------------------

ODD_STRINGS = [
    "",
    " ",
    "\0",
    "a\0b",
    "\ud800",
    "\udfff",
    "\udc80",
    "x\udcffy",
    "\ud83d\ude00",
    "😀",
    "\u202e",
    "a\nb",
    "NaN",
    "Infinity",
    "-Infinity",
    "1e400",
    "null",
    "true",
    "-1",
    "9" * 40,
    "%s%n",
    "../..",
    "/",
    "in",
    "out",
    "x" * 5000,
]


def _bad_surrogate(text: str) -> bool:
    return any(0xD800 <= ord(c) <= 0xDFFF and not 0xDC80 <= ord(c) <= 0xDCFF for c in text)


TOKENS = ["NaN", "Infinity", "-Infinity", "1e400", "-1e400", "1E+999", "-0", "0.0e0", "1e-400"]

#: Strings the daemon accepts as JSON strings (lone surrogates only \udc80-\udcff, raw bytes).
clean_strings = st.one_of(
    st.sampled_from([s for s in ODD_STRINGS if not _bad_surrogate(s)]), st.text(max_size=20)
)
#: Strings with other lone surrogates: the whole request is refused.
surrogate_strings = st.lists(
    st.one_of(st.characters(), st.integers(0xD800, 0xDFFF).map(chr)), min_size=1, max_size=8
).map("".join)
strings = st.one_of(clean_strings, clean_strings, surrogate_strings)
numbers = st.one_of(
    st.integers(-(2**70), 2**70),
    st.sampled_from([0, 1, -1, 2**31, 2**32, 2**63, 2**64, -(2**63) - 1, 10**30]),
    st.floats(allow_nan=False, allow_infinity=False),
)
scalars = st.one_of(clean_strings, numbers, st.booleans(), st.none(), st.just(Handle()))
#: What makes a whole request invalid wherever it is: a lone surrogate, a raw NaN, nesting
#: past the limit.
poison = st.one_of(
    surrogate_strings,
    st.sampled_from(TOKENS).map(Raw),
    st.integers(20, 1200).map(lambda n: Raw("[" * n + "]" * n)),
)
OPTION_KEYS = [
    "handle",
    "grace_time",
    "properties",
    "env",
    "limits",
    "memory_pressure",
    "network",
    "image",
    "image_pull",
    "disk_size_mb",
    "privileged",
    "dir",
    "user",
    "rlimits",
    "discard_output",
    "timeout",
    "cpu_time",
    "stdin",
    "tty",
    "encoding",
    "info",
    "ended",
    "usage",
    "kill",
    "background",
    "handles",
    "kinds",
    "pid",
    "rate",
    "burst",
    "revoke",
    "host_port",
    "container_port",
    "host_address",
    "protocol",
    "icmp_type",
    "icmp_code",
    "log",
    "name",
    "rows",
    "cols",
    "mem",
    "cpu",
    "cpus",
    "cpuset",
    "pids",
    "psi",
]
keys = st.one_of(st.sampled_from(OPTION_KEYS), clean_strings)
#: JSON the daemon decodes; wrong shapes and types for most arguments.
values = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(keys, children, max_size=4)
    ),
    max_leaves=12,
)
#: Any value, poison included (a fifth of the time), in any place.
anything = st.one_of(
    values, values, values, values, poison, st.lists(st.one_of(values, poison), max_size=3)
)

COMPONENTS = ["a", "b", "tmp", "etc", "passwd", "hosts", ".", "..", "", "x y", "é", "\udc80"]
host_paths = st.builds(
    HostPath,
    st.lists(st.sampled_from(COMPONENTS + ["\ud800", "a\0b", "n" * 300]), max_size=3).map(tuple),
    st.booleans(),
)
#: Container paths: no /proc, /sys or /dev (their magic links and endless files), never "/".
container_paths = st.one_of(
    st.lists(st.sampled_from(COMPONENTS), min_size=1, max_size=3).map(
        lambda parts: "/" + "/".join(parts)
    ),
    strings.filter(lambda s: not s.startswith("/")),
)
#: Refused before any path is used.
not_paths = st.one_of(strings.filter(lambda s: not s.startswith("/")), numbers, st.none(), poison)
scripts = st.one_of(
    st.sampled_from(["true", "exit 3", "echo hi", "echo err >&2", "printf '\\377\\0'", "kill $$"]),
    clean_strings.filter(lambda s: len(s) < 40),
)
H = st.just(Handle())
job_ids = st.integers(0, 4)
small_numbers = st.one_of(
    st.integers(-1, 100), st.integers(-(2**65), 2**65), st.floats(-1e6, 1e6, allow_nan=False)
)
flags = st.booleans()
encodings = st.sampled_from(["utf-8", "base64", "latin-1"])
env = st.one_of(
    st.dictionaries(clean_strings, clean_strings, max_size=2),
    st.lists(st.sampled_from(["A=1", "=x", "B", "C=\0"]) | clean_strings, max_size=2),
)


def opts(**fields: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    """An OPTS or CONFIG object with some of *fields*, each of a plausible value."""
    return st.fixed_dictionaries({}, optional=fields)


spawn_opts = opts(
    privileged=flags,
    env=env,
    dir=container_paths,
    user=st.sampled_from(["root", "corral", "0", "10000", "nobody", "", "x:y", 0, -1, 2**40]),
    rlimits=st.dictionaries(
        st.sampled_from(["nofile", "nproc", "cpu", "as", "core", "bogus"]),
        st.one_of(small_numbers, st.lists(st.one_of(small_numbers, st.none()), max_size=3)),
        max_size=2,
    ),
    discard_output=flags,
    timeout=small_numbers,
    cpu_time=small_numbers,
    stdin=flags,
    tty=opts(rows=st.integers(-1, 70000), cols=st.integers(-1, 70000), x=st.just(1)),
    encoding=encodings,
    info=flags,
    ended=flags,
    usage=flags,
)
link_opts = opts(encoding=encodings, info=flags, ended=flags, usage=flags)
bind_mounts = st.lists(
    st.tuples(
        st.one_of(host_paths, not_paths),
        container_paths,
        st.one_of(opts(mode=st.sampled_from(["ro", "rw", "x"])), values),
    ).map(list),
    max_size=2,
)
limit_values = {
    "mem": st.integers(0, 300 * 2**20),
    "cpu": st.integers(-1, 300000),
    "cpus": st.floats(0, 4),
    "cpuset": st.sampled_from(["0", "0-1", "1", "9", "1-0", "x", ""]),
    "pids": st.integers(0, 100),
}
create_config = opts(
    rootfs=st.one_of(host_paths, not_paths),
    bind_mounts=bind_mounts,
    disk_size_mb=st.integers(-1, 40),
    limits=opts(**limit_values),
    env=env,
    handle=st.one_of(st.sampled_from(["fuzz-1", "", "a" * 65, "-x", "x/y", "."]), clean_strings),
    grace_time=st.one_of(st.integers(-1, 1000), flags, st.floats(allow_nan=False)),
    properties=st.dictionaries(clean_strings, st.one_of(clean_strings, values), max_size=2),
    memory_pressure=st.one_of(
        st.sampled_from(["low", "medium", "critical", "x"]),
        st.lists(st.sampled_from(["low", "critical"]), max_size=9),
        opts(psi=st.sampled_from(["some 150000 1000000", "full 1 2", "some", "x"])),
    ),
    network=opts(
        address=st.sampled_from(["10.0.0.2/30", "x", "1.2.3.4/24", "10.0.0.1/30"]),
        bandwidth=opts(rate=small_numbers, burst=small_numbers),
    ),
    image=st.sampled_from(["busybox", "nosuch:tag", "sha256:00", "", "UPPER", "a@b"]),
    image_pull=st.sampled_from(["never", "x", True]),  # never "missing": that pulls
)
signals = st.sampled_from(["TERM", "KILL", "SIGINT", "0", "SIGFOO", "", 9, 15, 0, 99, -1, 2**40])
resources = st.sampled_from(["mem", "cpu", "cpus", "cpuset", "pids", "disk", "bandwidth", "x"])
net_out = st.sampled_from(
    ["10.1.2.3", "10.0.0.0/8:80", "1.1.1.1:53-54", "10.0.0.1-10.0.0.9", "x", "1.2.3.4:99999", ""]
)


def good(name: str, *args: st.SearchStrategy[Any]) -> st.SearchStrategy[list[Any]]:
    """A request of plausible arguments (optional ones given or not)."""
    return st.tuples(*args).map(lambda a: [name, *a]) if args else st.just([name])


plausible = st.one_of(
    good("ping"),
    good("echo", values),
    good("create", create_config),
    good("spawn", H, scripts, spawn_opts),
    good("run", H, scripts, spawn_opts),
    good("link", H, job_ids, link_opts),
    good("stream", H, job_ids, link_opts),
    good("signal", H, job_ids, signals, opts(pid=st.integers(-1, 2**32))),
    good("stdin", H, job_ids, st.one_of(clean_strings, st.none()), opts(encoding=encodings)),
    good("resize", H, job_ids, st.integers(-1, 70000), st.integers(-1, 70000)),
    good("stop", H, opts(kill=flags, background=flags)),
    good("destroy", H),
    good("limit", H, resources),
    st.sampled_from(list(limit_values)).flatmap(
        lambda r: good("limit", H, st.just(r), limit_values[r])
    ),
    good("limit", H, st.just("bandwidth"), opts(rate=small_numbers, burst=small_numbers)),
    good("info", H),
    good("list", st.dictionaries(clean_strings, clean_strings, max_size=2)),
    good("pause", H),
    good("resume", H),
    good("start", H),
    good(
        "events",
        opts(
            handles=st.lists(H | clean_strings, max_size=2),
            kinds=st.lists(clean_strings, max_size=2),
        ),
    ),
    good("copy", H, st.just("in"), host_paths, container_paths),
    good("copy", H, st.just("out"), container_paths, host_paths),
    good(
        "copy",
        H,
        st.just("out"),
        container_paths,
        host_paths,
        st.sampled_from(["root", "0:0", "nobody", "1000:1000", "x:", ":", "corral", "65534:x"]),
    ),
    good(
        "net",
        H,
        st.just("in"),
        opts(
            host_port=small_numbers,
            container_port=small_numbers,
            host_address=st.sampled_from(["127.0.0.1", "1.2.3.4", "x"]),
            revoke=flags,
        ),
    ),
    good(
        "net",
        H,
        st.just("out"),
        net_out,
        opts(
            protocol=st.sampled_from(["tcp", "udp", "icmp", "all", "x"]),
            icmp_type=small_numbers,
            icmp_code=small_numbers,
            log=flags,
            revoke=flags,
        ),
    ),
    good("image-import", host_paths, opts(name=clean_strings)),
    good("image-list"),
    good("image-inspect", clean_strings),
    good("image-remove", clean_strings),
    good("image-prune"),
)


def _mutate(case: tuple[list[Any], int, int, Any]) -> list[Any]:
    """One change to a plausible request: an argument replaced, the arguments cut short,
    or one more (0: none)."""
    request, how, where, junk = case
    request = list(request)
    if how == 1 and len(request) > 1:
        request[1 + where % (len(request) - 1)] = junk
    elif how == 2:
        del request[1 + where % len(request) :]
    elif how == 3:
        request.append(junk)
    return request


mutated = st.tuples(plausible, st.integers(0, 3), st.integers(0, 5), anything).map(_mutate)


def weighted(*choices: tuple[int, st.SearchStrategy[Any]]) -> st.SearchStrategy[Any]:
    """One of the strategies, each drawn about as often as its weight says (``one_of``
    draws them evenly)."""
    return st.sampled_from([s for weight, s in choices for _ in range(weight)]).flatmap(lambda s: s)


requests = weighted(
    (16, mutated),
    (2, st.tuples(strings, st.lists(anything, max_size=3)).map(lambda t: [t[0], *t[1]])),
    (1, st.lists(anything, max_size=3)),  # no command name, or not a string
    (1, anything),  # not an array
)
#: Whole lines that are not a JSON request (the daemon may close the connection after them).
raw_lines = st.sampled_from(
    [b"[", b"{}", b"\xff\xfe", b'["ping"', b"null", b"[1]", b"[]", b'["ping"]]', b"\x00", b"[NaN]"]
)


#: A request (19 in 20), or a line that is not one.
cases = weighted(
    (19, requests.map(lambda r: ("request", r))), (1, raw_lines.map(lambda r: ("raw", r)))
)


# -- the daemon side ---------------------------------------------------------------------------


def strict_json(line: bytes) -> Any:
    """*line* as JSON, refusing what is not JSON proper (NaN, Infinity) and non-ASCII."""

    def refuse(token: str) -> Any:
        raise AssertionError(f"reply holds {token}, which is not JSON: {line[:200]!r}")

    line.decode("ascii")
    return json.loads(line, parse_constant=refuse)


def exchange(daemon: Daemon, line: bytes) -> list[Any]:
    """Send one request line on a new connection; every line of the reply, parsed.

    An ``events`` watch is ended by the next request (a ping), as a client would."""
    replies: list[Any] = []
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(REPLY_TIMEOUT)
        sock.connect(str(daemon.socket))
        sock.sendall(line + b"\n")
        f = sock.makefile("rb")
        while True:
            raw = f.readline()
            if not raw:
                return replies  # the daemon closed the connection (a line that is not JSON)
            reply = strict_json(raw)
            replies.append(reply)
            if isinstance(reply, dict) and "type" in reply:
                return replies
            assert isinstance(reply, list), f"an intermediate line is not an array: {raw!r}"
            if reply and reply[0] == "watching":
                sock.sendall(b'["ping"]\n')


@pytest.fixture(scope="module")
def fuzz_daemon(artifacts: tuple[Path, Path]) -> Iterator[Daemon]:
    d = Daemon(*artifacts).start()
    yield d
    d.close()


def test_generated_requests_never_get_internal_nor_break_the_daemon(fuzz_daemon: Daemon) -> None:
    d = fuzz_daemon
    scratch = Path(tempfile.mkdtemp(prefix="crl-fuzz-", dir="/tmp"))
    (scratch / "a").mkdir()
    (scratch / "a" / "b").write_text("b\n")
    (scratch / "passwd").write_text("root:x:0:0::/root:/bin/sh\n")
    client = d.client(timeout=REPLY_TIMEOUT)
    live = [client.create()]

    def the_container() -> str:
        """A container that is active: the last one unless a request stopped, paused or
        destroyed it."""
        try:
            if client.info(live[0])["state"] == "active":
                return live[0]
            client.destroy(live[0])
        except CorralError:
            pass  # destroyed by a request
        live[0] = client.create()
        return live[0]

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(cases)
    def one(case: tuple[str, Any]) -> None:
        kind, request = case
        handle = the_container()
        line = request if kind == "raw" else encode(request, handle, scratch).encode()
        replies = exchange(d, line)
        final = replies[-1] if replies else None
        if kind == "request":
            assert isinstance(final, dict), f"no final reply to {line[:300]!r}: {replies!r}"
        if isinstance(final, dict) and final["type"] == "error":
            assert final["payload"]["code"] != "internal", f"{line[:300]!r}: {final['payload']}"
        if (
            kind == "request"
            and isinstance(request, list)
            and request[:1] == ["create"]
            and isinstance(final, dict)
            and final["type"] == "object"
        ):
            client.destroy(final["payload"])

    try:
        one()
        assert client.ping() == "pong"
        assert client.list() == [live[0]]  # every create of the run was destroyed
        client.destroy(live[0])
        assert leftovers(d) == NOTHING_LEFT
        assert d.running
    finally:
        client.close()
        shutil.rmtree(scratch, ignore_errors=True)
