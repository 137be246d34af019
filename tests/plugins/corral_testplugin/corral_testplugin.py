"""A small third-party plugin: records its hooks (and a clean-up after destroy) in a log file.

Config ``[testplugin]``: ``log`` (file to append to), ``fail_attach`` (raise in
the attach phase, to test that create rolls back), ``bind`` (a host directory
bound read-only at ``/testplugin`` in every container: a mount planned after
the built-in plugins prepared), ``tmpfs_root`` (replace the planned root mount,
which a plugin prepared after isolation may not do).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from supervisor.api import ContainerView, Handler, LaunchPlan, Mount, Request, hookimpl, setting


@dataclass(frozen=True)
class Settings:
    """``[testplugin]``."""

    log: Path | None = setting(None, "file the hooks are recorded in")
    fail_attach: bool = setting(False, "raise in the attach phase")
    bind: Path | None = setting(None, "host directory bound read-only at /testplugin")
    tmpfs_root: bool = setting(False, "replace the planned root mount")


class RecordingPlugin:
    """Records its hooks; claims a create option, an info field and a command."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def _note(self, line: str) -> None:
        if self.settings.log is None:
            return  # installed, but this daemon was not configured for it
        with open(self.settings.log, "a") as f:
            f.write(line + "\n")

    @hookimpl
    def corral_create_options(self) -> dict[str, Any]:
        return {"testplugin_note": str}

    @hookimpl
    def corral_container_prepare(
        self, container: ContainerView, plan: LaunchPlan, restoring: bool
    ) -> AbstractAsyncContextManager[None]:
        return self._resource(container, plan, restoring)

    @asynccontextmanager
    async def _resource(
        self, container: ContainerView, plan: LaunchPlan, restoring: bool
    ) -> AsyncIterator[None]:
        self._note(f"acquire {container.handle} restoring={restoring}")
        if self.settings.bind is not None:
            plan.mounts.append(
                Mount("none", str(self.settings.bind), "/testplugin", ("bind", "ro", "mkdir"))
            )
        if self.settings.tmpfs_root:
            plan.root_mount = Mount("tmpfs", "tmpfs", "/")
        try:
            yield
        finally:
            self._note(f"release {container.handle} detaching={container.detaching}")
            if not container.detaching:
                handle = container.handle
                container.after_destroy(lambda: self._note(f"after destroy {handle}"))

    @hookimpl
    def corral_container_attach(
        self, container: ContainerView
    ) -> AbstractAsyncContextManager[None]:
        return self._attached(container)

    @asynccontextmanager
    async def _attached(self, container: ContainerView) -> AsyncIterator[None]:
        if self.settings.fail_attach:
            raise RuntimeError("testplugin refuses to attach")
        assert container.sandbox is not None
        self._note(f"attach {container.handle} pid={container.sandbox.pid}")
        yield

    @hookimpl
    def corral_container_info(self, container: ContainerView) -> dict[str, Any]:
        return {"testplugin": container.options.get("testplugin_note", "present")}

    @hookimpl
    def corral_commands(self) -> dict[str, Handler]:
        return {"testplugin-hello": _hello, "testplugin-whoami": _whoami}


async def _hello(request: Request, *args: Any) -> str:
    return f"hello {' '.join(map(str, args))}".strip()


async def _whoami(request: Request) -> dict[str, Any]:
    """The client's credentials, as the API gives them to a handler."""
    who = request.credentials
    return {"pid": who.pid, "uid": who.uid, "gid": who.gid, "groups": list(who.groups)}
