"""The image commands of the protocol (see ``docs/protocol.md``).

``image-import PATH OPTS?``, ``image-pull REF``, ``image-list``, ``image-inspect REF``,
``image-remove REF``, ``image-prune``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import trio

from plugins.images.service import ImageService
from plugins.images.store import Image
from supervisor.api import Args, Handler, InvalidRequest, Request, context_nursery

T = TypeVar("T")


def summary(service: ImageService, image: Image) -> dict[str, Any]:
    """One line of ``image-list``."""
    return {
        "id": image.id,
        "names": image.names,
        "manifest": image.manifest,
        "size": image.size,
        "created": image.created,
        "layers": len(image.layers),
        "containers": service.containers_of(image),
    }


async def _with_progress(
    request: Request, work: Callable[[Callable[[str], None]], Awaitable[T]]
) -> T:
    """Run *work*, sending each progress line it reports as
    ``["progress", TEXT]`` before the reply."""
    token = trio.lowlevel.current_trio_token()
    send, receive = trio.open_memory_channel[str](math.inf)

    def progress(line: str) -> None:  # from a worker thread, or from the event loop
        try:
            trio.lowlevel.current_task()
        except RuntimeError:
            trio.from_thread.run_sync(send.send_nowait, line, trio_token=token)
        else:
            send.send_nowait(line)

    async def forward() -> None:
        async for line in receive:
            await request.send(json.dumps(["progress", line]).encode() + b"\n")

    async with context_nursery() as nursery:
        nursery.start_soon(forward)
        with send:
            return await work(progress)


def handlers(service: ImageService) -> dict[str, Handler]:
    """The commands, bound to *service*."""

    async def image_import(request: Request, *args: Any) -> list[dict[str, Any]]:
        a = Args("image-import", list(args), ("PATH", "OPTS"))
        path = a.string(0)
        opts = a.options(1, {"name": str})
        if not path.startswith("/"):
            raise InvalidRequest(f"image-import: PATH {path!r} is not an absolute path")
        if "\0" in path:
            raise InvalidRequest(f"image-import: PATH {path!r} contains a NUL byte")
        images = await _with_progress(
            request, lambda progress: service.import_(Path(path), opts.get("name"), progress)
        )
        return [summary(service, image) for image in images]

    async def image_pull(request: Request, *args: Any) -> dict[str, Any]:
        ref = Args("image-pull", list(args), ("REF",)).string(0)
        image = await _with_progress(request, lambda progress: service.pull(ref, progress))
        return summary(service, image)

    async def image_list(request: Request, *args: Any) -> list[dict[str, Any]]:
        Args("image-list", list(args), ())
        return [summary(service, image) for image in service.store.images.values()]

    async def image_inspect(request: Request, *args: Any) -> dict[str, Any]:
        ref = Args("image-inspect", list(args), ("REF",)).string(0)
        image = service.get(ref)
        return {
            **summary(service, image),
            "os": image.os,
            "architecture": image.architecture,
            "config": image.config,
            "layers": image.layers,
        }

    async def image_remove(request: Request, *args: Any) -> dict[str, Any]:
        a = Args("image-remove", list(args), ("REF", "OPTS"))
        opts = a.options(1, {"force": bool})
        return await service.remove(a.string(0), force=bool(opts.get("force")))

    async def image_prune(request: Request, *args: Any) -> dict[str, Any]:
        Args("image-prune", list(args), ())
        return await service.prune()

    return {
        "image-import": image_import,
        "image-pull": image_pull,
        "image-list": image_list,
        "image-inspect": image_inspect,
        "image-remove": image_remove,
        "image-prune": image_prune,
    }
