"""Images plugin: a content-addressed image store, import, and containers from images.

``create`` with ``image`` (instead of ``rootfs``) stacks the image's unpacked
layers as the root overlay's lower directories: this plugin, prepared before
``fs``, puts them in ``LaunchPlan.root_layers`` and the image's Env,
WorkingDir and User in ``LaunchPlan.job_defaults``. The store is in
:mod:`plugins.images.store`, the safe unpacker in :mod:`plugins.images.unpack`,
the commands in :mod:`plugins.images.command`; ``docs/images.md`` tells the whole.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

from plugins.images import command, reference
from plugins.images.registry import Access
from plugins.images.service import ImageService
from plugins.images.settings import Settings
from plugins.images.store import Image
from supervisor.api import (
    Config,
    ContainerView,
    Handler,
    InvalidRequest,
    JobDefaults,
    LaunchPlan,
    hookimpl,
)

NAME = "images"
#: Bytes of the layers' paths in the overlay's ``lowerdir``: the kernel takes a page of
#: mount options, which also hold ``upperdir`` and ``workdir``.
MAX_LOWERDIR = 3600


def job_defaults(image: Image) -> JobDefaults:
    """What the image's config says every job gets (unless its request says otherwise)."""
    config = image.config
    env = [tuple(entry.split("=", 1)) for entry in config.get("Env", [])]
    user = config.get("User") or None
    if user is not None:
        user = user.split(":", 1)[0]  # the init takes the group from /etc/passwd
    directory = config.get("WorkingDir") or None
    if directory is not None and not directory.startswith("/"):
        directory = "/" + directory
    return JobDefaults(env=env, dir=directory, user=user)  # type: ignore[arg-type]


def _once(diff_ids: list[str]) -> list[str]:
    """*diff_ids* (bottom first) with a layer given twice kept only at its top place.

    overlayfs refuses a directory twice among the lower ones; the lower copy adds
    nothing, as the upper one lays the same files and whiteouts over it again.
    """
    seen: set[str] = set()
    kept = []
    for diff_id in reversed(diff_ids):
        if diff_id not in seen:
            seen.add(diff_id)
            kept.append(diff_id)
    return kept[::-1]


def _image_pull_option(value: Any) -> str:
    if value not in ("missing", "never"):
        raise InvalidRequest(f'image_pull: {value!r} is not "missing" or "never"')
    return str(value)


class ImagesPlugin:
    """The built-in ``images`` plugin (see the module docstring)."""

    def __init__(self, settings: Settings, config: Config) -> None:
        access = Access(
            plain_http=frozenset(settings.plain_http),
            ca_files=settings.ca_files,
            credentials=settings.credentials,
        )
        self.service = ImageService(config.daemon.depot, access)

    @hookimpl
    def corral_startup(self) -> None:
        """Open the store: not before, as only then does this daemon hold the depot's lock
        (opening empties the store's ``tmp/``). Restored containers need only their state."""
        self.service.open()

    @hookimpl
    def corral_create_options(self) -> dict[str, Any]:
        return {"image": self._image_option, "image_pull": _image_pull_option}

    def _image_option(self, value: Any) -> str:
        if not isinstance(value, str):
            raise InvalidRequest(f"image: {value!r} is not an image reference or id")
        if self.service.find(value) is None:
            try:
                reference.parse(value)
            except reference.ReferenceError as exc:
                raise InvalidRequest(f"image: {exc}") from None
        return value

    async def _resolve(self, container: ContainerView) -> Image:
        ref = container.options["image"]
        image = self.service.find(ref)
        if image is None and container.options.get("image_pull") == "missing":
            container.log.info("pulling the image", image=ref)
            image = await self.service.pull(ref, lambda line: None)
        return image if image is not None else self.service.get(ref)

    @hookimpl
    def corral_commands(self) -> dict[str, Handler]:
        return command.handlers(self.service)

    @hookimpl
    def corral_container_prepare(
        self, container: ContainerView, plan: LaunchPlan, restoring: bool
    ) -> AbstractAsyncContextManager[None] | None:
        if "image" not in container.options:
            return None
        return self._stack(container, plan, restoring)

    @asynccontextmanager
    async def _stack(
        self, container: ContainerView, plan: LaunchPlan, restoring: bool
    ) -> AsyncIterator[None]:
        state = container.plugin_state(NAME)
        if restoring:
            # The image may have been removed meanwhile; its layers stay while we hold them.
            image = Image.from_json(state["image"]) if "image" in state else None
            if image is None:
                yield
                return
        else:
            if "rootfs" in container.options:
                raise InvalidRequest("create: give either image or rootfs, not both")
            image = await self._resolve(container)
            state["image"] = image.to_json()
            container.save()
        self.service.use(image, container.handle)
        try:
            plan.root_layers = [self.service.store.layer_path(d) for d in _once(image.diff_ids)]
            if sum(len(str(p)) + 1 for p in plan.root_layers) > MAX_LOWERDIR:
                raise InvalidRequest(
                    f"image {container.options['image']}: {len(plan.root_layers)} layers are "
                    "more than overlayfs can stack with this depot path (its mount options "
                    f"hold at most a page; the layers' paths take over {MAX_LOWERDIR} bytes)"
                )
            if not restoring:
                self.service.layer_dirs(image)  # each still there
            plan.job_defaults = job_defaults(image)
            yield
        finally:
            self.service.release(container.handle)
