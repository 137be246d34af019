"""A job's image from a registry: the drivers hand the name to the daemon, whose images
plugin pulls it (Debian's docker-registry on loopback, pushed to by skopeo)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Daemon
from tests.executors.test_github import Runner as GithubRunner
from tests.executors.test_gitlab import Runner as GitlabRunner
from tests.images.oci import ImageSpec, Layer, LayerBuilder, tar_of_tree, write_layout
from tests.images.registry import REGISTRY_BIN, Registry, run_registry

pytestmark = pytest.mark.skipif(
    not REGISTRY_BIN.exists(), reason="needs Debian's docker-registry (scripts/install.sh)"
)


@pytest.fixture(scope="module")
def registry(
    tmp_path_factory: pytest.TempPathFactory, artifacts: tuple[Path, Path]
) -> Iterator[Registry]:
    work = tmp_path_factory.mktemp("registry")
    with run_registry(work / "registry") as reg:
        marked = LayerBuilder().file("from-registry", b"pulled\n").bytes()
        spec = ImageSpec([Layer(tar_of_tree(artifacts[1])), Layer(marked)])
        reg.push(write_layout(work / "job", {"1": spec}), "1", "ci/job:1")
        yield reg


@pytest.fixture(scope="module")
def pulling_daemon(artifacts: tuple[Path, Path], registry: Registry) -> Iterator[Daemon]:
    d = Daemon(*artifacts, tables={"images": {"plain_http": [registry.address]}}).start()
    yield d
    d.close()


def test_a_gitlab_job_runs_in_its_image_pulled_from_the_registry(
    pulling_daemon: Daemon, registry: Registry, tmp_path: Path, images: Path, gitlab_fast: Path
) -> None:
    image = f"{registry.address}/ci/job:1"
    runner = GitlabRunner(
        pulling_daemon,
        tmp_path,
        gitlab_fast,
        CUSTOM_ENV_CI_JOB_IMAGE=image,
        CORRAL_IMAGES=str(images),
    )
    prepared = runner.call("prepare")
    assert prepared.returncode == 0, prepared.stderr
    with pulling_daemon.client() as client:
        listed = client.call("image-list")
    assert any(image in i["names"] for i in listed)
    stage = runner.run("build_script", "cat /from-registry")
    assert (stage.returncode, stage.stdout) == (0, "pulled\n"), stage.stderr
    assert runner.call("cleanup").returncode == 0
    assert runner.fallbacks() == ["prepare"]  # only the pull goes through Python


def test_a_github_job_container_comes_from_the_registry(
    pulling_daemon: Daemon, registry: Registry, tmp_path: Path, images: Path
) -> None:
    runner = GithubRunner(pulling_daemon, tmp_path, images)
    prepared = runner.prepare(image=f"{registry.address}/ci/job:1")
    assert prepared.returncode == 0, prepared.stderr
    response = json.loads(next(runner.responses.glob("prepare_job-*")).read_text())
    assert response["isAlpine"] is False
    step = runner.step("cat /from-registry")
    assert (step.returncode, step.stdout) == (0, "pulled\n"), step.stderr
    assert runner.call("cleanup_job").returncode == 0
    with pulling_daemon.client() as client:
        assert runner.handle not in client.list()
