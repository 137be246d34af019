"""``corral``: the command-line client.

Human output on stdout; errors as ``corral: CODE: MESSAGE`` on stderr with exit
status 1. ``corral run`` exits with the job's exit status.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from supervisor import errors
from supervisor.client import DEFAULT_SOCKET, Client


def _pairs(items: list[str], what: str) -> dict[str, str]:
    out = {}
    for item in items:
        if "=" not in item:
            raise SystemExit(f"corral: {what} {item!r} is not NAME=VALUE")
        key, value = item.split("=", 1)
        out[key] = value
    return out


def _job_opts(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "privileged": args.privileged or None,
        "user": args.user,
        "dir": args.dir,
        "env": _pairs(args.env, "--env") or None,
    }


def _write(name: str, text: str | None) -> None:
    if text:
        stream = sys.stdout if name == "stdout" else sys.stderr
        stream.buffer.write(text.encode("utf-8", "surrogateescape"))
        stream.flush()


def _event_line(event: dict[str, Any]) -> str:
    """``12:00:01.234 h1 job_exited job_id=3 status=0``."""
    stamp = time.strftime("%H:%M:%S", time.localtime(event["time"]))
    millis = int(event["time"] * 1000) % 1000
    fields = " ".join(
        f"{k}={json.dumps(v) if isinstance(v, dict | list) else v}"
        for k, v in event.items()
        if k not in ("kind", "handle", "time")
    )
    return f"{stamp}.{millis:03d} {event['handle']} {event['kind']} {fields}".rstrip()


def _status(status: int | None) -> int:
    return 255 if status is None else status


def run_command(client: Client, args: argparse.Namespace) -> int:
    cmd = args.command
    if cmd == "ping":
        print(client.ping())
    elif cmd == "create":
        config: dict[str, Any] = json.loads(args.config) if args.config else {}
        if args.handle:
            config["handle"] = args.handle
        if args.grace_time is not None:
            config["grace_time"] = None if args.grace_time < 0 else args.grace_time
        if args.property:
            config["properties"] = _pairs(args.property, "--property")
        if args.env:
            config["env"] = _pairs(args.env, "--env")
        print(client.create(config or None))
    elif cmd == "spawn":
        print(client.spawn(args.handle, args.script, **_job_opts(args)))
    elif cmd in ("run", "link"):
        if cmd == "run":
            status, out, err = client.run(args.handle, args.script, **_job_opts(args))
        else:
            status, out, err = client.link(args.handle, args.job_id)
        _write("stdout", out)
        _write("stderr", err)
        return _status(status)
    elif cmd == "stream":
        for name, chunk in client.stream(args.handle, args.job_id):
            if name == "cut":
                print(f"corral: {chunk} cut at the output limit", file=sys.stderr)
            else:
                _write(name, chunk)
    elif cmd == "stop":
        print(client.stop(args.handle, kill=args.kill, background=args.background))
    elif cmd == "destroy":
        print(client.destroy(args.handle))
    elif cmd == "info":
        print(json.dumps(client.info(args.handle), indent=2))
    elif cmd == "list":
        for handle in client.list(_pairs(args.property, "property") or None):
            print(handle)
    elif cmd in ("pause", "resume", "start"):
        print(client.call(cmd, args.handle))
    elif cmd == "events":
        for event in client.events(args.handle or None, args.kind or None):
            if args.json:
                print(json.dumps(event), flush=True)
            elif isinstance(event, int):
                print(f"(events dropped: {event})", flush=True)
            else:
                print(_event_line(event), flush=True)
    elif cmd == "raw":
        request = json.loads(args.request)
        print(json.dumps(client.call(*request)))
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="corral", description="Talk to the Corral daemon.")
    p.add_argument(
        "-s",
        "--socket",
        type=Path,
        default=Path(os.environ.get("CORRAL_SOCKET", DEFAULT_SOCKET)),
        help="daemon socket (default $CORRAL_SOCKET or %(default)s)",
    )
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("ping", help="check the daemon answers")
    c = sub.add_parser("create", help="create a container, print its handle")
    c.add_argument("--handle")
    c.add_argument(
        "--grace-time", type=float, help="seconds unreferenced before destroy (<0: never)"
    )
    c.add_argument("--property", action="append", default=[], metavar="K=V")
    c.add_argument("--env", action="append", default=[], metavar="K=V")
    c.add_argument("--config", help="the whole create CONFIG as JSON")
    for name, helptext in (
        ("spawn", "start a job, print its id"),
        ("run", "run a job, print its output"),
    ):
        s = sub.add_parser(name, help=helptext)
        s.add_argument("handle")
        s.add_argument("script")
        s.add_argument("--privileged", action="store_true")
        s.add_argument("--user")
        s.add_argument("--dir")
        s.add_argument("--env", action="append", default=[], metavar="K=V")
    for name in ("link", "stream"):
        s = sub.add_parser(name, help=f"{name} a job")
        s.add_argument("handle")
        s.add_argument("job_id", type=int)
    s = sub.add_parser("stop", help="stop every process of a container")
    s.add_argument("handle")
    s.add_argument("--kill", action="store_true")
    s.add_argument("--background", action="store_true")
    for name in ("destroy", "info"):
        sub.add_parser(name).add_argument("handle")
    sub.add_parser("pause", help="freeze every process of a container").add_argument("handle")
    sub.add_parser("resume", help="let a paused container run again").add_argument("handle")
    sub.add_parser("start", help="make a stopped container active again").add_argument("handle")
    s = sub.add_parser("events", help="print what happens to containers, as it happens")
    s.add_argument("handle", nargs="*", help="only these containers (default: all)")
    s.add_argument("--kind", action="append", default=[], help="only events of this kind")
    s.add_argument("--json", action="store_true", help="one JSON object per line")
    s = sub.add_parser("list", help="list handles (optionally matching properties)")
    s.add_argument("property", nargs="*", metavar="K=V")
    sub.add_parser("raw", help="send one JSON request array").add_argument("request")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        with Client(args.socket) as client:
            return run_command(client, args)
    except errors.CorralError as exc:
        print(f"corral: {exc.code}: {exc.message}", file=sys.stderr)
        return 1
    except (FileNotFoundError, ConnectionRefusedError) as exc:
        print(f"corral: cannot reach the daemon at {args.socket}: {exc.strerror}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
