"""``corral``: the command-line client.

Human output on stdout; errors as ``corral: CODE: MESSAGE`` on stderr with exit
status 1. ``corral run`` exits with the job's exit status.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
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


_BYTES = re.compile(r"(\d+)/(\d+) bytes")


def _progress(line: str) -> None:
    """A pull's or import's progress line, as a bar on a terminal (else the line itself)."""
    if not sys.stderr.isatty():
        print(line, file=sys.stderr, flush=True)
        return
    match = _BYTES.search(line)
    bar = ""
    if match and int(match.group(2)):
        done = int(match.group(1)) / int(match.group(2))
        bar = f"[{'#' * int(done * 30):<30}] {done:4.0%} "
    sys.stderr.write(f"\r\033[K{bar}{line[:60]}")
    if "done" in line:
        sys.stderr.write("\n")
    sys.stderr.flush()


def _image_table(images: list[dict[str, Any]]) -> None:
    print(f"{'NAME':<50} {'ID':<12} {'DIGEST':<19} {'SIZE':>10} {'CREATED':<20} CONTAINERS")
    for image in images:
        size = f"{image['size'] / 1e6:.1f} MB"
        digest = (image["manifest"] or "-")[:19]
        for name in image["names"] or ["<none>"]:
            print(
                f"{name:<50} {image['id'][7:19]:<12} {digest:<19} {size:>10} "
                f"{(image['created'] or '')[:19]:<20} {len(image['containers'])}"
            )


def run_image(client: Client, args: argparse.Namespace) -> int:
    """``corral image run IMAGE [ARG...]``: a container of the image running its Entrypoint
    and Cmd (ARGs replace Cmd) as one job through ``/bin/sh``, then destroyed."""
    config: dict[str, Any] = {"image": args.image, "image_pull": "missing"}
    if args.env:
        config["env"] = _pairs(args.env, "--env")
    handle = client.create(config)
    try:
        image = client.call("image-inspect", args.image)["config"]
        argv = list(image.get("Entrypoint") or []) + (args.args or list(image.get("Cmd") or []))
        if not argv:
            raise SystemExit(f"corral: image {args.image} has no Entrypoint nor Cmd; give ARGs")
        status, out, err = client.run(handle, "exec " + shlex.join(argv))
        _write("stdout", out)
        _write("stderr", err)
        return _status(status)
    finally:
        client.destroy(handle)


def image_command(client: Client, args: argparse.Namespace) -> int:
    cmd = args.command if args.command != "image" else f"image {args.image_command}"
    if cmd == "pull":
        image = client.call_with_progress("image-pull", args.ref, progress=_progress)
        print(image["id"])
    elif cmd == "images":
        images = client.call("image-list")
        if args.json:
            print(json.dumps(images, indent=2))
        else:
            _image_table(images)
    elif cmd == "rmi":
        result = client.call("image-remove", args.ref)
        for name in result["untagged"]:
            print(f"untagged {name}")
        if result["deleted"]:
            print(f"deleted {result['deleted']}")
    elif cmd == "image import":
        opts = {"name": args.name} if args.name else {}
        path = str(Path(args.path).resolve())
        for image in client.call_with_progress("image-import", path, opts, progress=_progress):
            print(image["id"], " ".join(image["names"]))
    elif cmd == "image inspect":
        print(json.dumps(client.call("image-inspect", args.ref), indent=2))
    elif cmd == "image prune":
        freed = client.call("image-prune")
        print(f"{freed['layers']} layers, {freed['blobs']} blobs, {freed['bytes']} bytes freed")
    elif cmd == "image run":
        return run_image(client, args)
    return 0


def run_command(client: Client, args: argparse.Namespace) -> int:
    cmd = args.command
    if cmd in ("pull", "images", "rmi", "image"):
        return image_command(client, args)
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
    _image_parsers(sub)
    return p


def _image_parsers(sub: Any) -> None:
    sub.add_parser("pull", help="pull an image from its registry").add_argument("ref")
    s = sub.add_parser("images", help="list the images in the store")
    s.add_argument("--json", action="store_true")
    sub.add_parser("rmi", help="remove an image (or one of its names)").add_argument("ref")
    image = sub.add_parser("image", help="import, inspect, prune or run images")
    isub = image.add_subparsers(dest="image_command", required=True)
    s = isub.add_parser("import", help="import a docker save archive or an OCI layout")
    s.add_argument("path", metavar="FILE|DIR")
    s.add_argument("--name", help="name the imported image(s) REPO[:TAG]")
    isub.add_parser("inspect", help="an image's config and layers").add_argument("ref")
    isub.add_parser("prune", help="delete layers and blobs nothing uses")
    s = isub.add_parser("run", help="run an image's Entrypoint+Cmd in a new container")
    s.add_argument("image")
    s.add_argument("args", nargs="*", help="replace the image's Cmd")
    s.add_argument("--env", action="append", default=[], metavar="K=V")


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
