"""The drivers' shared rules, without a daemon: where images come from, settings, and
what the installation provides for the runners."""

from __future__ import annotations

import importlib
import tomllib
from pathlib import Path

import pytest

from executors.common import DriverError, Settings, image_config
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
    assert image_config(image, tmp_path) == {"rootfs": str(tmp_path / directory)}


def test_no_image_is_the_daemons_default_rootfs(tmp_path: Path) -> None:
    assert image_config(None, tmp_path) == image_config("", tmp_path) == {}
    config = Settings().create_config("h", None)
    assert "rootfs" not in config and "image" not in config


@pytest.mark.parametrize(
    "image",
    ["debian:12", "localhost:5000/app:1", "app@sha256:abcd", "../x", "a/../b", "/abs", "a//b"],
)
def test_an_image_with_no_directory_is_the_daemons_to_pull(tmp_path: Path, image: str) -> None:
    """The daemon's images plugin pulls it, or refuses a name that is no reference."""
    (tmp_path / "x" / "latest" / "bin").mkdir(parents=True)  # never reached through "../x"
    assert image_config(image, tmp_path) == {"image": image, "image_pull": "missing"}


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
