"""`vilokanam dev`'s ports: a default another port holds moves (and says so), a
port the user set stays, and two the user set to one number are refused by name."""

from __future__ import annotations

import pytest

from vilokanam.config import ConfigError, Settings
from vilokanam.dev_ports import assign_ports, dev_ports, given_settings, sfu_worker_settings
from vilokanam.services.net import free_port

PORT_VARIABLES = {"VILOKANAM_HTTP_PORT", "VILOKANAM_SFU_PORT", "VILOKANAM_BILLING_PORT",
                  "VILOKANAM_MEDIA_PORT",
                  "VILOKANAM_DEV_POSTGRES_PORT", "VILOKANAM_DEV_REDIS_PORT",
                  "VILOKANAM_DEV_CHAIN_PORT"}


def dev_settings(env: dict[str, str]) -> Settings:
    """Every dev port on a free port of its own, then `env` on top."""
    ports = {variable: str(free_port()) for variable in PORT_VARIABLES}
    return Settings.from_env({**ports, **env})


def ports_of(settings: Settings) -> dict[str, int]:
    return {variable: getattr(settings, name) for name, variable in dev_ports(settings)}


def test_the_defaults_do_not_collide() -> None:
    defaults = ports_of(Settings.from_env({}))
    assert set(defaults) == PORT_VARIABLES
    assert len(set(defaults.values())) == len(defaults)


def test_a_default_the_user_took_moves_and_says_why() -> None:
    shared = free_port()
    settings = dev_settings({"VILOKANAM_HTTP_PORT": str(shared),
                             "VILOKANAM_SFU_PORT": str(shared)})
    assigned, moves = assign_ports(settings, given={"VILOKANAM_HTTP_PORT"})
    ports = ports_of(assigned)
    assert ports["VILOKANAM_HTTP_PORT"] == shared  # the user's port is kept
    assert ports["VILOKANAM_SFU_PORT"] > shared
    assert len(set(ports.values())) == len(ports)
    assert [str(m) for m in moves] == [
        f"VILOKANAM_SFU_PORT is {ports['VILOKANAM_SFU_PORT']}: its default {shared} is "
        "VILOKANAM_HTTP_PORT's (set VILOKANAM_SFU_PORT to choose another)"]


def test_the_user_port_wins_whichever_setting_comes_first() -> None:
    shared = free_port()
    settings = dev_settings({"VILOKANAM_HTTP_PORT": str(shared),
                             "VILOKANAM_DEV_CHAIN_PORT": str(shared)})
    assigned, moves = assign_ports(settings, given={"VILOKANAM_DEV_CHAIN_PORT"})
    assert assigned.dev_chain_port == shared
    assert len(set(ports_of(assigned).values())) == len(PORT_VARIABLES)
    assert [(m.setting, m.holder) for m in moves] == [
        ("VILOKANAM_HTTP_PORT", "VILOKANAM_DEV_CHAIN_PORT")]


def test_two_ports_the_user_set_alike_are_refused_by_name() -> None:
    shared = free_port()
    settings = dev_settings({"VILOKANAM_HTTP_PORT": str(shared),
                             "VILOKANAM_BILLING_PORT": str(shared)})
    with pytest.raises(ConfigError, match=f"^VILOKANAM_HTTP_PORT and VILOKANAM_BILLING_PORT "
                                          f"are both {shared}: give them different ports$"):
        assign_ports(settings, given={"VILOKANAM_HTTP_PORT", "VILOKANAM_BILLING_PORT"})


def test_a_store_given_by_url_is_not_a_port_of_ours() -> None:
    shared = free_port()
    settings = dev_settings({"VILOKANAM_HTTP_PORT": str(shared),
                             "VILOKANAM_DEV_POSTGRES_PORT": str(shared),
                             "DATABASE_URL": "postgresql://127.0.0.1:5432/x"})
    assigned, moves = assign_ports(settings, given={"VILOKANAM_HTTP_PORT"})
    assert moves == [] and assigned == settings


def test_given_settings_are_the_environment_and_the_flags() -> None:
    given = given_settings({"VILOKANAM_HTTP_PORT": "8090", "HOME": "/root"},
                           flags={"redis_url"})
    assert given == {"VILOKANAM_HTTP_PORT", "REDIS_URL"}


def test_several_sfu_workers_get_ports_of_their_own() -> None:
    settings = dev_settings({"VILOKANAM_SFU_WORKERS": "3", "VILOKANAM_SFU_UDP_PORT": "40000"})
    workers = sfu_worker_settings(settings)
    ports = [w.sfu_port for w in workers]
    assert len(workers) == 3 and ports[0] == settings.sfu_port and len(set(ports)) == 3
    assert not set(ports[1:]) & set(ports_of(settings).values())  # no other dev port's
    assert [w.sfu_udp_port for w in workers] == [40000, 40001, 40002]
    assert [len(sfu_worker_settings(dev_settings({})))] == [1]  # the default: one


def test_one_advertised_url_for_several_workers_is_refused() -> None:
    settings = dev_settings({"VILOKANAM_SFU_WORKERS": "2",
                             "VILOKANAM_SFU_ADVERTISE_URL": "http://sfu.example:8090"})
    with pytest.raises(ConfigError, match="VILOKANAM_SFU_WORKERS"):
        sfu_worker_settings(settings)
    with pytest.raises(ConfigError, match="between 1 and 64"):
        dev_settings({"VILOKANAM_SFU_WORKERS": "0"})
