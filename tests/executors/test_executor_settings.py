"""The drivers' shared rules, without a daemon: image names as directories, settings, and
what the installation provides for the runners."""

from __future__ import annotations

import importlib
import tomllib
from pathlib import Path

import pytest

from executors.common import DriverError, Settings, rootfs_for_image
from tests.conftest import REPO


@pytest.mark.parametrize(
    ("image", "directory"),
    [
        ("debian:12", "debian/12"),
        ("debian", "debian/latest"),
        ("ghcr.io/team/app", "ghcr.io/team/app/latest"),
        ("registry.example.com/team/app:1.2-slim", "registry.example.com/team/app/1.2-slim"),
    ],
)
def test_an_image_is_the_directory_of_its_name_and_tag(
    tmp_path: Path, image: str, directory: str
) -> None:
    (tmp_path / directory / "bin").mkdir(parents=True)
    assert rootfs_for_image(image, tmp_path) == tmp_path / directory


def test_no_image_is_the_daemons_default_rootfs(tmp_path: Path) -> None:
    assert rootfs_for_image(None, tmp_path) is None
    assert rootfs_for_image("", tmp_path) is None
    assert "rootfs" not in Settings().create_config("h", None)


@pytest.mark.parametrize(
    "image", ["localhost:5000/app:1", "app@sha256:abcd", "../x", "a/../b", "/abs", "a//b"]
)
def test_names_that_are_not_plain_references_are_refused(tmp_path: Path, image: str) -> None:
    with pytest.raises(DriverError, match="not a name this driver maps"):
        rootfs_for_image(image, tmp_path)


def test_settings_come_from_the_environment_and_bad_ones_are_named() -> None:
    settings = Settings.from_env(
        {
            "CORRAL_GRACE_TIME": "60",
            "CORRAL_LIMITS": '{"mem": 268435456}',
            "CORRAL_DISK_SIZE_MB": "64",
        }
    )
    config = settings.create_config("gitlab-1", None)
    assert config == {
        "handle": "gitlab-1",
        "grace_time": 60.0,
        "limits": {"mem": 268435456},
        "disk_size_mb": 64,
    }
    for env, message in [
        ({"CORRAL_GRACE_TIME": "soon"}, "CORRAL_GRACE_TIME: 'soon' is not a number"),
        ({"CORRAL_GRACE_TIME": "-1"}, "is negative"),
        ({"CORRAL_DISK_SIZE_MB": "nan"}, "CORRAL_DISK_SIZE_MB: 'nan' is not a number"),
        ({"CORRAL_GRACE_TIME": "inf"}, "CORRAL_GRACE_TIME: 'inf' is not a number"),
        ({"CORRAL_LIMITS": "[1]"}, "CORRAL_LIMITS: must be a JSON object"),
    ]:
        with pytest.raises(DriverError, match=message):
            Settings.from_env(env)


def test_the_console_scripts_and_the_hooks_script_are_installed() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    for name in ("corral-gitlab", "corral-github-hooks"):
        module, _, function = project["scripts"][name].partition(":")
        assert callable(getattr(importlib.import_module(module), function))
    install = (REPO / "scripts" / "install.sh").read_text()
    assert 'executors/github-hooks.sh" /usr/local/lib/corral/github-hooks.sh' in install
    assert "/usr/local/bin/corral-github-hooks" in install  # what github-hooks.sh runs
