"""The plugin API: documented hooks, a third-party plugin, the block list, rollback."""

from __future__ import annotations

import inspect
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from supervisor import errors, hookspecs
from tests.conftest import NOTHING_LEFT, REPO, Daemon, leftovers

PLUGIN_DIR = REPO / "tests" / "plugins" / "corral_testplugin"


def test_every_hook_is_documented() -> None:
    hooks = [
        f
        for name, f in inspect.getmembers(hookspecs, inspect.isfunction)
        if name.startswith("corral_")
    ]
    assert len(hooks) >= 8
    for hook in hooks:
        doc = inspect.getdoc(hook)
        assert doc, f"{hook.__name__} has no docstring"
        for param in inspect.signature(hook).parameters:
            assert f":param {param}:" in doc, f"{hook.__name__} does not document {param}"


def test_builtin_plugins_implement_only_known_hooks() -> None:
    from supervisor.config import Config
    from supervisor.plugins import make_plugin_manager

    pm = make_plugin_manager(Config())
    pm.check_pending()  # raises for an implementation without a spec
    names = [name for name, _ in pm.list_name_plugin()]
    assert names[:4] == ["fs", "isolation", "cgroups", "net"]


@pytest.fixture(scope="module")
def testplugin() -> Iterator[None]:
    pip = [sys.executable, "-m", "pip", "-q", "--disable-pip-version-check"]
    subprocess.run([*pip, "install", str(PLUGIN_DIR)], check=True)
    yield
    subprocess.run([*pip, "uninstall", "-y", "corral-testplugin"], check=True)


def _daemon(
    artifacts: tuple[Path, Path],
    log: Path,
    extra: dict[str, Any] | None = None,
    env: dict[str, str] | None = None,
) -> Daemon:
    return Daemon(*artifacts, {"testplugin": {"log": str(log), **(extra or {})}}, env=env).start()


def test_third_party_hooks_run_on_create_and_destroy(
    testplugin: None, artifacts: tuple[Path, Path], tmp_path: Path
) -> None:
    log = tmp_path / "hooks.log"
    d = _daemon(artifacts, log)
    try:
        with d.client() as c:
            handle = c.create({"testplugin_note": "hi"})
            assert c.info(handle)["testplugin"] == "hi"
            assert c.call("testplugin-hello", "world") == "hello world"
            c.destroy(handle)
        deadline = time.monotonic() + 5  # the clean-up runs after the reply
        while len(log.read_text().splitlines()) < 4 and time.monotonic() < deadline:
            time.sleep(0.02)
        lines = log.read_text().splitlines()
        assert lines[0] == f"acquire {handle} restoring=False"
        assert lines[1].startswith(f"attach {handle} pid=")
        assert lines[2] == f"release {handle} detaching=False"
        assert lines[3] == f"after destroy {handle}"
    finally:
        d.close()


def test_a_mount_planned_by_a_later_plugin_is_made(
    testplugin: None, artifacts: tuple[Path, Path], tmp_path: Path
) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "note").write_text("from the host\n")
    d = _daemon(artifacts, tmp_path / "hooks.log", extra={"bind": str(shared)})
    try:
        with d.client() as c:
            handle = c.create()
            # Planned after the launcher got the set-up: it comes with the cgroups.
            assert c.run(handle, "cat /testplugin/note") == [0, "from the host\n", ""]
            c.destroy(handle)
        assert leftovers(d) == NOTHING_LEFT
    finally:
        d.close()


def test_a_later_plugin_may_not_replace_the_root_mount(
    testplugin: None, artifacts: tuple[Path, Path], tmp_path: Path
) -> None:
    d = _daemon(artifacts, tmp_path / "hooks.log", extra={"tmpfs_root": True})
    try:
        with d.client() as c:
            with pytest.raises(errors.CorralError, match="changed the root filesystem plan"):
                c.create()
            assert c.list() == []
        assert leftovers(d) == NOTHING_LEFT
    finally:
        d.close()


def test_blocked_plugin_is_not_loaded(
    testplugin: None, artifacts: tuple[Path, Path], tmp_path: Path
) -> None:
    log = tmp_path / "hooks.log"
    d = _daemon(artifacts, log, env={"CORRAL_BLOCK_PLUGINS": "testplugin"})
    try:
        with d.client() as c:
            with pytest.raises(errors.InvalidRequest, match="testplugin_note"):
                c.create({"testplugin_note": "hi"})
            with pytest.raises(errors.UnknownCommand):
                c.call("testplugin-hello")
            c.destroy(c.create())
        assert not log.exists()
    finally:
        d.close()


def test_failure_half_way_through_create_rolls_back(
    testplugin: None, artifacts: tuple[Path, Path], tmp_path: Path
) -> None:
    log = tmp_path / "hooks.log"
    d = _daemon(artifacts, log, extra={"fail_attach": True})
    try:
        with d.client() as c:
            with pytest.raises(errors.CorralError, match="refuses to attach"):
                c.create({"handle": "doomed"})
            assert c.list() == []
            assert c.ping() == "pong"
        assert leftovers(d) == NOTHING_LEFT  # waits for the trash: the clean-ups ran before
        assert log.read_text().splitlines() == [
            "acquire doomed restoring=False",
            "release doomed detaching=False",
            "after destroy doomed",
        ]
    finally:
        d.close()


def test_detach_on_shutdown_and_readopt(
    testplugin: None, artifacts: tuple[Path, Path], tmp_path: Path
) -> None:
    log = tmp_path / "hooks.log"
    d = _daemon(artifacts, log)
    try:
        with d.client() as c:
            handle = c.create()
        d.terminate()
        d.start()
        with d.client() as c:
            c.destroy(handle)
        lines = [line for line in log.read_text().splitlines() if not line.startswith("attach")]
        assert lines[1:] == [
            f"release {handle} detaching=True",
            f"acquire {handle} restoring=True",
            f"release {handle} detaching=False",
        ]
    finally:
        d.close()
