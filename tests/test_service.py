"""corrald as a systemd service: the unit file, the readiness protocol (``sd_notify``)
and the README's ``jq`` commands that read the daemon's log."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import tempfile
import threading
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from supervisor import config as config_module
from supervisor import sdnotify
from tests.conftest import REPO, Daemon

UNIT = REPO / "etc" / "corrald.service"
INSTALL = REPO / "scripts" / "install.sh"

# -- the unit ---------------------------------------------------------------------------------


def unit_settings(text: str) -> dict[str, dict[str, list[str]]]:
    """Each section's settings: key -> its values in order (a key may be given again)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
        else:
            key, _, value = line.partition("=")
            current.setdefault(key.strip(), []).append(value.strip())
    return sections


def exec_start() -> list[str]:
    return shlex.split(unit_settings(UNIT.read_text())["Service"]["ExecStart"][0])


def test_the_unit_keeps_the_containers_and_reports_readiness() -> None:
    unit = unit_settings(UNIT.read_text())
    service = unit["Service"]
    # systemctl stop/restart signal the daemon alone, with SIGTERM: it detaches its containers.
    assert service["KillMode"] == ["process"]
    assert service.get("KillSignal", ["SIGTERM"]) == ["SIGTERM"]
    assert service["Delegate"] == ["yes"]
    # A container's OOM kill must not stop the service.
    assert service["OOMPolicy"] == ["continue"]
    assert service["Type"] == ["notify"]
    assert "NotifyAccess" not in service  # "main": corrald itself sends READY=1
    # The directory of the default socket, made by systemd and kept across restarts.
    socket_dir = config_module.DaemonSection().socket.parent
    assert [f"/run/{d}" for d in service["RuntimeDirectory"]] == [str(socket_dir)]
    assert service["RuntimeDirectoryPreserve"] == ["yes"]
    assert unit["Install"]["WantedBy"] == ["multi-user.target"]


def test_the_unit_starts_the_daemon_install_sh_installs() -> None:
    binary, *args = exec_start()
    assert args == ["--config", str(config_module.DEFAULT_PATH)]
    script = INSTALL.read_text()
    assert f'ln -sf "$VENV/bin/corrald" {binary}\n' in script
    assert "UNIT=/etc/systemd/system/corrald.service\n" in script
    assert 'install -m 0644 "$REPO/etc/corrald.service" "$UNIT"' in script


@pytest.mark.skipif(os.geteuid() != 0, reason="a mount namespace needs root")
@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_systemd_analyze_verifies_the_unit() -> None:
    binary = Path(exec_start()[0])
    if not binary.exists():
        pytest.skip(f"{binary} is not installed (scripts/install.sh): verify checks ExecStart's")
    # verify runs a test system manager, which touches /run/systemd/systemd-units-load (to
    # date its last load of units): it gets a /run of its own (any host has one to mount on),
    # which goes with it.
    result = subprocess.run(
        [
            "unshare",
            "--mount",
            "sh",
            "-c",
            'mount -t tmpfs -o mode=0755 corral-verify /run && exec systemd-analyze verify "$0"',
            str(UNIT),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    # Warnings (an unknown key, a value it cannot parse) leave the status 0: read them too.
    # Lines about other units (those it loads for After= and WantedBy=) are the host's business.
    about_ours = [line for line in result.stderr.splitlines() if UNIT.name in line]
    assert result.returncode == 0 and not about_ours, result.stderr


# -- readiness ---------------------------------------------------------------------------------


def test_nothing_is_sent_without_a_service_manager(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(sdnotify.ENV, raising=False)
    assert not sdnotify.notify("READY=1")
    monkeypatch.setenv(sdnotify.ENV, "")
    assert not sdnotify.notify("READY=1")


def test_an_unusable_address_is_no_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(sdnotify.ENV, "vsock:2:1234")  # not for a host daemon
    assert not sdnotify.notify("READY=1")
    monkeypatch.setenv(sdnotify.ENV, str(tmp_path / "nobody"))
    assert not sdnotify.notify("READY=1")


@pytest.mark.parametrize("namespace", ["path", "abstract"])
def test_ready_once_the_socket_answers_then_stopping_on_sigterm(
    artifacts: tuple[Path, Path], namespace: str
) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="crl-", dir="/tmp"))
    manager = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    if namespace == "path":
        address = str(workdir / "notify.sock")
        manager.bind(address)
    else:
        address = f"@corral-test-notify-{workdir.name}"
        manager.bind("\0" + address[1:])
    d = Daemon(*artifacts, env={sdnotify.ENV: address}, workdir=workdir)
    seen: list[Any] = []

    def service_manager() -> None:
        """Receive the first datagram and at once ask the daemon for a pong."""
        try:
            message = manager.recv(4096)
        except OSError as exc:
            seen.append(exc)
            return
        try:
            with d.client(timeout=5) as c:
                answer: Any = c.ping()
        except OSError as exc:  # READY=1 came before the socket listened
            answer = exc
        seen.append((message, answer))

    try:
        manager.settimeout(30)
        receiver = threading.Thread(target=service_manager)
        receiver.start()
        d.start()
        receiver.join(30)
        assert seen == [(b"READY=1", "pong")]
        manager.settimeout(0)
        with pytest.raises(BlockingIOError):
            manager.recv(4096)  # READY=1 once, and nothing else while it serves
        assert d.terminate() == 0
        manager.settimeout(5)
        assert manager.recv(4096) == b"STOPPING=1"
    finally:
        manager.close()
        d.close()


# -- the log --------------------------------------------------------------------------------

#: In README.md's commands: the log of a system daemon, and an example handle.
README_LOG = "/var/log/corral/corrald.log"
README_HANDLE = "3f9c0a1b2c4d"
#: A POSIX time zone three hours east of UTC ("CRL"), which needs no tzdata.
TZ, TZ_OFFSET = "CRL-3", timedelta(hours=3)


def readme_log_commands() -> dict[str, str]:
    """The commands of README.md's "The daemon log" block, each under its comment line."""
    text = (REPO / "README.md").read_text()
    section = re.search(r"^## The daemon log\n(.*?)^## ", text, flags=re.M | re.S)
    assert section, "README.md has no section 'The daemon log'"
    block = re.search(r"^```sh\n(.*?)^```", section.group(1), flags=re.M | re.S)
    assert block, "'The daemon log' in README.md has no sh block"
    parts = re.split(r"^# (.*)\n", block.group(1), flags=re.M)
    assert parts[0] == "", "every command in the block comes after a comment"
    return dict(zip(parts[1::2], parts[2::2], strict=True))


def readable(record: dict[str, Any], *known: str) -> tuple[str, dict[str, Any]]:
    """What the commands print for *record*: the start of its line (time in TZ, level,
    event) and the rest of its fields but *known*, as the JSON object the line ends with."""
    stamp = record["timestamp"]
    local = datetime.fromisoformat(stamp) + TZ_OFFSET
    start = f"{local:%Y-%m-%d %H:%M:%S}{stamp[19:23]} {record['level']} {record['event']} "
    rest = {k: v for k, v in record.items() if k not in {"timestamp", "level", "event", *known}}
    return start, rest


def assert_prints(output: str, records: list[dict[str, Any]], *known: str) -> None:
    lines = output.splitlines()
    assert len(lines) == len(records), output
    for line, record in zip(lines, records, strict=True):
        start, rest = readable(record, *known)
        assert line.startswith(start), (line, record)
        assert json.loads(line[len(start) :]) == rest, (line, record)


@pytest.mark.skipif(shutil.which("jq") is None, reason="jq not installed (scripts/install.sh)")
def test_the_readme_jq_commands_read_a_real_daemon_log(artifacts: tuple[Path, Path]) -> None:
    # A job over the output cap: the daemon logs warnings for its container.
    d = Daemon(*artifacts, {"containers": {"output_limit": 4096}}).start()
    try:
        with d.client() as c:
            noisy = c.create()
            quiet = c.create()
            assert c.run(noisy, "yes")[0] == 128 + 9
            assert c.run(quiet, "echo hi")[0] == 0
            c.destroy(noisy)
            c.destroy(quiet)
        assert d.terminate() == 0  # every line written
        records = [json.loads(line) for line in d.log.read_text().splitlines()]

        commands = readme_log_commands()
        assert len(commands) == 2, commands
        errors, one_container = commands.values()
        assert README_LOG in errors and README_LOG in one_container
        assert README_HANDLE in one_container

        def run(command: str) -> str:
            command = command.replace(README_LOG, shlex.quote(str(d.log)))
            command = command.replace(README_HANDLE, noisy)
            result = subprocess.run(
                ["bash", "-c", command],
                capture_output=True,
                text=True,
                timeout=30,
                env={"PATH": "/usr/bin:/bin", "TZ": TZ},
            )
            assert result.returncode == 0 and not result.stderr, result.stderr
            return result.stdout

        bad = [r for r in records if r["level"] in ("error", "warning")]
        assert {"job output over limit", "container event"} <= {
            r["event"] for r in bad if r.get("handle") == noisy
        }
        assert_prints(run(errors), bad)

        mine = [r for r in records if r.get("handle") == noisy]
        assert {"job output over limit", "container destroyed"} <= {r["event"] for r in mine}
        assert_prints(run(one_container), mine, "handle")
    finally:
        d.close()
