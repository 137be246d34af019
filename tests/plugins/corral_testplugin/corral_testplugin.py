"""A small third-party plugin: records its hooks (and a clean-up after destroy) in a log file.

Config ``[testplugin]``: ``log`` (file to append to), ``fail_attach`` (raise in
the attach phase, to test that create rolls back), ``bind`` (a host directory
bound read-only at ``/testplugin`` in every container: a mount planned after
the built-in plugins prepared), ``tmpfs_root`` (replace the planned root mount,
which a plugin prepared after isolation may not do).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from supervisor.hookspecs import hookimpl

settings: dict[str, Any] = {}


def _note(line: str) -> None:
    if "log" not in settings:
        return  # installed, but this daemon was not configured for it
    with open(settings["log"], "a") as f:
        f.write(line + "\n")


@hookimpl
def corral_configure(config: Any) -> None:
    settings.update(config.section("testplugin"))


@hookimpl
def corral_create_options() -> dict[str, Any]:
    return {"testplugin_note": str}


@hookimpl
def corral_container_prepare(container: Any, plan: Any, restoring: bool) -> Any:
    @asynccontextmanager
    async def resource() -> AsyncIterator[None]:
        _note(f"acquire {container.handle} restoring={restoring}")
        from supervisor.sandbox import Mount

        if "bind" in settings:
            plan.mounts.append(
                Mount("none", settings["bind"], "/testplugin", ("bind", "ro", "mkdir"))
            )
        if settings.get("tmpfs_root"):
            plan.root_mount = Mount("tmpfs", "tmpfs", "/")
        try:
            yield
        finally:
            _note(f"release {container.handle} detaching={container.detaching}")
            if not container.detaching:
                handle = container.handle
                container.after_destroy(lambda: _note(f"after destroy {handle}"))

    return resource()


@hookimpl
def corral_container_attach(container: Any, restoring: bool) -> Any:
    @asynccontextmanager
    async def attached() -> AsyncIterator[None]:
        if settings.get("fail_attach"):
            raise RuntimeError("testplugin refuses to attach")
        _note(f"attach {container.handle} pid={container.sandbox.pid}")
        yield

    return attached()


@hookimpl
def corral_container_info(container: Any) -> dict[str, Any]:
    return {"testplugin": container.options.get("testplugin_note", "present")}


async def _hello(request: Any, *args: Any) -> str:
    return f"hello {' '.join(map(str, args))}".strip()


@hookimpl
def corral_commands() -> dict[str, Any]:
    return {"testplugin-hello": _hello}
