"""The ports `vilokanam dev` listens on, chosen so that none collide.

Every role and local service of the dev stack has its own port setting, each
with its own default. A port the user set (in the environment or by a flag) is
kept as given; a default that another of the stack's ports already holds moves
to the next port up that is free, with a line saying so. Two ports the user set
to the same number are refused, naming both settings: only the user can say
which one they meant."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

from vilokanam.config import ConfigError, Settings
from vilokanam.services.net import ensure_port_free, port_is_free

# (Settings field, its variable) for every port dev may listen on, in the
# order they are given out.
_ROLE_PORTS = (("http_port", "VILOKANAM_HTTP_PORT"), ("sfu_port", "VILOKANAM_SFU_PORT"),
               ("billing_port", "VILOKANAM_BILLING_PORT"), ("media_port", "VILOKANAM_MEDIA_PORT"))


@dataclass(frozen=True)
class PortMove:
    """A default port given up because another setting holds it."""

    setting: str
    default: int
    port: int
    holder: str

    def __str__(self) -> str:
        return (f"{self.setting} is {self.port}: its default {self.default} is "
                f"{self.holder}'s (set {self.setting} to choose another)")


def given_settings(env: Mapping[str, str], flags: Collection[str] = ()) -> frozenset[str]:
    """The variables of the settings a user set: present in `env`, or given as a
    flag (`flags` holds Settings field names, as the CLI's options do)."""
    return frozenset(spec.env for f in fields(Settings)
                     if (spec := f.metadata["setting"]).env in env or f.name in flags)


def dev_ports(settings: Settings) -> list[tuple[str, str]]:
    """(field, variable) of each port this dev stack listens on: a store or
    chain given by URL is not started, so its port is not ours."""
    wanted = list(_ROLE_PORTS)
    if not settings.database_url:
        wanted.append(("dev_postgres_port", "VILOKANAM_DEV_POSTGRES_PORT"))
    if not settings.redis_url:
        wanted.append(("dev_redis_port", "VILOKANAM_DEV_REDIS_PORT"))
    if not settings.substrate_url:
        wanted.append(("dev_chain_port", "VILOKANAM_DEV_CHAIN_PORT"))
    return wanted


def assign_ports(settings: Settings,
                 given: Collection[str]) -> tuple[Settings, list[PortMove]]:
    """Settings whose dev ports are all different; `given` are the variables
    the user set. Raises ConfigError when two given ports are the same."""
    wanted = dev_ports(settings)
    order = ([w for w in wanted if w[1] in given] + [w for w in wanted if w[1] not in given])
    holders: dict[int, str] = {}
    moves: list[PortMove] = []
    changes: dict[str, Any] = {}
    for name, variable in order:
        port = getattr(settings, name)
        if port in holders:
            if variable in given:
                raise ConfigError(f"{holders[port]} and {variable} are both {port}: "
                                  "give them different ports")
            moved = _next_free(port, holders)
            moves.append(PortMove(variable, port, moved, holders[port]))
            changes[name] = port = moved
        holders[port] = variable
    return replace(settings, **changes), moves


def _next_free(port: int, holders: Mapping[int, str]) -> int:
    for candidate in range(port + 1, 65536):
        if candidate not in holders and port_is_free(candidate):
            return candidate
    raise ConfigError(f"no free port above {port}")


def check_ports_free(settings: Settings) -> None:
    """Refuse a port another process holds, naming its setting, before starting anything."""
    for name, variable in dev_ports(settings):
        ensure_port_free(getattr(settings, name), setting=variable)


def sfu_worker_settings(settings: Settings) -> list[Settings]:
    """One Settings per SFU worker dev runs (`VILOKANAM_SFU_WORKERS`): the
    first as configured, each next one on the next free control port above
    the previous that no other dev port holds, and its own UDP port (+ n)."""
    if settings.sfu_workers > 1 and settings.sfu_advertise_url:
        raise ConfigError("VILOKANAM_SFU_ADVERTISE_URL names one worker: unset it to run "
                          f"{settings.sfu_workers} (VILOKANAM_SFU_WORKERS)")
    holders = {getattr(settings, name): variable for name, variable in dev_ports(settings)}
    workers = [settings]
    for n in range(1, settings.sfu_workers):
        port = _next_free(workers[-1].sfu_port, holders)
        holders[port] = f"SFU worker {n + 1}"
        udp = None if settings.sfu_udp_port is None else settings.sfu_udp_port + n
        workers.append(replace(settings, sfu_port=port, sfu_udp_port=udp))
    return workers
