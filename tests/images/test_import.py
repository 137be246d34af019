"""Images imported from OCI layouts and ``docker save`` archives, and containers made of them."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import pytest

from supervisor import errors
from supervisor.client import Client
from tests.conftest import Daemon
from tests.images.oci import ImageSpec, Layer, LayerBuilder, write_docker_save, write_layout
from tests.images.samples import CHANGES, CONFIG, HIDDEN


def _import(client: Client, path: Path, **opts: str) -> list[dict[str, object]]:
    lines: list[str] = []
    result = client.call_with_progress("image-import", str(path), opts, progress=lines.append)
    assert lines and lines[-1].startswith("layer ")
    return list(result)


@pytest.fixture(scope="module")
def multi_layer(
    image_daemon: Daemon, busybox_tar: bytes, tmp_path_factory: pytest.TempPathFactory
) -> str:
    """The multi-layer test image, imported from an OCI layout; its name."""
    layout = write_layout(
        tmp_path_factory.mktemp("layout") / "oci",
        {"v1": ImageSpec([Layer(busybox_tar), Layer(HIDDEN, "zstd"), Layer(CHANGES)], CONFIG)},
    )
    with image_daemon.client() as client:
        (image,) = _import(client, layout, name="corral.test/multi")
    assert image["names"] == ["corral.test/multi:v1"]
    assert image["layers"] == 3
    return "corral.test/multi:v1"


def test_container_sees_exactly_the_image_files(images_client: Client, multi_layer: str) -> None:
    handle = images_client.create({"image": multi_layer})
    try:
        status, out, err = images_client.run(
            handle,
            "test -e /etc/hostname && echo hostname-visible; ls /opt; cat /srv/file; "
            "test -x /bin/busybox && echo busybox",
            user="root",
        )
        assert (status, err) == (0, "")
        assert out.split("\n") == ["kept", "srv", "busybox", ""]
    finally:
        images_client.destroy(handle)


def test_jobs_get_the_image_env_dir_and_user(images_client: Client, multi_layer: str) -> None:
    handle = images_client.create({"image": multi_layer, "env": {"LEVEL": "create"}})
    try:
        script = 'echo "$GREETING $LEVEL $PWD $(id -un)"'
        assert images_client.run(handle, script)[1] == "from-image create /srv nobody\n"
        out = images_client.run(handle, script, env={"GREETING": "job"}, dir="/", user="root")[1]
        assert out == "job create / root\n"
    finally:
        images_client.destroy(handle)


def test_containers_share_the_layers(
    image_daemon: Daemon, images_client: Client, multi_layer: str
) -> None:
    handles = [images_client.create({"image": multi_layer}) for _ in range(2)]
    try:
        images_client.run(handles[0], "echo private > /opt/kept", user="root")
        assert images_client.run(handles[1], "cat /opt/kept")[1] == "from layer 2\n"
        layers = image_daemon.depot / ".images" / "layers"
        assert len(list(layers.iterdir())) >= 3
        listed = {i["names"][0]: i for i in images_client.call("image-list") if i["names"]}
        assert sorted(listed[multi_layer]["containers"]) == sorted(handles)
        with pytest.raises(errors.InvalidState, match="used by container"):
            images_client.call("image-remove", multi_layer)
    finally:
        for handle in handles:
            images_client.destroy(handle)
    assert images_client.call("image-inspect", multi_layer)["containers"] == []


def test_a_forced_remove_leaves_the_layers_to_the_containers_until_destroyed(
    image_daemon: Daemon, images_client: Client, busybox_tar: bytes, tmp_path: Path
) -> None:
    extra = LayerBuilder().file("forced", b"still here\n").bytes()
    archive = write_docker_save(
        tmp_path / "forced.tar",
        "corral.test/forced:1",
        ImageSpec([Layer(busybox_tar, "none"), Layer(extra, "none")]),
    )
    (image,) = _import(images_client, archive)
    diff_id = images_client.call("image-inspect", image["id"])["layers"][1]["diff_id"]
    layer = image_daemon.depot / ".images" / "layers" / diff_id.split(":")[1]
    handle = images_client.create({"image": "corral.test/forced:1"})
    try:
        removed = images_client.call("image-remove", "corral.test/forced:1", {"force": True})
        assert removed == {"untagged": ["corral.test/forced:1"], "deleted": image["id"]}
        images_client.call("image-prune")
        assert layer.is_dir()  # the container still stacks it
        assert images_client.run(handle, "cat /forced")[1] == "still here\n"
    finally:
        images_client.destroy(handle)
    assert images_client.call("image-prune")["layers"] >= 1
    assert not layer.exists()


def test_docker_save_archive_then_remove_and_prune(
    image_daemon: Daemon, images_client: Client, busybox_tar: bytes, tmp_path: Path
) -> None:
    extra = LayerBuilder().file("saved", b"from docker save\n").bytes()
    archive = write_docker_save(
        tmp_path / "saved.tar",
        "corral.test/saved:1",
        ImageSpec([Layer(busybox_tar, "none"), Layer(extra, "none")], {"Env": ["A=b"]}),
    )
    (image,) = _import(images_client, archive)
    assert image["names"] == ["corral.test/saved:1"]
    handle = images_client.create({"image": "corral.test/saved:1"})
    try:
        assert images_client.run(handle, "cat /saved; echo $A")[1] == "from docker save\nb\n"
    finally:
        images_client.destroy(handle)
    layers = image_daemon.depot / ".images" / "layers"
    extra_dir = (
        layers
        / json.loads(json.dumps(images_client.call("image-inspect", image["id"])))["layers"][1][
            "diff_id"
        ].split(":")[1]
    )
    assert extra_dir.is_dir()
    assert images_client.call("image-remove", "corral.test/saved:1")["deleted"] == image["id"]
    pruned = images_client.call("image-prune")
    assert pruned["layers"] >= 1
    assert not extra_dir.exists()
    with pytest.raises(errors.InvalidRequest, match="not in the store"):
        images_client.create({"image": "corral.test/saved:1"})


def test_multi_arch_index_picks_this_machine(
    images_client: Client, busybox_tar: bytes, tmp_path: Path
) -> None:
    mine = ImageSpec([Layer(busybox_tar), Layer(LayerBuilder().file("arch", b"mine\n").bytes())])
    other = ImageSpec(
        [Layer(busybox_tar), Layer(LayerBuilder().file("arch", b"other\n").bytes())],
        architecture="s390x",
    )
    layout = write_layout(tmp_path / "oci", {"a": other, "b": mine}, index=True)
    (image,) = _import(images_client, layout, name="corral.test/multiarch")
    assert image["names"] == ["corral.test/multiarch:multi"]
    handle = images_client.create({"image": "corral.test/multiarch:multi"})
    try:
        assert images_client.run(handle, "cat /arch")[1] == "mine\n"
    finally:
        images_client.destroy(handle)


def test_hostile_archives_are_refused_and_leave_nothing(
    image_daemon: Daemon, images_client: Client, busybox_tar: bytes, tmp_path: Path
) -> None:
    layers = image_daemon.depot / ".images" / "layers"
    before = set(layers.iterdir())
    evil = LayerBuilder().symlink("etc2", "/etc").file("etc2/passwd", b"owned\n").bytes()
    cases = {
        "escape": (ImageSpec([Layer(evil)]), "goes through 'etc2'"),
        "dotdot": (
            ImageSpec([Layer(LayerBuilder().file("../x", b"").bytes())]),
            "leaves the layer",
        ),
    }
    for name, (spec, reason) in cases.items():
        layout = write_layout(tmp_path / name, {"t": spec})
        with pytest.raises(errors.InvalidRequest, match=reason) as info:
            images_client.call("image-import", str(layout))
        assert str(layout) in str(info.value)
    # A blob whose bytes do not match its digest.
    layout = write_layout(tmp_path / "tampered", {"t": ImageSpec([Layer(busybox_tar)])})
    blobs = sorted((layout / "blobs" / "sha256").iterdir(), key=lambda p: p.stat().st_size)
    biggest = blobs[-1]
    biggest.write_bytes(biggest.read_bytes()[:-10] + b"0123456789")
    with pytest.raises(errors.InvalidRequest, match="does not match"):
        images_client.call("image-import", str(layout))
    # No matching platform.
    layout = write_layout(
        tmp_path / "foreign",
        {"t": ImageSpec([Layer(busybox_tar)], architecture="s390x")},
        index=True,
    )
    with pytest.raises(errors.InvalidRequest, match="no manifest for linux/"):
        images_client.call("image-import", str(layout))
    with pytest.raises(errors.InvalidRequest, match="neither a docker save"):
        images_client.call("image-import", str(tmp_path))
    assert set(layers.iterdir()) == before
    assert list((image_daemon.depot / ".images" / "tmp").iterdir()) == []
    assert images_client.ping() == "pong"


def test_an_unusable_path_is_refused_naming_it(images_client: Client, tmp_path: Path) -> None:
    (tmp_path / "loop").symlink_to("loop")
    cases = {
        str(tmp_path / "absent"): "No such file or directory",
        str(tmp_path / ("n" * 300)): "File name too long",
        str(tmp_path / "loop"): "Too many levels of symbolic links",
        "/dev/null": "neither a file nor a directory",
        f"{tmp_path}/a\0b": "contains a NUL byte",
    }
    for path, reason in cases.items():
        with pytest.raises(errors.InvalidRequest, match=reason) as info:
            images_client.call("image-import", path)
        assert path in str(info.value) or repr(path) in str(info.value)


def test_image_option_is_checked(images_client: Client, multi_layer: str) -> None:
    with pytest.raises(errors.InvalidRequest, match="not in the store"):
        images_client.create({"image": "corral.test/absent:1"})
    with pytest.raises(errors.InvalidRequest, match="image: "):
        images_client.create({"image": "UPPER/Case"})
    with pytest.raises(errors.InvalidRequest, match="either image or rootfs"):
        images_client.create({"image": multi_layer, "rootfs": "/"})


def test_a_bad_name_in_an_archive_is_refused(
    images_client: Client, busybox_tar: bytes, tmp_path: Path
) -> None:
    archive = write_docker_save(tmp_path / "bad.tar", "Bad Name!", ImageSpec([Layer(busybox_tar)]))
    with pytest.raises(errors.InvalidRequest, match="a name in the archive"):
        images_client.call("image-import", str(archive))
    assert all("Bad" not in str(i["names"]) for i in images_client.call("image-list"))


def test_an_image_with_a_layer_twice(
    images_client: Client, busybox_tar: bytes, tmp_path: Path
) -> None:
    again = LayerBuilder().file("again", b"a\n").bytes()
    middle = LayerBuilder().file(".wh.again", b"").bytes()
    spec = ImageSpec([Layer(busybox_tar), Layer(again), Layer(middle), Layer(again)])
    layout = write_layout(tmp_path / "oci", {"1": spec})
    _import(images_client, layout, name="corral.test/twice")
    handle = images_client.create({"image": "corral.test/twice:1"})
    try:
        assert images_client.run(handle, "cat /again")[1] == "a\n"
    finally:
        images_client.destroy(handle)


def test_more_layers_than_overlayfs_takes_is_a_clear_error(
    images_client: Client, busybox_tar: bytes, tmp_path: Path
) -> None:
    layers = [Layer(busybox_tar)] + [
        Layer(LayerBuilder().file(f"f{i}", str(i).encode()).bytes()) for i in range(39)
    ]
    layout = write_layout(tmp_path / "oci", {"1": ImageSpec(layers)})
    _import(images_client, layout, name="corral.test/tall")
    with pytest.raises(errors.InvalidRequest, match="40 layers are more than overlayfs can stack"):
        images_client.create({"image": "corral.test/tall:1"})
    assert images_client.ping() == "pong"


@pytest.mark.parametrize(
    "config",
    [{"User": "nobody\0privileged=1"}, {"WorkingDir": "/\0privileged=1"}, {"Env": ["A=\0b"]}],
)
def test_an_image_config_smuggling_a_job_field_is_refused(
    images_client: Client, busybox_tar: bytes, tmp_path: Path, config: dict[str, object]
) -> None:
    layout = write_layout(tmp_path / "oci", {"1": ImageSpec([Layer(busybox_tar)], config)})
    with pytest.raises(errors.InvalidRequest, match="NUL|NAME=VALUE"):
        images_client.call("image-import", str(layout), {"name": "corral.test/smuggler"})


def _tar_of(directory: Path, path: Path) -> Path:
    with tarfile.open(path, "w") as tar:
        for child in sorted(directory.iterdir()):
            tar.add(child, arcname=child.name)
    return path


@pytest.mark.parametrize("form", ["oci-tar", "docker-25"])
def test_layout_in_a_tar_and_newer_docker_save(
    images_client: Client, busybox_tar: bytes, tmp_path: Path, form: str
) -> None:
    marker = LayerBuilder().file("form", form.encode()).bytes()
    layout = write_layout(tmp_path / "oci", {"1": ImageSpec([Layer(busybox_tar), Layer(marker)])})
    name = f"corral.test/{form}:1"
    if form == "docker-25":  # docker save since 25: an OCI layout plus manifest.json
        index = json.loads((layout / "index.json").read_text())
        blobs = layout / "blobs" / "sha256"
        manifest = json.loads((blobs / index["manifests"][0]["digest"].split(":")[1]).read_text())
        paths = [
            "blobs/sha256/" + d["digest"].split(":")[1]
            for d in [manifest["config"], *manifest["layers"]]
        ]
        entry = {"Config": paths[0], "RepoTags": [name], "Layers": paths[1:]}
        (layout / "manifest.json").write_text(json.dumps([entry]))
    archive = _tar_of(layout, tmp_path / "image.tar")
    (image,) = _import(images_client, archive, **({"name": name} if form == "oci-tar" else {}))
    assert image["names"] == [name]
    handle = images_client.create({"image": name})
    try:
        assert images_client.run(handle, "cat /form")[1] == form
    finally:
        images_client.destroy(handle)
