"""The plugin API through real daemons: a third-party plugin, the block list, rollback,
and a daemon that refuses to start with a broken plugin set."""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from supervisor import errors
from tests.conftest import NOTHING_LEFT, REPO, Daemon, leftovers

PLUGIN_DIR = REPO / "tests" / "plugins" / "corral_testplugin"


def entry_point_site(
    site: Path, name: str, target: str, modules: Path | None = None
) -> dict[str, str]:
    """Make *site* a directory where Python finds a distribution with one ``corral`` entry
    point (what ``pip install`` would leave), and return the environment that puts it
    (and *modules*) on the daemon's path: the system venv is not touched."""
    dist = site / f"corral_{name}-0.1.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: corral-{name}\nVersion: 0.1.0\n")
    (dist / "entry_points.txt").write_text(f"[corral]\n{name} = {target}\n")
    return {"PYTHONPATH": ":".join(str(p) for p in (site, modules) if p is not None)}


@pytest.fixture(scope="module")
def testplugin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """The environment under which daemons find the example plugin by its entry point."""
    site = tmp_path_factory.mktemp("site")
    yield entry_point_site(site, "testplugin", "corral_testplugin:RecordingPlugin", PLUGIN_DIR)


def _daemon(
    artifacts: tuple[Path, Path],
    env: dict[str, str],
    log: Path,
    extra: dict[str, Any] | None = None,
) -> Daemon:
    return Daemon(*artifacts, {"testplugin": {"log": str(log), **(extra or {})}}, env=env).start()


def test_third_party_hooks_run_on_create_and_destroy(
    testplugin: dict[str, str], artifacts: tuple[Path, Path], tmp_path: Path
) -> None:
    log = tmp_path / "hooks.log"
    d = _daemon(artifacts, testplugin, log)
    try:
        with d.client() as c:
            handle = c.create({"testplugin_note": "hi"})
            assert c.info(handle)["testplugin"] == "hi"
            assert c.call("testplugin-hello", "world") == "hello world"
            who = {"pid": os.getpid(), "uid": 0, "gid": 0, "groups": os.getgroups()}
            assert c.call("testplugin-whoami") == who
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
    testplugin: dict[str, str], artifacts: tuple[Path, Path], tmp_path: Path
) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "note").write_text("from the host\n")
    d = _daemon(artifacts, testplugin, tmp_path / "hooks.log", extra={"bind": str(shared)})
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
    testplugin: dict[str, str], artifacts: tuple[Path, Path], tmp_path: Path
) -> None:
    d = _daemon(artifacts, testplugin, tmp_path / "hooks.log", extra={"tmpfs_root": True})
    try:
        with d.client() as c:
            with pytest.raises(errors.CorralError, match="changed the root filesystem plan"):
                c.create()
            assert c.list() == []
        assert leftovers(d) == NOTHING_LEFT
    finally:
        d.close()


def test_blocked_plugin_is_not_loaded(
    testplugin: dict[str, str], artifacts: tuple[Path, Path], tmp_path: Path
) -> None:
    log = tmp_path / "hooks.log"
    d = _daemon(artifacts, {**testplugin, "CORRAL_BLOCK_PLUGINS": "testplugin"}, log)
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
    testplugin: dict[str, str], artifacts: tuple[Path, Path], tmp_path: Path
) -> None:
    log = tmp_path / "hooks.log"
    d = _daemon(artifacts, testplugin, log, extra={"fail_attach": True})
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
    testplugin: dict[str, str], artifacts: tuple[Path, Path], tmp_path: Path
) -> None:
    log = tmp_path / "hooks.log"
    d = _daemon(artifacts, testplugin, log)
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


def _refusal(daemon: Daemon) -> str:
    """The one error a daemon that refuses to start logs (it exits 1, with no traceback)."""
    with pytest.raises(RuntimeError, match="corrald exited 1"):
        daemon.start()
    text = daemon.log.read_text()
    errors = [line for line in text.splitlines() if '"level": "error"' in line]
    assert len(errors) == 1 and "Traceback" not in text, text
    assert '"event": "corrald cannot start"' in errors[0]
    return errors[0]


def test_a_daemon_without_its_launch_plugin_refuses_to_start(artifacts: tuple[Path, Path]) -> None:
    d = Daemon(*artifacts, env={"CORRAL_BLOCK_PLUGINS": "isolation"})
    try:
        line = _refusal(d)
        assert "exactly one plugin must implement corral_container_launch" in line
        assert "isolation" in line
    finally:
        d.close()


def test_a_plugin_that_fails_to_import_is_named_with_the_way_to_block_it(
    artifacts: tuple[Path, Path], tmp_path: Path
) -> None:
    env = entry_point_site(tmp_path / "site", "broken", "corral_no_such_module:Plugin")
    d = Daemon(*artifacts, env=env)
    try:
        line = _refusal(d)
        assert "plugin broken (corral_no_such_module:Plugin) failed to load" in line
        assert "CORRAL_BLOCK_PLUGINS=broken" in line
        d.env["CORRAL_BLOCK_PLUGINS"] = "broken"
        d.log.unlink()
        with d.start().client() as c:  # blocked, it is not even imported
            assert c.ping() == "pong"
    finally:
        d.close()


def test_two_plugins_with_the_same_claims_refuse_to_start(
    artifacts: tuple[Path, Path], tmp_path: Path, testplugin: dict[str, str]
) -> None:
    # The example plugin a second time, under another name: every claim clashes.
    env = entry_point_site(tmp_path / "site", "twin", "corral_testplugin:RecordingPlugin")
    env["PYTHONPATH"] = f"{env['PYTHONPATH']}:{testplugin['PYTHONPATH']}"
    d = Daemon(*artifacts, env=env)
    try:
        line = _refusal(d)
        assert re.search(
            r"is claimed by both plugin (testplugin|twin) and plugin (twin|testplugin);", line
        )
    finally:
        d.close()


def test_a_table_of_no_plugin_refuses_to_start(artifacts: tuple[Path, Path]) -> None:
    d = Daemon(*artifacts, {"nett": {"pool": "10.9.0.0/24"}})
    try:
        assert "[nett]: no plugin of that name is loaded" in _refusal(d)
    finally:
        d.close()
