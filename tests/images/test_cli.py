"""The image commands of the ``corral`` CLI, against a real daemon."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from supervisor.cli import main
from tests.conftest import Daemon
from tests.images.oci import ImageSpec, Layer, LayerBuilder, write_layout


def test_import_list_inspect_run_remove_prune(
    image_daemon: Daemon, busybox_tar: bytes, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    socket = ["-s", str(image_daemon.socket)]
    layer = LayerBuilder().file("hello", b"hello from the image\n").bytes()
    spec = ImageSpec(
        [Layer(busybox_tar), Layer(layer)],
        {"Entrypoint": ["sh", "-c"], "Cmd": ["cat /hello; exit 3"], "Env": ["X=1"]},
    )
    layout = write_layout(tmp_path / "oci", {"1": spec})
    assert main([*socket, "image", "import", str(layout), "--name", "corral.test/cli"]) == 0
    out, err = capsys.readouterr()
    assert out.endswith(" corral.test/cli:1\n") and "layer 2/2" in err
    image_id = out.split()[0]

    assert main([*socket, "images", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [i["names"] for i in listed if i["id"] == image_id] == [["corral.test/cli:1"]]
    assert main([*socket, "images"]) == 0
    assert "corral.test/cli:1" in capsys.readouterr().out

    assert main([*socket, "image", "inspect", "corral.test/cli:1"]) == 0
    assert json.loads(capsys.readouterr().out)["config"]["Env"] == ["X=1"]

    assert main([*socket, "image", "run", "corral.test/cli:1"]) == 3
    assert capsys.readouterr().out == "hello from the image\n"
    assert main([*socket, "image", "run", "corral.test/cli:1", "echo $X args"]) == 0
    assert capsys.readouterr().out == "1 args\n"
    # Docker's `run IMAGE [-- CMD]`: its Entrypoint, then CMD or its Cmd.
    assert main([*socket, "run", "--rm", "corral.test/cli:1"]) == 3
    assert capsys.readouterr().out == "hello from the image\n"
    assert main([*socket, "run", "--rm", "corral.test/cli:1", "--", "echo $X args"]) == 0
    assert capsys.readouterr().out == "1 args\n"
    with image_daemon.client() as c:
        assert c.list() == []  # --rm: gone

    assert main([*socket, "rmi", "corral.test/cli:1"]) == 0
    assert capsys.readouterr().out == f"untagged corral.test/cli:1\ndeleted {image_id}\n"
    assert main([*socket, "image", "prune"]) == 0
    assert "layers" in capsys.readouterr().out
    assert main([*socket, "rmi", "corral.test/cli:1"]) == 1
    assert "invalid_request: image corral.test/cli:1: not in the store" in capsys.readouterr().err
