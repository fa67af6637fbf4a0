import re
from decimal import Decimal
from pathlib import Path

import pytest

from vilokanam.config import ConfigError, Settings, all_settings, redact_url

REPO = Path(__file__).resolve().parent.parent


def test_defaults_match_the_design() -> None:
    s = Settings.from_env({})
    assert s.http_port == 8080
    assert s.data_dir == Path("./.vilokanam")
    assert s.ss58_prefix == 42
    assert s.price_default == Decimal("0.001")
    assert s.platform_fee == Decimal("0.1")
    assert s.ice_servers == []  # never aiortc's public STUN default
    assert s.base_url == "http://127.0.0.1:8080"


def test_environment_and_overrides() -> None:
    s = Settings.from_env({"VILOKANAM_HTTP_PORT": "9000", "DATABASE_URL": "postgresql://x"},
                          http_port=9100)
    assert s.http_port == 9100  # a flag wins over the environment
    assert s.database_url == "postgresql://x"


@pytest.mark.parametrize(("env", "message"), [
    ({"VILOKANAM_HTTP_PORT": "eighty"}, "VILOKANAM_HTTP_PORT must be a port number"),
    ({"VILOKANAM_HTTP_PORT": "70000"}, "VILOKANAM_HTTP_PORT must be between"),
    ({"VILOKANAM_PRICE_DEFAULT": "0"}, "VILOKANAM_PRICE_DEFAULT must be greater than zero"),
    ({"VILOKANAM_PRICE_DEFAULT": "abc"}, "VILOKANAM_PRICE_DEFAULT must be a decimal"),
    ({"VILOKANAM_PRICE_DEFAULT": "NaN"}, "must be finite"),
    ({"VILOKANAM_PLATFORM_FEE": "1"}, "VILOKANAM_PLATFORM_FEE must be a fraction"),
    ({"VILOKANAM_ICE_SERVERS": "[{"}, "VILOKANAM_ICE_SERVERS is not valid JSON"),
    ({"VILOKANAM_ICE_SERVERS": '[{"url": "x"}]'}, "needs a 'urls' field"),
    ({"VILOKANAM_LOG_FORMAT": "xml"}, "VILOKANAM_LOG_FORMAT"),
])
def test_bad_values_name_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        Settings.from_env(env)


def test_ice_servers_forms() -> None:
    s = Settings.from_env({"VILOKANAM_ICE_SERVERS": "stun:127.0.0.1:3478, turn:127.0.0.1"})
    assert s.ice_servers == [{"urls": "stun:127.0.0.1:3478"}, {"urls": "turn:127.0.0.1"}]
    s = Settings.from_env({"VILOKANAM_ICE_SERVERS": '[{"urls": ["stun:a"], "username": "u"}]'})
    assert s.ice_servers == [{"urls": ["stun:a"], "username": "u"}]


def test_as_env_round_trips() -> None:
    s = Settings.from_env({"VILOKANAM_ICE_SERVERS": "stun:127.0.0.1", "REDIS_URL": "redis://r"})
    assert Settings.from_env(s.as_env()) == s


def test_a_role_gets_only_its_own_secrets() -> None:
    s = Settings.from_env({"VILOKANAM_ESCROW_URI": "//SomeEscrow",
                           "VILOKANAM_TOKEN_SECRET": "x" * 40,
                           "VILOKANAM_ESCROW_ACCOUNT": "5EscrowAddress"})
    assert "VILOKANAM_ESCROW_URI" not in s.as_env("signaling")
    assert s.as_env("signaling")["VILOKANAM_TOKEN_SECRET"] == "x" * 40
    assert s.as_env("signaling")["VILOKANAM_ESCROW_ACCOUNT"] == "5EscrowAddress"
    assert "VILOKANAM_TOKEN_SECRET" not in s.as_env("billing")
    assert s.as_env("billing")["VILOKANAM_ESCROW_URI"] == "//SomeEscrow"
    for role in ("sfu", "migrate"):
        assert not {"VILOKANAM_ESCROW_URI", "VILOKANAM_TOKEN_SECRET"} & set(s.as_env(role))


def test_redact_url_hides_password_only() -> None:
    assert redact_url("postgresql://u:secret@h:5432/db") == "postgresql://u:***@h:5432/db"
    assert redact_url("redis://h:6379/0") == "redis://h:6379/0"


def _readme_table_variables() -> set[str]:
    text = (REPO / "README.md").read_text()
    section = text.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"^\|\s*`([A-Z][A-Z0-9_]+)`", section, flags=re.M))


def test_readme_configuration_table_lists_every_setting_and_no_other() -> None:
    assert _readme_table_variables() == {s.env for s in all_settings()}


def test_readme_table_defaults_match_code() -> None:
    text = (REPO / "README.md").read_text()
    for setting in all_settings():
        row = re.search(rf"^\|\s*`{setting.env}`\s*\|\s*([^|]*)\|", text, flags=re.M)
        assert row, setting.env
        shown = row.group(1).strip().strip("`")
        expected = setting.default if setting.default not in (None, "") else "—"
        assert shown == expected, f"{setting.env}: README says {shown!r}, code {expected!r}"
