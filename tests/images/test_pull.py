"""Pulls from a real registry on loopback (Debian's docker-registry), pushed to by skopeo."""

from __future__ import annotations

import base64
import http.server
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from supervisor import errors
from supervisor.client import Client
from tests.conftest import Daemon, wait_until
from tests.images.oci import ImageSpec, Layer, LayerBuilder, write_big_layout, write_layout
from tests.images.registry import (
    PASSWORD,
    REGISTRY_BIN,
    USER,
    Registry,
    TokenIssuer,
    free_port,
    run_registry,
    self_signed_cert,
    token_endpoint,
)
from tests.images.samples import CHANGES, CONFIG, HIDDEN

pytestmark = pytest.mark.skipif(
    not REGISTRY_BIN.exists(), reason="needs Debian's docker-registry (scripts/install.sh)"
)
BIG_FILE = 200 << 20


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory, busybox_tar: bytes) -> Iterator[Registry]:
    """An open registry holding the test images."""
    work = tmp_path_factory.mktemp("registry")
    with run_registry(work / "registry") as reg:
        single = write_layout(work / "single", {"1": ImageSpec([Layer(busybox_tar)])})
        reg.push(single, "1", "corral/single:1")
        docker = ImageSpec(
            [Layer(busybox_tar), Layer(LayerBuilder().file("v2s2", b"v2s2\n").bytes())]
        )
        reg.push(write_layout(work / "docker", {"1": docker}), "1", "corral/docker:1", docker=True)
        multi = ImageSpec([Layer(busybox_tar), Layer(HIDDEN, "zstd"), Layer(CHANGES)], CONFIG)
        reg.push(write_layout(work / "multi", {"v1": multi}), "v1", "corral/multi:v1")
        mine = ImageSpec(
            [Layer(busybox_tar), Layer(LayerBuilder().file("arch", b"mine\n").bytes())]
        )
        other = ImageSpec(
            [Layer(busybox_tar), Layer(LayerBuilder().file("arch", b"other\n").bytes())],
            architecture="s390x",
        )
        arches = write_layout(work / "arches", {"a": other, "b": mine}, index=True)
        reg.push(arches, "multi", "corral/arches:1", all_platforms=True)
        big, _ = write_big_layout(work / "big", busybox_tar, BIG_FILE)
        reg.push(big, "t", "corral/big:1")
        yield reg


@pytest.fixture(scope="module")
def token_registry(
    tmp_path_factory: pytest.TempPathFactory, busybox_tar: bytes
) -> Iterator[Registry]:
    """A registry behind token auth: only :data:`USER` gets tokens."""
    work = tmp_path_factory.mktemp("token-registry")
    issuer = TokenIssuer(work)
    with (
        token_endpoint(issuer) as realm,
        run_registry(work / "registry", realm, issuer.cert) as reg,
    ):
        layout = write_layout(
            work / "private",
            {
                "1": ImageSpec(
                    [Layer(busybox_tar), Layer(LayerBuilder().file("secret", b"s\n").bytes())]
                )
            },
        )
        reg.push(layout, "1", "corral/private:1")
        yield reg


def _daemon(
    artifacts: tuple[Path, Path], plain_http: list[str], credentials: Path | None
) -> Daemon:
    images: dict[str, object] = {"plain_http": plain_http}
    if credentials is not None:
        images["credentials"] = credentials
    return Daemon(*artifacts, tables={"images": images}).start()


@pytest.fixture(scope="module")
def pull_daemon(
    artifacts: tuple[Path, Path],
    registry: Registry,
    token_registry: Registry,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Daemon]:
    credentials = tmp_path_factory.mktemp("creds") / "config.json"
    auth = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    credentials.write_text(json.dumps({"auths": {token_registry.address: {"auth": auth}}}))
    d = _daemon(artifacts, [registry.address, token_registry.address], credentials)
    yield d
    d.close()


@pytest.fixture
def client(pull_daemon: Daemon) -> Iterator[Client]:
    with pull_daemon.client() as c:
        yield c


def _pull(client: Client, ref: str) -> tuple[dict[str, object], list[str]]:
    lines: list[str] = []
    return client.call_with_progress("image-pull", ref, progress=lines.append), lines


def test_pull_single_layer_with_progress(client: Client, registry: Registry) -> None:
    image, lines = _pull(client, f"{registry.address}/corral/single:1")
    assert image["names"] == [f"{registry.address}/corral/single:1"]
    assert lines[-1].startswith("layer 1/1 sha256:") and lines[-1].endswith("bytes)")
    handle = client.create({"image": f"{registry.address}/corral/single:1"})
    try:
        assert client.run(handle, "busybox true && echo ok")[1] == "ok\n"
    finally:
        client.destroy(handle)


def test_docker_schema2_manifest(client: Client, registry: Registry) -> None:
    ref = f"{registry.address}/corral/docker:1"
    image, _ = _pull(client, ref)
    manifest = client.call("image-inspect", ref)["manifest"]
    blob = manifest.split(":")[1]
    stored = json.loads(
        next(registry.storage.glob(f"**/blobs/sha256/{blob[:2]}/{blob}/data")).read_bytes()
    )
    assert stored["mediaType"] == "application/vnd.docker.distribution.manifest.v2+json"
    handle = client.create({"image": ref})
    try:
        assert client.run(handle, "cat /v2s2")[1] == "v2s2\n"
    finally:
        client.destroy(handle)


def test_tls_registry_with_an_extra_ca(
    artifacts: tuple[Path, Path], busybox_tar: bytes, tmp_path: Path
) -> None:
    cert, key = self_signed_cert(tmp_path, "corral-test-registry", ip="127.0.0.1")
    with run_registry(tmp_path / "registry", tls=(cert, key)) as reg:
        layout = write_layout(tmp_path / "oci", {"1": ImageSpec([Layer(busybox_tar)])})
        ref = reg.push(layout, "1", "corral/tls:1")
        untrusting = _daemon(artifacts, [], None)
        try:
            with (
                untrusting.client() as c,
                pytest.raises(errors.InvalidRequest, match="CERTIFICATE_VERIFY_FAILED"),
            ):
                c.call("image-pull", ref)
        finally:
            untrusting.close()
        d = Daemon(*artifacts, tables={"images": {"ca_files": {reg.address: cert}}}).start()
        try:
            with d.client() as c:
                assert c.call("image-pull", ref)["names"] == [ref]
        finally:
            d.close()


def test_basic_auth_from_the_credentials_file(
    artifacts: tuple[Path, Path], busybox_tar: bytes, tmp_path: Path
) -> None:
    with run_registry(tmp_path / "registry", basic_auth=True) as reg:
        layout = write_layout(tmp_path / "oci", {"1": ImageSpec([Layer(busybox_tar)])})
        ref = reg.push(layout, "1", "corral/basic:1")
        credentials = tmp_path / "config.json"
        credentials.write_text(
            json.dumps({"auths": {reg.address: {"username": USER, "password": PASSWORD}}})
        )
        for creds, outcome in ((None, "credentials file has none"), (credentials, None)):
            d = _daemon(artifacts, [reg.address], creds)
            try:
                with d.client() as c:
                    if outcome is None:
                        assert c.call("image-pull", ref)["names"] == [ref]
                    else:
                        with pytest.raises(errors.InvalidRequest, match=outcome):
                            c.call("image-pull", ref)
            finally:
                d.close()


def test_multi_layer_image_applies_whiteouts_and_opaque_dirs(
    client: Client, registry: Registry
) -> None:
    ref = f"{registry.address}/corral/multi:v1"
    image, _ = _pull(client, ref)
    assert image["layers"] == 3
    handle = client.create({"image": ref})
    try:
        out = client.run(
            handle, "ls /etc/hostname /opt; cat /srv/file; echo $GREETING; pwd", user="root"
        )[1]
        assert out == "/opt:\nkept\nsrv\nfrom-image\n/srv\n"
    finally:
        client.destroy(handle)


def test_multi_arch_index_picks_this_machine(client: Client, registry: Registry) -> None:
    ref = f"{registry.address}/corral/arches:1"
    image, _ = _pull(client, ref)
    handle = client.create({"image": ref})
    try:
        assert client.run(handle, "cat /arch")[1] == "mine\n"
    finally:
        client.destroy(handle)
    # By digest, the image pulled is found again without a name.
    pulled = client.call("image-inspect", image["id"])
    by_digest = f"{registry.address}/corral/arches@{pulled['manifest']}"
    assert _pull(client, by_digest)[0]["id"] == image["id"]


def test_create_pulls_an_absent_image_when_asked(client: Client, registry: Registry) -> None:
    ref = f"{registry.address}/corral/single:1"
    for image in client.call("image-list"):
        if ref in image["names"]:
            client.call("image-remove", ref)
    with pytest.raises(errors.InvalidRequest, match="not in the store"):
        client.create({"image": ref})
    handle = client.create({"image": ref, "image_pull": "missing"})
    try:
        assert client.run(handle, "echo pulled")[1] == "pulled\n"
    finally:
        client.destroy(handle)


def test_token_auth_with_credentials(client: Client, token_registry: Registry) -> None:
    ref = f"{token_registry.address}/corral/private:1"
    _pull(client, ref)
    handle = client.create({"image": ref})
    try:
        assert client.run(handle, "cat /secret")[1] == "s\n"
    finally:
        client.destroy(handle)


def test_token_auth_without_credentials_is_refused(
    artifacts: tuple[Path, Path], token_registry: Registry
) -> None:
    d = _daemon(artifacts, [token_registry.address], None)
    try:
        with d.client() as c:
            with pytest.raises(
                errors.InvalidRequest, match=r"corral/private:1: token service .* 401"
            ):
                c.call_with_progress("image-pull", f"{token_registry.address}/corral/private:1")
            assert c.call("image-list") == []
    finally:
        d.close()


def test_two_pulls_of_one_image_share_the_work(
    pull_daemon: Daemon, client: Client, registry: Registry
) -> None:
    ref = f"{registry.address}/corral/big:1"
    results: list[tuple[dict[str, object], list[str]]] = []

    def first() -> None:
        with pull_daemon.client() as c:
            results.append(_pull(c, ref))

    thread = threading.Thread(target=first)
    thread.start()
    wait_until(
        lambda: list((pull_daemon.depot / ".images" / "tmp").glob("layer.*")),
        timeout=120,
        what="the first pull unpacking",
    )
    second, lines = _pull(client, ref)
    thread.join()
    assert lines == [f"joining the pull of {ref} under way"]
    assert second["id"] == results[0][0]["id"]


class _Failing(http.server.BaseHTTPRequestHandler):
    """A registry that answers 500 to everything."""

    def do_GET(self) -> None:  # noqa: N802
        self.send_response(500)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def test_bad_registries_give_clear_errors_and_leave_nothing(
    artifacts: tuple[Path, Path], registry: Registry, tmp_path: Path
) -> None:
    failing = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Failing)
    threading.Thread(target=failing.serve_forever, daemon=True).start()
    failing_address = f"127.0.0.1:{failing.server_address[1]}"
    down = f"127.0.0.1:{free_port()}"
    d = _daemon(artifacts, [registry.address, failing_address, down], None)
    try:
        with d.client() as c:
            cases = {
                f"{registry.address}/corral/absent:1": "answered 404",
                f"{failing_address}/corral/x:1": "answered 500",
                f"{down}/corral/x:1": "is unreachable",
            }
            for ref, reason in cases.items():
                with pytest.raises(errors.InvalidRequest, match=reason) as info:
                    c.call_with_progress("image-pull", ref)
                assert f"image {ref}:" in str(info.value)
            # A blob whose bytes changed in the registry's storage.
            _pull(c, f"{registry.address}/corral/multi:v1")
            image = c.call("image-inspect", f"{registry.address}/corral/multi:v1")
            c.call("image-remove", image["id"])
            c.call("image-prune")
            blob = image["layers"][2]["blob"].split(":")[1]
            storage = next(registry.storage.glob(f"**/blobs/sha256/{blob[:2]}/{blob}/data"))
            original = storage.read_bytes()
            storage.write_bytes(original[:-4] + b"evil")
            try:
                with pytest.raises(errors.InvalidRequest, match="does not match"):
                    c.call_with_progress("image-pull", f"{registry.address}/corral/multi:v1")
            finally:
                storage.write_bytes(original)
            assert c.call("image-list") == []
            assert list((d.depot / ".images" / "tmp").iterdir()) == []
            assert c.ping() == "pong"
    finally:
        d.close()
        failing.shutdown()
        failing.server_close()


def _truncating_registry(blobs: dict[str, bytes], manifest: bytes) -> type:
    """A registry serving *manifest* as ``x:1`` and *blobs*, but stopping the last blob
    halfway through the Content-Length it announced."""

    class Truncating(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:  # noqa: N802
            if self.path == "/v2/corral/x/manifests/1":
                body, kind = manifest, "application/vnd.oci.image.manifest.v1+json"
            elif self.path.startswith("/v2/corral/x/blobs/"):
                body, kind = blobs[self.path.rsplit("/", 1)[1]], "application/octet-stream"
            else:
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(200)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            last = json.loads(manifest)["layers"][-1]["digest"]
            self.wfile.write(body[: len(body) // 2] if self.path.endswith(last) else body)
            self.wfile.flush()
            self.close_connection = True

        def log_message(self, *args: object) -> None:
            pass

    return Truncating


def test_truncated_download_leaves_nothing(
    artifacts: tuple[Path, Path], busybox_tar: bytes, tmp_path: Path
) -> None:
    layout = write_layout(tmp_path / "oci", {"1": ImageSpec([Layer(busybox_tar)])})
    blobs = {p.name: p.read_bytes() for p in (layout / "blobs" / "sha256").iterdir()}
    index = json.loads((layout / "index.json").read_text())
    manifest = blobs[index["manifests"][0]["digest"].split(":")[1]]
    blobs = {f"sha256:{name}": data for name, data in blobs.items()}
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), _truncating_registry(blobs, manifest)
    )
    threading.Thread(target=server.serve_forever, daemon=True).start()
    address = f"127.0.0.1:{server.server_address[1]}"
    d = _daemon(artifacts, [address], None)
    try:
        with d.client() as c:
            with pytest.raises(
                errors.InvalidRequest, match=f"image {address}/corral/x:1: layer 1/1 .*broke off"
            ):
                c.call("image-pull", f"{address}/corral/x:1")
            assert c.call("image-list") == []
            assert list((d.depot / ".images" / "layers").iterdir()) == []
            assert list((d.depot / ".images" / "tmp").iterdir()) == []
    finally:
        d.close()
        server.shutdown()
        server.server_close()


def test_login_is_not_sent_over_plain_http_for_an_https_registry(
    artifacts: tuple[Path, Path], tmp_path: Path
) -> None:
    cert, key = self_signed_cert(tmp_path, "corral-test-registry", ip="127.0.0.1")
    issuer = TokenIssuer(tmp_path)
    credentials = tmp_path / "config.json"
    with (
        token_endpoint(issuer) as realm,
        run_registry(tmp_path / "registry", realm, issuer.cert, tls=(cert, key)) as reg,
    ):
        auth = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
        credentials.write_text(json.dumps({"auths": {reg.address: {"auth": auth}}}))
        tables = {"images": {"ca_files": {reg.address: cert}, "credentials": credentials}}
        d = Daemon(*artifacts, tables=tables).start()
        try:
            with (
                d.client() as c,
                pytest.raises(errors.InvalidRequest, match="over plain HTTP; refused"),
            ):
                c.call("image-pull", f"{reg.address}/corral/any:1")
        finally:
            d.close()
