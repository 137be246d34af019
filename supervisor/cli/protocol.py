"""The protocol's own requests, one command each, as Warden's CLI had them: handles
in, payloads out (``corral raw`` sends any request). Docker's ``run``, ``create``,
``stop``, ``pause`` are in :mod:`supervisor.cli.run` and :mod:`supervisor.cli.manage`
(Warden's ``run HANDLE SCRIPT`` is ``exec HANDLE sh -c SCRIPT``)."""

from __future__ import annotations

import sys

from supervisor.cli.command import Command, Fail, connect, exit_status, pairs, write_out

# Annotations only: argparse and typing (with re and enum under them) would cost ``ping``,
# which runs without a parser, most of its start-up (docs/cli.md).
TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse
    from collections.abc import Callable
    from typing import Any


def _job_opts(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "privileged": args.privileged or None,
        "user": args.user,
        "dir": args.dir,
        "env": pairs(args.env, "--env") or None,
    }


def _text(data: str | None) -> bytes:
    return (data or "").encode("utf-8", "surrogateescape")


def event_line(event: dict[str, Any]) -> str:
    """``12:00:01.234 h1 job_exited job_id=3 status=0``."""
    import json
    import time

    stamp = time.strftime("%H:%M:%S", time.localtime(event["time"]))
    millis = int(event["time"] * 1000) % 1000
    fields = " ".join(
        f"{k}={json.dumps(v) if isinstance(v, dict | list) else v}"
        for k, v in event.items()
        if k not in ("kind", "handle", "time")
    )
    return f"{stamp}.{millis:03d} {event['handle']} {event['kind']} {fields}".rstrip()


def ping(args: argparse.Namespace) -> int:
    with connect(args) as client:
        print(client.ping())
    return 0


def spawn(args: argparse.Namespace) -> int:
    with connect(args) as client:
        print(client.spawn(args.handle, args.script, **_job_opts(args)))
    return 0


def _job_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("handle")
    p.add_argument("script")
    p.add_argument("--privileged", action="store_true")
    p.add_argument("--user")
    p.add_argument("--dir")
    p.add_argument("--env", action="append", default=[], metavar="K=V")


def link(args: argparse.Namespace) -> int:
    with connect(args) as client:
        status, out, err = client.link(args.handle, args.job_id)
    write_out("stdout", _text(out))
    write_out("stderr", _text(err))
    return exit_status(status)


def stream(args: argparse.Namespace) -> int:
    with connect(args) as client:
        for name, chunk in client.stream(args.handle, args.job_id):
            if name == "cut":
                print(f"corral: {chunk} cut at the output limit", file=sys.stderr)
            else:
                write_out(name, _text(chunk))
    return 0


def _job_id_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("handle")
    p.add_argument("job_id", type=int)


def signal(args: argparse.Namespace) -> int:
    with connect(args) as client:
        print(client.signal(args.handle, args.job_id, args.signal))
    return 0


def _signal_arguments(p: argparse.ArgumentParser) -> None:
    _job_id_arguments(p)
    p.add_argument("signal", help="a name (INT, SIGTERM) or a number")


def _handle_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("handle")


def _on_handle(request: str) -> Callable[[argparse.Namespace], int]:
    def command(args: argparse.Namespace) -> int:
        import json

        with connect(args) as client:
            reply = client.call(request, args.handle)
        print(json.dumps(reply, indent=2) if request == "info" else reply)
        return 0

    return command


def list_(args: argparse.Namespace) -> int:
    with connect(args) as client:
        for handle in client.list(pairs(args.property, "property") or None):
            print(handle)
    return 0


def events(args: argparse.Namespace) -> int:
    import json

    with connect(args) as client:
        for event in client.events(args.handle or None, args.kind or None):
            if args.json:
                print(json.dumps(event), flush=True)
            elif isinstance(event, int):
                print(f"(events dropped: {event})", flush=True)
            else:
                print(event_line(event), flush=True)
    return 0


def _events_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("handle", nargs="*", help="only these containers (default: all)")
    p.add_argument("--kind", action="append", default=[], help="only events of this kind")
    p.add_argument("--json", action="store_true", help="one JSON object per line")


def raw(args: argparse.Namespace) -> int:
    import json

    try:
        request = json.loads(args.request)
    except json.JSONDecodeError as exc:
        raise Fail(f"the request is not JSON: {exc}") from None
    if not isinstance(request, list) or not request:
        raise Fail("the request must be a JSON array, e.g. '[\"ping\"]'")
    with connect(args) as client:
        print(json.dumps(client.call(*request)))
    return 0


COMMANDS = [
    Command("ping", "check the daemon answers", ping),
    Command("spawn", "start a job, print its id", spawn, _job_arguments),
    Command("link", "wait for a job, print its output", link, _job_id_arguments),
    Command("stream", "print a job's output as it comes", stream, _job_id_arguments),
    Command("signal", "send a job a signal", signal, _signal_arguments),
    Command("destroy", "destroy a container", _on_handle("destroy"), _handle_argument),
    Command("info", "a container's info, as JSON", _on_handle("info"), _handle_argument),
    Command(
        "start", "make a stopped container active again", _on_handle("start"), _handle_argument
    ),
    Command(
        "list",
        "list handles (optionally matching properties)",
        list_,
        lambda p: p.add_argument("property", nargs="*", metavar="K=V"),
    ),
    Command("events", "print what happens to containers, as it happens", events, _events_arguments),
    Command(
        "raw",
        "send one JSON request array, print the payload",
        raw,
        lambda p: p.add_argument("request"),
    ),
]
