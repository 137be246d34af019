"""One thin handler per protocol command: check arguments, call the container, reply.

A handler is ``async def handler(request: Request, *args) -> payload``; it raises
a :class:`supervisor.errors.CorralError` to reply with an error. Plugins add
handlers through the ``corral_commands`` hook.
"""

from __future__ import annotations

import json
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from typing import TYPE_CHECKING, Any

import structlog
import trio

from supervisor.api import Handler
from supervisor.credentials import Credentials
from supervisor.errors import InvalidRequest
from supervisor.events import KINDS, LimitChanged
from supervisor.jobs import KILLED_FOR_OUTPUT, Job, JobLimits
from supervisor.protocol import (
    Args,
    decode_input,
    encode_line,
    encode_output,
    encode_stream_chunk,
    stream_chunk_size,
)
from supervisor.registry import parse_env
from supervisor.sandbox import JobRequest

if TYPE_CHECKING:
    from supervisor.container import Container
    from supervisor.registry import Supervisor


#: The longest ``timeout`` or ``cpu_time`` (a year): a bound that keeps the arithmetic finite.
MAX_JOB_SECONDS = 365 * 24 * 3600

#: ``execve`` refuses a single argument longer than this (MAX_ARG_STRLEN).
MAX_SCRIPT_BYTES = 128 * 1024 - 1

RLIMITS = frozenset(
    "as core cpu data fsize locks memlock msgqueue nice nofile nproc rss rtprio rttime sigpending stack".split()
)

ENCODINGS = ("utf-8", "base64")


class Request:
    """What a handler may use: the supervisor and the connection it serves."""

    def __init__(self, supervisor: Supervisor, connection: Any) -> None:
        self.supervisor = supervisor
        self.connection = connection

    @property
    def credentials(self) -> Credentials:
        """The client's identity, as the kernel recorded it when it connected."""
        return self.connection.credentials  # type: ignore[no-any-return]

    def container(self, handle: Any) -> Container:
        """The container named by *handle*; the connection now references it."""
        container = self.supervisor.get(handle)
        self.connection.reference(container)
        structlog.contextvars.bind_contextvars(handle=container.handle)
        return container

    async def send(self, line: bytes) -> None:
        """Send an extra reply line before the final one (``stream``)."""
        await self.connection.send(line)

    async def input(self) -> None:
        """Wait until the client sends another request, or closes the connection."""
        await self.connection.input()

    @asynccontextmanager
    async def until_hangup(self) -> AsyncIterator[None]:
        """Run the body (a wait for a job) unless the client closes the connection
        entirely meanwhile: then the request ends there, the connection closes, and its
        references go (a ``grace_time`` 0 container is destroyed at once)."""
        async with trio.open_nursery() as nursery:

            async def watch() -> None:
                await self.connection.hung_up()
                self.connection.broken = True  # no one left to answer
                nursery.cancel_scope.cancel()

            nursery.start_soon(watch)
            yield
            nursery.cancel_scope.cancel()
        if self.connection.broken:
            raise trio.BrokenResourceError("client went away")


# -- handlers --------------------------------------------------------------------


async def ping(request: Request, *args: Any) -> str:
    Args("ping", list(args), ())
    return "pong"


async def echo(request: Request, *args: Any) -> Any:
    a = Args("echo", list(args), ("MSG",))
    return a.value(0, True)


async def create(request: Request, *args: Any) -> str:
    a = Args("create", list(args), ("CONFIG",))
    raw = a.value(0, False)
    raw = {} if raw is None else raw
    if not isinstance(raw, dict):
        raise InvalidRequest("create: CONFIG must be an object")
    container = await request.supervisor.create(raw)
    request.connection.reference(container)
    return container.handle


def _job_request(
    command: str, container: Container, script: str, opts: dict[str, Any]
) -> JobRequest:
    if "\0" in script:
        raise InvalidRequest(f"{command}: SCRIPT contains a NUL byte")
    if len(script.encode("utf-8", "surrogateescape")) > MAX_SCRIPT_BYTES:
        raise InvalidRequest(f"{command}: SCRIPT is longer than {MAX_SCRIPT_BYTES} bytes")
    defaults = container.job_defaults
    env = [tuple(kv) for kv in defaults.env]
    env += [tuple(kv) for kv in container.options.get("env", [])]
    if "env" in opts:
        env += [tuple(kv) for kv in parse_env(opts["env"], f"{command}: env")]
    if defaults.env:  # one value per name, the last given winning (an image's PATH...)
        env = list(dict(env).items())  # type: ignore[arg-type]
    rlimits = []
    for name, value in (opts.get("rlimits") or {}).items():
        if name not in RLIMITS:
            raise InvalidRequest(
                f"{command}: unknown rlimit {name!r} (known: {', '.join(sorted(RLIMITS))})"
            )
        soft, hard = (value, value) if not isinstance(value, list) else (value + [None, None])[:2]
        for v in (soft, hard):
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 0):
                raise InvalidRequest(
                    f"{command}: rlimit {name} must be a number >= 0 or [soft, hard]"
                )
        rlimits.append((name, soft, hard))
    user = opts.get("user", defaults.user)
    if user is not None:
        user = str(user)
        uid, colon, gid = user.partition(":")
        numbers = colon and uid.isdigit() and gid.isdigit()  # "UID:GID", no lookup
        if not user or any(c in user for c in "\0\n") or (colon and not numbers):
            raise InvalidRequest(
                f"{command}: user {user!r} is not a user name, a uid, or UID:GID (numbers)"
            )
    directory = opts.get("dir", defaults.dir)
    if directory is not None and (not directory.startswith("/") or "\0" in directory):
        raise InvalidRequest(f"{command}: dir {directory!r} must be an absolute path")
    return JobRequest(
        job_id=container.allocate_job_id(),
        argv=_argv(command, script, opts.get("argv")),
        env=tuple(env),  # type: ignore[arg-type]
        dir=directory,
        user=user,
        privileged=bool(opts.get("privileged", False)),
        stdin=bool(opts.get("stdin", False)),
        tty=_tty(command, opts.get("tty")),
        rlimits=tuple(rlimits),
        log_tag=_log_tag(command, opts.get("log_tag")),
    )


def _log_tag(command: str, tag: str | None) -> str | None:
    """Warden's label of a job: 1 to 128 printable characters, kept as given."""
    if tag is not None and not (0 < len(tag) <= 128 and tag.isprintable()):
        raise InvalidRequest(
            f"{command}: log_tag must be 1 to 128 printable characters, got {json.dumps(tag)}"
        )
    return tag


def _argv(command: str, script: str, argv: list[Any] | None) -> tuple[str, ...]:
    """``/bin/sh -c SCRIPT``, or the program and arguments of OPTS ``argv`` (SCRIPT empty)."""
    if argv is None:
        return ("/bin/sh", "-c", script)
    if script:
        raise InvalidRequest(f'{command}: SCRIPT must be "" with argv (it runs instead)')
    if not argv or not all(isinstance(a, str) for a in argv) or not argv[0]:
        raise InvalidRequest(f"{command}: argv must be a list of strings, [PROGRAM, ARG...]")
    if any("\0" in a for a in argv):
        raise InvalidRequest(f"{command}: argv contains a NUL byte")
    if sum(len(a.encode("utf-8", "surrogateescape")) + 1 for a in argv) > MAX_SCRIPT_BYTES:
        raise InvalidRequest(f"{command}: argv is longer than {MAX_SCRIPT_BYTES} bytes")
    return tuple(argv)


SPAWN_OPTIONS: dict[str, type | tuple[type, ...]] = {
    "argv": list,
    "privileged": bool,
    "env": (dict, list),
    "dir": str,
    "user": (str, int),
    "rlimits": dict,
    "discard_output": bool,
    "timeout": (int, float),
    "cpu_time": (int, float),
    "stdin": bool,
    "tty": dict,
    "log_tag": str,
}
LINK_OPTIONS: dict[str, type | tuple[type, ...]] = {
    "encoding": str,
    "info": bool,
    "ended": bool,
    "usage": bool,
}


async def _spawn(
    command: str, request: Request, args: list[Any], names: tuple[str, ...]
) -> tuple[Container, int]:
    a = Args(command, args, names)
    container = request.container(a.string(0))
    script = a.string(1)
    opts = a.options(2, SPAWN_OPTIONS if command == "spawn" else SPAWN_OPTIONS | LINK_OPTIONS)
    _encoding(command, opts)
    container.require("spawn")
    job_request = _job_request(command, container, script, opts)
    structlog.contextvars.bind_contextvars(job_id=job_request.job_id)
    job = await container.spawn(
        job_request, bool(opts.get("discard_output", False)), _limits(command, opts)
    )
    container.log.info("job spawned", job_id=job.id, log_tag=job.log_tag)
    return container, job.id


def _terminal_size(command: str, rows: Any, cols: Any) -> tuple[int, int]:
    for name, value in (("rows", rows), ("cols", cols)):
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
            raise InvalidRequest(
                f"{command}: {name} must be an integer from 1 to 65535, got {json.dumps(value)}"
            )
    return rows, cols


def _tty(command: str, value: dict[str, Any] | None) -> tuple[int, int] | None:
    if value is None:
        return None
    if set(value) != {"rows", "cols"}:
        raise InvalidRequest(
            f'{command}: tty must be {{"rows": R, "cols": C}}, got {json.dumps(value)}'
        )
    return _terminal_size(command, value["rows"], value["cols"])


def _limits(command: str, opts: dict[str, Any]) -> JobLimits:
    for name in ("timeout", "cpu_time"):
        value = opts.get(name)
        if value is not None and not (0 < value <= MAX_JOB_SECONDS):
            raise InvalidRequest(
                f"{command}: {name} must be seconds above 0 and at most {MAX_JOB_SECONDS}, got {value}"
            )
    return JobLimits(opts.get("timeout"), opts.get("cpu_time"))


def _encoding(command: str, opts: dict[str, Any], allowed: tuple[str, ...] = ENCODINGS) -> str:
    encoding = opts.get("encoding", "utf-8")
    if encoding not in allowed:
        raise InvalidRequest(f"{command}: encoding {encoding!r} is not one of {', '.join(allowed)}")
    return str(encoding)


async def spawn(request: Request, *args: Any) -> int:
    _, job_id = await _spawn("spawn", request, list(args), ("HANDLE", "SCRIPT", "OPTS"))
    return job_id


def _report(job: Job, opts: dict[str, Any]) -> dict[str, Any]:
    """What link/run/stream add on request: ``ended`` (how the job ended), ``usage``."""
    report: dict[str, Any] = {}
    if opts.get("ended"):
        report["ended"] = job.ending()
    if opts.get("usage"):
        report["usage"] = job.usage()
    return report


def _wants_report(opts: dict[str, Any]) -> bool:
    return bool(opts.get("ended") or opts.get("usage"))


async def _link(
    command: str, request: Request, container: Container, job_id: int, opts: dict[str, Any]
) -> list[Any]:
    """The job's ``[exit_status, stdout, stderr]``, and a fourth item on request: the
    container's ``info`` alone when only *opts* ``info`` is asked (Warden's link carried
    it so), else ``{"ended": ..., "usage": ...}`` as asked, with ``"info"`` in it too
    when that is asked as well."""
    encoding = _encoding(command, opts)
    job = container.job(job_id)
    wanted = _wants_report(opts)
    async with request.until_hangup():
        (status, out, err), report = await container.link(
            job, partial(_report, opts=opts) if wanted else None
        )
    reply: list[Any] = [
        status,
        None if out is None else encode_output(out, encoding),
        None if err is None else encode_output(err, encoding),
    ]
    info = await request.supervisor.info(container) if opts.get("info") else None
    if wanted:
        assert report is not None
        reply.append(report if info is None else {"info": info, **report})
    elif info is not None:
        reply.append(info)
    # Nothing asked: a Warden-style client reads exactly three items.
    return reply


async def link(request: Request, *args: Any) -> list[Any]:
    a = Args("link", list(args), ("HANDLE", "JOB_ID", "OPTS"))
    container = request.container(a.string(0))
    job_id = a.integer(1)
    opts = a.options(2, LINK_OPTIONS)
    _encoding("link", opts)
    container.require("link")
    structlog.contextvars.bind_contextvars(job_id=job_id)
    return await _link("link", request, container, job_id, opts)


async def run(request: Request, *args: Any) -> list[Any]:
    container, job_id = await _spawn("run", request, list(args), ("HANDLE", "SCRIPT", "OPTS"))
    return await _link(
        "run", request, container, job_id, (args[2] if len(args) > 2 else None) or {}
    )


async def stream(request: Request, *args: Any) -> list[Any] | dict[str, Any]:
    a = Args("stream", list(args), ("HANDLE", "JOB_ID", "OPTS"))
    container = request.container(a.string(0))
    job_id = a.integer(1)
    opts = a.options(2, LINK_OPTIONS | {"follow": bool})
    encoding = _encoding("stream", opts, (*ENCODINGS, "raw"))
    container.require("stream")
    job = container.job(job_id)
    structlog.contextvars.bind_contextvars(job_id=job_id)
    limit = request.supervisor.config.containers.output_limit
    follow = opts.get("follow", True)
    async with request.until_hangup():
        async for name, chunk in job.stream(limit, stream_chunk_size(encoding), follow):
            await request.send(encode_stream_chunk(name, chunk, encoding))
    for name in sorted(job.cut):  # the output ended at the limit: the job was killed
        await request.send(encode_line(["cut", name]))
    final: dict[str, Any] = {}
    if opts.get("info"):
        final["info"] = await request.supervisor.info(container)
    if _wants_report(opts):
        final["status"] = KILLED_FOR_OUTPUT if job.cut else job.status
        final.update(_report(job, opts))
    # Nothing asked: as before, Warden-style clients look for an empty final payload.
    return final or []


def parse_signal(command: str, value: Any) -> int:
    """A signal number from a number or a name (``"INT"`` or ``"SIGINT"``)."""
    if isinstance(value, str) and not value.isdigit():
        name = value if value.startswith("SIG") else "SIG" + value
        try:
            return int(signal.Signals[name])
        except KeyError:
            raise InvalidRequest(f"{command}: unknown signal name {value!r}") from None
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise InvalidRequest(
            f"{command}: SIGNAL must be a name or a number, got {json.dumps(value)}"
        )
    number = int(value)
    if number not in signal.valid_signals():
        raise InvalidRequest(f"{command}: no signal number {number}")
    return number


async def signal_(request: Request, *args: Any) -> str:
    a = Args("signal", list(args), ("HANDLE", "JOB_ID", "SIGNAL", "OPTS"))
    container = request.container(a.string(0))
    job_id = a.integer(1)
    signum = parse_signal("signal", a.value(2))
    opts = a.options(3, {"pid": int})
    pid = opts.get("pid")
    if pid is not None and (isinstance(pid, bool) or pid < 2):
        raise InvalidRequest(f"signal: pid must be a process of the job, got {json.dumps(pid)}")
    structlog.contextvars.bind_contextvars(job_id=job_id)
    await container.signal(container.job(job_id), signum, pid)
    return "ok"


async def stdin(request: Request, *args: Any) -> str:
    """Write DATA to the job's stdin (null: EOF); replies once the job has taken it all."""
    a = Args("stdin", list(args), ("HANDLE", "JOB_ID", "DATA", "OPTS"))
    container = request.container(a.string(0))
    job_id = a.integer(1)
    text = a.value(2)
    if text is not None and not isinstance(text, str):
        raise InvalidRequest(f"stdin: DATA must be a string or null, got {json.dumps(text)}")
    encoding = _encoding("stdin", a.options(3, {"encoding": str}))
    data = None if text is None else decode_input(text, encoding, "stdin")
    structlog.contextvars.bind_contextvars(job_id=job_id)
    await container.write_stdin(container.job(job_id), data)
    return "ok"


async def resize(request: Request, *args: Any) -> str:
    a = Args("resize", list(args), ("HANDLE", "JOB_ID", "ROWS", "COLS"))
    container = request.container(a.string(0))
    job_id = a.integer(1)
    rows, cols = _terminal_size("resize", a.value(2), a.value(3))
    structlog.contextvars.bind_contextvars(job_id=job_id)
    await container.resize(container.job(job_id), rows, cols)
    return "ok"


async def stop(request: Request, *args: Any) -> str:
    a = Args("stop", list(args), ("HANDLE", "OPTS"))
    container = request.container(a.string(0))
    opts = a.options(1, {"kill": bool, "background": bool, "timeout": (int, float)})
    timeout = opts.get("timeout")
    if timeout is not None and (isinstance(timeout, bool) or not 0 <= timeout <= MAX_JOB_SECONDS):
        raise InvalidRequest(f"stop: timeout must be seconds from 0 to {MAX_JOB_SECONDS}")
    container.require("stop")
    kill = bool(opts.get("kill"))
    if opts.get("background"):
        container.stop_soon(kill=kill, timeout=timeout)
    else:
        await container.stop(kill=kill, timeout=timeout)
    return "ok"


async def destroy(request: Request, *args: Any) -> str:
    a = Args("destroy", list(args), ("HANDLE",))
    container = request.container(a.string(0))
    container.require("destroy")
    await request.supervisor.destroy(container)
    return "ok"


async def limit(request: Request, *args: Any) -> Any:
    a = Args("limit", list(args), ("HANDLE", "RESOURCE", "VALUE"))
    container = request.container(a.string(0))
    resource = a.string(1)
    value = a.value(2, False)
    handler = request.supervisor.limits.get(resource)
    if handler is None:
        known = ", ".join(sorted(request.supervisor.limits)) or "none"
        raise InvalidRequest(f"limit: unknown resource {resource!r} (known: {known})")
    if value is None:
        return await handler.read(container)
    container.require("limit")
    in_force = await handler.write(container, value)
    await container.publish(LimitChanged(container.handle, resource, in_force))
    return in_force


async def info(request: Request, *args: Any) -> dict[str, Any]:
    a = Args("info", list(args), ("HANDLE",))
    return await request.supervisor.info(request.container(a.string(0)))


async def pause(request: Request, *args: Any) -> str:
    a = Args("pause", list(args), ("HANDLE",))
    await request.container(a.string(0)).pause()
    return "ok"


async def resume(request: Request, *args: Any) -> str:
    a = Args("resume", list(args), ("HANDLE",))
    await request.container(a.string(0)).resume()
    return "ok"


async def start(request: Request, *args: Any) -> str:
    a = Args("start", list(args), ("HANDLE",))
    await request.container(a.string(0)).start()
    return "ok"


def _names(command: str, value: Any, what: str) -> list[str]:
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise InvalidRequest(f"{command}: {what} must be a non-empty list of strings")
    return value


async def events(request: Request, *args: Any) -> list[Any]:
    """Stream ``["event", {...}]`` lines (and ``["dropped", N]``) until the client sends
    anything or closes, or every container it named is destroyed (then the reply ``[]``)."""
    a = Args("events", list(args), ("FILTER",))
    wanted = a.options(0, {"handles": list, "kinds": list})
    handles = kinds = None
    if "handles" in wanted:
        handles = _names("events", wanted["handles"], "handles")
        for handle in handles:
            request.supervisor.get(handle)  # known now; not referenced: watching keeps none alive
    if "kinds" in wanted:
        kinds = _names("events", wanted["kinds"], "kinds")
        unknown = sorted(set(kinds) - KINDS)
        if unknown:
            raise InvalidRequest(
                f"events: unknown kind {unknown[0]!r} (known: {', '.join(sorted(KINDS))})"
            )
    async with (
        request.supervisor.bus.watch(handles, kinds, send_now=request.connection.send_now) as watch,
        trio.open_nursery() as nursery,
    ):

        async def until_input() -> None:
            await request.input()
            nursery.cancel_scope.cancel()

        nursery.start_soon(until_input)
        # Events from here on are seen: a client may act once it has read this line.
        watch.sending = True
        await request.send(encode_line(["watching", {"handles": handles, "kinds": kinds}]))
        watch.sending = False
        while (line := await watch.next()) is not None:
            watch.sending = True
            with trio.CancelScope(shield=True):  # a line is sent whole, or the client is gone
                await request.send(line)
            watch.sending = False
        nursery.cancel_scope.cancel()
    return []


async def list_(request: Request, *args: Any) -> list[str]:
    a = Args("list", list(args), ("FILTER",))
    wanted = a.value(0, False)
    wanted = {} if wanted is None else wanted
    if not isinstance(wanted, dict) or not all(isinstance(v, str) for v in wanted.values()):
        raise InvalidRequest("list: FILTER must be an object of property strings")
    return request.supervisor.list(wanted)


CORE_COMMANDS: dict[str, Handler] = {
    "ping": ping,
    "echo": echo,
    "create": create,
    "spawn": spawn,
    "link": link,
    "run": run,
    "stream": stream,
    "signal": signal_,
    "stdin": stdin,
    "resize": resize,
    "stop": stop,
    "destroy": destroy,
    "limit": limit,
    "info": info,
    "list": list_,
    "pause": pause,
    "resume": resume,
    "start": start,
    "events": events,
}
