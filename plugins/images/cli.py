"""The images plugin's commands: ``pull``, ``images``, ``rmi``, ``image ...``.

Found by ``corral`` through the ``corral.cli`` entry points (pyproject.toml), as a
third-party plugin's commands would be.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import sys
from pathlib import Path
from typing import Any

from supervisor.cli.command import Command, Fail, connect, exit_status, pairs, write_out

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


def pull(args: argparse.Namespace) -> int:
    with connect(args) as client:
        image = client.call_with_progress("image-pull", args.ref, progress=_progress)
    print(image["id"])
    return 0


def images(args: argparse.Namespace) -> int:
    with connect(args) as client:
        listed = client.call("image-list")
    if args.json:
        print(json.dumps(listed, indent=2))
        return 0
    print(f"{'NAME':<50} {'ID':<12} {'DIGEST':<19} {'SIZE':>10} {'CREATED':<20} CONTAINERS")
    for image in listed:
        size = f"{image['size'] / 1e6:.1f} MB"
        digest = (image["manifest"] or "-")[:19]
        for name in image["names"] or ["<none>"]:
            print(
                f"{name:<50} {image['id'][7:19]:<12} {digest:<19} {size:>10} "
                f"{(image['created'] or '')[:19]:<20} {len(image['containers'])}"
            )
    return 0


def rmi(args: argparse.Namespace) -> int:
    with connect(args) as client:
        result = client.call("image-remove", args.ref, {"force": True} if args.force else {})
    for name in result["untagged"]:
        print(f"untagged {name}")
    if result["deleted"]:
        print(f"deleted {result['deleted']}")
    return 0


def image_import(args: argparse.Namespace) -> int:
    opts = {"name": args.name} if args.name else {}
    path = str(Path(args.path).resolve())
    with connect(args) as client:
        for image in client.call_with_progress("image-import", path, opts, progress=_progress):
            print(image["id"], " ".join(image["names"]))
    return 0


def image_inspect(args: argparse.Namespace) -> int:
    with connect(args) as client:
        print(json.dumps(client.call("image-inspect", args.ref), indent=2))
    return 0


def image_prune(args: argparse.Namespace) -> int:
    with connect(args) as client:
        freed = client.call("image-prune")
    print(f"{freed['layers']} layers, {freed['blobs']} blobs, {freed['bytes']} bytes freed")
    return 0


def image_run(args: argparse.Namespace) -> int:
    """A container of the image running its Entrypoint and Cmd (ARGs replace Cmd) as one
    job through ``/bin/sh``, then destroyed."""
    config: dict[str, Any] = {"image": args.image, "image_pull": "missing"}
    if args.env:
        config["env"] = pairs(args.env, "--env")
    with connect(args) as client:
        handle = client.create(config)
        try:
            image = client.call("image-inspect", args.image)["config"]
            argv = list(image.get("Entrypoint") or []) + (args.args or list(image.get("Cmd") or []))
            if not argv:
                raise Fail(f"image {args.image} has no Entrypoint nor Cmd; give ARGs")
            status, out, err = client.run(handle, "exec " + shlex.join(argv))
        finally:
            client.destroy(handle)
    write_out("stdout", (out or "").encode("utf-8", "surrogateescape"))
    write_out("stderr", (err or "").encode("utf-8", "surrogateescape"))
    return exit_status(status)


def _rmi_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("ref")
    p.add_argument(
        "-f",
        "--force",
        action="store_true",
        help="also an image containers use (they keep its layers until destroyed)",
    )


_IMAGE_COMMANDS = {
    "import": image_import,
    "inspect": image_inspect,
    "prune": image_prune,
    "run": image_run,
}


def _image_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="image_command", required=True)
    s = sub.add_parser("import", help="import a docker save archive or an OCI layout")
    s.add_argument("path", metavar="FILE|DIR")
    s.add_argument("--name", help="name the imported image(s) REPO[:TAG]")
    sub.add_parser("inspect", help="an image's config and layers").add_argument("ref")
    sub.add_parser("prune", help="delete layers and blobs nothing uses")
    s = sub.add_parser("run", help="run an image's Entrypoint+Cmd in a new container")
    s.add_argument("image")
    s.add_argument("args", nargs="*", help="replace the image's Cmd")
    s.add_argument("--env", action="append", default=[], metavar="K=V")


COMMANDS = [
    Command("pull", "pull an image from its registry", pull, lambda p: p.add_argument("ref")),
    Command(
        "images",
        "list the images in the store",
        images,
        lambda p: p.add_argument("--json", action="store_true"),
    ),
    Command("rmi", "remove an image (or one of its names)", rmi, _rmi_arguments),
    Command(
        "image",
        "import, inspect, prune or run images",
        lambda args: _IMAGE_COMMANDS[args.image_command](args),
        _image_arguments,
    ),
]
