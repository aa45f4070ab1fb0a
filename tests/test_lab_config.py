"""The lab's configuration: the TOML file, precedence (CLI > environment > file), reloads."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from kmsemu.cli import main
from kmsemu.errors import ConfigError
from kmsemu.lab.config import LabSettings, Reloading, plan_reload, read_config

# the module (kmsemu.cli's `lab` attribute is the command)
runner = importlib.import_module("kmsemu.lab.runner")


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "lab.toml"
    path.write_text(text)
    return path


def test_a_file_is_read_and_checked(tmp_path: Path) -> None:
    path = write(tmp_path, '[lab]\nkms_listen = "127.0.0.1:1688"\nmin_count = 5\nquiet = true\n')
    assert read_config(path) == {"kms_listen": ["127.0.0.1:1688"], "min_count": 5, "quiet": True}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[lab]\nmin_count = 'five'\n", "lab.min_count must be int, not 'five'"),
        ("[lab]\nmin_count = true\n", "lab.min_count must be int, not True"),
        ("[lab]\nquiet = 1\n", "lab.quiet must be bool"),
        ("[lab]\nport = 1\n", "unknown key lab.port"),
        ("min_count = 1\n", "unknown table or key 'min_count'; put settings in [lab]"),
        ("lab = 3\n", "lab must be a table"),
        ("[lab]\nkms_listen = [1]\n", "lab.kms_listen must be a list of strings"),
        ("[lab\n", "lab.toml"),
    ],
)
def test_a_bad_file_is_a_config_error(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        read_config(write(tmp_path, text))
    assert caught.value.code == "config_invalid"
    assert message in str(caught.value)


def test_a_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        read_config(tmp_path / "absent.toml")


def test_a_reload_applies_reloadable_keys_and_names_the_rest() -> None:
    old = {"min_count": 0, "zone": "lab.test", "renewal_interval": 10080, "quiet": False}
    new = {
        "min_count": 25,
        "zone": "other.test",
        "renewal_interval": 60,
        "quiet": False,
        "http_listen": "0.0.0.0:8688",
    }
    current = {"min_count": 0, "zone": "lab.test", "renewal_interval": 1440, "quiet": False}
    plan = plan_reload(old, new, current, fixed={"renewal_interval"})
    assert plan.apply == {"min_count": 25}
    assert plan.restart == ["http_listen", "zone"]
    assert plan.overridden == ["renewal_interval"]
    assert plan.summary() == (
        "applied min_count=25; restart needed for http_listen, zone; "
        "kept from the command line or environment: renewal_interval"
    )


def test_an_unchanged_or_removed_key_does_nothing() -> None:
    plan = plan_reload(
        {"min_count": 5, "zone": "a.test"}, {"min_count": 5}, {"min_count": 5}, set()
    )
    assert (plan.apply, plan.restart, plan.overridden) == ({}, [], [])
    assert plan.summary() == "applied nothing"


class Captured:
    settings: LabSettings
    reloading: Reloading


@pytest.fixture
def captured(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Captured:
    """``kmsemu lab`` parses its options, but builds this instead of running the lab."""
    seen = Captured()

    class FakeLab:
        def __init__(
            self,
            settings: LabSettings,
            home: Path,
            catalog: Any,
            reloading: Reloading,
            loop_name: str,
        ) -> None:
            seen.settings, seen.reloading = settings, reloading

        async def run(self) -> None:
            return None

    monkeypatch.setattr(runner, "Lab", FakeLab)  # kmsemu lab imports them when it runs
    monkeypatch.setattr(runner, "configure_logging", lambda *_: None)
    monkeypatch.setenv("KMSEMU_HOME", str(tmp_path / "home"))
    for name in (
        "KMSEMU_CONFIG",
        "KMSEMU_LAB_MIN_COUNT",
        "KMSEMU_LAB_HTTP_LISTEN",
        "KMSEMU_LAB_KMS_LISTEN",
        "KMSEMU_ADMIN_TOKEN",
        "KMSEMU_SECRET",
    ):
        monkeypatch.delenv(name, raising=False)
    return seen


def run(*args: str, env: dict[str, str] | None = None) -> Any:
    return CliRunner().invoke(main, ["lab", *args], env=env, catch_exceptions=False)


def test_the_command_line_beats_the_environment_which_beats_the_file(
    captured: Captured, tmp_path: Path
) -> None:
    config = write(
        tmp_path,
        '[lab]\nmin_count = 3\nzone = "file.test"\nkms_listen = ["127.0.0.2:1700", "127.0.0.3"]\n',
    )
    env = {"KMSEMU_LAB_MIN_COUNT": "5"}
    assert run("--config", str(config), "--min-count", "7", env=env).exit_code == 0
    assert captured.settings.min_count == 7
    assert captured.reloading.fixed == {"min_count"}
    assert run("--config", str(config), env=env).exit_code == 0
    assert captured.settings.min_count == 5 and captured.reloading.fixed == {"min_count"}
    assert run("--config", str(config)).exit_code == 0
    s = captured.settings
    assert (s.min_count, s.zone) == (3, "file.test")
    assert s.kms_listen == [("127.0.0.2", 1700), ("127.0.0.3", 1688)]
    assert captured.reloading.path == config and captured.reloading.fixed == set()
    assert captured.reloading.file_values["min_count"] == 3


def test_the_default_file_is_kmsemu_home_lab_toml_and_env_names_another(
    captured: Captured, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / "lab.toml").write_text('[lab]\nhttp_listen = "127.0.0.1:9000"\n')
    assert run().exit_code == 0
    assert captured.settings.http_listen == ("127.0.0.1", 9000)
    assert captured.reloading.path == home / "lab.toml"
    other = write(tmp_path, '[lab]\nhttp_listen = "127.0.0.1:9001"\n')
    assert run(env={"KMSEMU_CONFIG": str(other)}).exit_code == 0
    assert captured.settings.http_listen == ("127.0.0.1", 9001)


def test_without_a_file_the_defaults_hold(captured: Captured) -> None:
    assert run().exit_code == 0
    s = captured.settings
    assert s.kms_listen == [("0.0.0.0", 1688), ("::", 1688)]
    assert (s.dns_listen, s.http_listen) == (("127.0.0.1", 5300), ("127.0.0.1", 8688))
    assert (s.zone, s.secret, s.log_format) == ("lab.test", "kmsemu-lab", "text")
    assert captured.reloading.path is None


def test_a_bad_file_stops_the_lab_before_it_starts(captured: Captured, tmp_path: Path) -> None:
    result = run("--config", str(write(tmp_path, "[lab]\nzone = 5\n")))
    assert result.exit_code == 1
    assert "lab.zone must be str" in result.output
    assert not hasattr(captured, "settings")


def test_a_value_from_the_file_is_validated_like_the_flag(
    captured: Captured, tmp_path: Path
) -> None:
    result = run("--config", str(write(tmp_path, "[lab]\nmin_count = 5000\n")))
    assert result.exit_code == 1  # the file is wrong (config_invalid), like a wrong type
    assert "lab.min_count must be from 0 to 1000, not 5000" in result.output
