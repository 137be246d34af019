"""copy in / copy out through the daemon: rsync-like semantics, ownership, modes, errors."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from supervisor import errors
from supervisor.client import Client

CORRAL_UID = 10000


def _tree(root: Path) -> None:
    """A tree with a symlink, a hard-linked pair, and modes 0700/0644/4755."""
    (root / "sub").mkdir(parents=True)
    (root / "private").mkdir(mode=0o700)
    os.chmod(root / "private", 0o700)
    (root / "private" / "secret").write_text("s3cret\n")
    (root / "plain").write_text("plain\n")
    os.chmod(root / "plain", 0o644)
    (root / "tool").write_bytes(b"#!/bin/sh\necho tool\n")
    os.chmod(root / "tool", 0o4755)
    (root / "sub" / "big").write_bytes(os.urandom(3 * 1024 * 1024 + 17))
    os.link(root / "plain", root / "sub" / "hardlink")
    os.symlink("../plain", root / "sub" / "link")
    os.symlink("/etc/passwd", root / "abs-link")


def _describe(root: Path) -> dict[str, tuple[str, int, str | bytes]]:
    """Relative path -> (kind, permission bits, symlink target or content)."""
    found: dict[str, tuple[str, int, str | bytes]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            st = path.lstat()
            rel = str(path.relative_to(root))
            if stat.S_ISLNK(st.st_mode):
                found[rel] = ("link", 0, os.readlink(path))
            elif stat.S_ISDIR(st.st_mode):
                found[rel] = ("dir", stat.S_IMODE(st.st_mode), b"")
            else:
                found[rel] = ("file", stat.S_IMODE(st.st_mode), path.read_bytes())
    return found


def _owners(root: Path) -> set[tuple[int, int]]:
    owners = {(root.lstat().st_uid, root.lstat().st_gid)}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            st = (Path(dirpath) / name).lstat()
            owners.add((st.st_uid, st.st_gid))
    return owners


def test_tree_round_trip_keeps_modes_links_and_content(
    client: Client, container: str, tmp_path: Path
) -> None:
    src = tmp_path / "tree"
    _tree(src)
    assert client.call("copy", container, "in", str(src), "/tmp") == "ok"
    status, out, err = client.run(
        container,
        "cd /tmp/tree && stat -c '%n %a %u %g %h' plain tool private private/secret sub/hardlink "
        "&& readlink sub/link && readlink abs-link && sub/../tool",
    )
    assert status == 0, err
    lines = out.splitlines()
    assert lines[:5] == [
        f"plain 644 {CORRAL_UID} {CORRAL_UID} 1",  # hard links materialized: one link each
        f"tool 4755 {CORRAL_UID} {CORRAL_UID} 1",
        f"private 700 {CORRAL_UID} {CORRAL_UID} 2",
        f"private/secret 644 {CORRAL_UID} {CORRAL_UID} 1",
        f"sub/hardlink 644 {CORRAL_UID} {CORRAL_UID} 1",
    ]
    assert lines[5:] == ["../plain", "/etc/passwd", "tool"]

    out_dir = tmp_path / "out"
    assert (
        client.call("copy", container, "out", "/tmp/tree", str(out_dir), "nobody:nogroup") == "ok"
    )
    assert _describe(out_dir / "tree") == _describe(src)
    nobody = (65534, 65534)
    assert _owners(out_dir / "tree") == {nobody}
    assert (out_dir / "tree" / "plain").stat().st_nlink == 1


def test_trailing_slash_copies_contents(client: Client, container: str, tmp_path: Path) -> None:
    src = tmp_path / "tree"
    _tree(src)
    client.call("copy", container, "in", f"{src}/", "/tmp/contents")
    status, out, _ = client.run(container, "ls -A /tmp/contents | sort | tr '\\n' ' '")
    assert out.split() == sorted(["abs-link", "plain", "private", "sub", "tool"])
    client.call("copy", container, "out", "/tmp/contents/", str(tmp_path / "back"))
    described = _describe(tmp_path / "back")
    # without OWNER everything is root's, and the setuid bit is not kept for root
    assert _owners(tmp_path / "back") == {(0, 0)}
    assert described["tool"][1] == 0o755
    assert {k: v for k, v in described.items() if k != "tool"} == {
        k: v for k, v in _describe(src).items() if k != "tool"
    }


def test_single_file_into_dir_or_as_name(client: Client, container: str, tmp_path: Path) -> None:
    f = tmp_path / "one.txt"
    f.write_text("one\n")
    client.call("copy", container, "in", str(f), "/tmp")
    client.call("copy", container, "in", str(f), "/tmp/renamed.txt")
    assert client.run(container, "cat /tmp/one.txt /tmp/renamed.txt")[1] == "one\none\n"
    client.call("copy", container, "out", "/tmp/renamed.txt", str(tmp_path / "back.txt"))
    assert (tmp_path / "back.txt").read_text() == "one\n"
    # an existing file is replaced, a symlink in the way too (never written through)
    client.run(container, "echo orig > /tmp/target && ln -s /tmp/target /tmp/victim")
    client.call("copy", container, "in", str(f), "/tmp/victim")
    status, out, _ = client.run(container, "test -L /tmp/victim || cat /tmp/victim /tmp/target")
    assert out == "one\norig\n"


def test_copy_out_of_a_stopped_container(client: Client, tmp_path: Path) -> None:
    handle = client.create()
    try:
        client.run(handle, "echo kept > /tmp/kept")
        client.stop(handle, kill=True)
        assert client.info(handle)["state"] == "stopped"
        client.call("copy", handle, "out", "/tmp/kept", str(tmp_path / "kept"))
        assert (tmp_path / "kept").read_text() == "kept\n"
        client.call("copy", handle, "in", str(tmp_path / "kept"), "/tmp/again")
        client.call("copy", handle, "out", "/tmp/again", str(tmp_path / "again"))
        assert (tmp_path / "again").read_text() == "kept\n"
    finally:
        client.destroy(handle)


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (("sideways", "/a", "/b"), "'sideways'"),
        (("in", "/nonexistent-src-dir/x", "/tmp"), "/nonexistent-src-dir/x"),
        (("out", "/no/such/thing", "/tmp/x"), "/no/such/thing"),
        (("in", "relative/src", "/tmp"), "'relative/src'"),
        (("in", "/etc/hostname", "tmp/rel"), "'tmp/rel'"),
        (("out", "/etc/passwd", "rel/dst"), "'rel/dst'"),
        (("out", "/etc/../etc/passwd", "/tmp/x"), "'/etc/../etc/passwd'"),
        (("out", "/etc/passwd", "/tmp/x", "no-such-user-xyz:root"), "no-such-user-xyz"),
        (("in", "/etc/hostname", "/tmp/x", "root:root"), "OWNER"),
    ],
)
def test_bad_requests_name_the_path(
    client: Client, container: str, args: tuple[str, ...], named: str
) -> None:
    with pytest.raises(errors.InvalidRequest) as info:
        client.call("copy", container, *args)
    assert named in str(info.value)
    assert container in str(info.value) or "copy" in str(info.value)


def test_unknown_handle(client: Client) -> None:
    with pytest.raises(errors.UnknownHandle):
        client.call("copy", "nope-handle", "in", "/etc/hostname", "/tmp")
