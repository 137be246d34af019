"""Container paths never resolve on the host: symlinks made by the container stay inside it."""

from __future__ import annotations

import concurrent.futures
import os
import time
import uuid
from pathlib import Path

import pytest

from supervisor import errors
from supervisor.client import Client
from tests.conftest import Daemon, wait_for_output


def test_copy_out_through_a_symlink_to_root_reads_the_container_file(
    client: Client, container: str, tmp_path: Path
) -> None:
    script = "echo container-shadow > /etc/shadow && ln -s / /x"
    assert client.run(container, script, privileged=True)[0] == 0
    client.call("copy", container, "out", "/x/etc/shadow", str(tmp_path / "shadow"))
    assert (tmp_path / "shadow").read_text() == "container-shadow\n"
    # the link itself comes out as a link, not as the tree it points to
    client.call("copy", container, "out", "/x", str(tmp_path / "x"))
    assert os.readlink(tmp_path / "x") == "/"


def test_copy_in_through_a_symlink_to_etc_writes_the_container_etc(
    client: Client, container: str, tmp_path: Path
) -> None:
    name = f"corral-evil-{uuid.uuid4().hex[:8]}"
    (tmp_path / "payload").write_text("payload\n")
    client.run(container, "ln -s /etc /y && ln -s ../../../../../etc /tmp/up", privileged=True)
    client.call("copy", container, "in", str(tmp_path / "payload"), f"/y/{name}")
    client.call("copy", container, "in", str(tmp_path / "payload"), f"/tmp/up/{name}.2")
    assert not Path(f"/etc/{name}").exists()
    assert not Path(f"/etc/{name}.2").exists()
    status, out, _ = client.run(container, f"cat /etc/{name} /etc/{name}.2")
    assert (status, out) == (0, "payload\npayload\n")


def test_magic_links_are_not_followed(client: Client, container: str, tmp_path: Path) -> None:
    # /proc/1/root inside the container is the container's own root, but a magic
    # link is refused rather than trusted.
    with pytest.raises(errors.InvalidRequest):
        client.call("copy", container, "out", "/proc/1/root/etc/passwd", str(tmp_path / "p"))
    assert not (tmp_path / "p").exists()


RACE_SECONDS = 12
COPIES = 200


def test_symlink_flipping_during_200_copies_never_reaches_the_host(
    daemon: Daemon, client: Client, container: str, tmp_path: Path
) -> None:
    host_dir = Path(f"/tmp/corral-race-{uuid.uuid4().hex[:8]}")
    host_dir.mkdir()
    try:
        (host_dir / "secret").write_text("HOST\n")
        h = host_dir.name
        # d flips between a real directory and a symlink to "/" (which, followed
        # on the host, would lead to host_dir).
        script = (
            f"mkdir -p /tmp/{h} /tmp/race && echo container > /tmp/{h}/secret && cd /tmp/race && "
            f"end=$(( $(date +%s) + {RACE_SECONDS + 8} )); "
            f"while [ $(date +%s) -lt $end ]; do for i in 1 2 3 4 5 6 7 8 9 10; do "
            f"rm -rf d; mkdir -p d/tmp/{h}; echo container-dir > d/tmp/{h}/secret; "
            f"rm -rf d; ln -s / d; done; echo flipping; done"
        )
        job = client.spawn(container, script, privileged=True)
        wait_for_output(daemon, container, job, "flipping\n")
        payload = tmp_path / "payload"
        payload.write_text("payload\n")
        out_root = tmp_path / "out"
        out_root.mkdir()

        def one(i: int) -> str:
            with daemon.client() as c:
                try:
                    if i % 4 == 0:
                        c.call(
                            "copy", container, "in", str(payload), f"/tmp/race/d/tmp/{h}/new-{i}"
                        )
                    elif i % 4 == 1:
                        c.call("copy", container, "in", f"{tmp_path}/", f"/tmp/race/d/tmp/{h}/")
                    elif i % 4 == 2:
                        c.call(
                            "copy",
                            container,
                            "out",
                            f"/tmp/race/d/tmp/{h}/secret",
                            str(out_root / f"s{i}"),
                        )
                    else:
                        c.call("copy", container, "out", "/tmp/race", str(out_root / f"t{i}"))
                    return "ok"
                except errors.CorralError as exc:
                    assert container in exc.message
                    return type(exc).__name__

        deadline = time.monotonic() + 30
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            results = list(pool.map(one, range(COPIES)))
        assert time.monotonic() < deadline
        assert results.count("ok") > COPIES // 4
        assert sorted(p.name for p in host_dir.iterdir()) == ["secret"]
        assert (host_dir / "secret").read_text() == "HOST\n"
        for path in out_root.rglob("*"):
            if path.is_file() and not path.is_symlink():
                assert path.read_text() != "HOST\n", path
    finally:
        for path in sorted(host_dir.rglob("*"), reverse=True):
            path.unlink() if not path.is_dir() else path.rmdir()
        host_dir.rmdir()
