"""docker-compose.yml and the Dockerfile, checked without a Docker engine.

The compose file is loaded with PyYAML (anchors and `<<` merges resolved as
compose resolves them) and `${VAR...}` interpolation is done here as compose
does it. Each role service is then checked against the real code: its command
parses with `vilokanam.cli.build_parser()`, its environment holds only
variables of `vilokanam.config.Settings` and parses with `Settings.from_env`.
Every check is a function returning the problems it found; the last tests feed
them broken copies to prove they do fail."""

from __future__ import annotations

import copy
import json
import re
import shlex
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from vilokanam.cli import build_parser
from vilokanam.config import ConfigError, Settings, all_settings

REPO = Path(__file__).resolve().parent.parent
COMPOSE_FILE = REPO / "docker-compose.yml"
DOCKERFILE = REPO / "Dockerfile"
ENV_EXAMPLE = REPO / ".env.example"

# service name -> the `vilokanam` subcommand it runs
ROLES = {"migrate": "migrate", "signaling": "signaling", "signaling-2": "signaling",
         "sfu-1": "sfu", "sfu-2": "sfu", "billing": "billing", "media": "media"}
LONG_RUNNING = [name for name in ROLES if name != "migrate"]
STORES = ["postgres", "redis", "chain"]
KNOWN_ENV = {s.env for s in all_settings()}
SECRET_ENV = {s.env for s in all_settings() if s.secret}
LOOPBACK = {"127.0.0.1", "localhost", "::1"}

Compose = dict[str, Any]


def load_compose() -> Compose:
    data = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(data, dict) and isinstance(data.get("services"), dict)
    return data


@pytest.fixture()
def compose() -> Compose:
    return load_compose()


# --- interpolation, as compose does it ---------------------------------------------

_VAR = re.compile(
    r"\$(?:\$|\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}"
    r"|(?P<bare>[A-Za-z_][A-Za-z0-9_]*))")


def dummy_for(name: str) -> str:
    """A stand-in for a value the operator must supply (a secret)."""
    return f"dummy-{name.lower().replace('_', '-')}"


def interpolate(value: str, env: dict[str, str] | None = None) -> str:
    """Compose's `${VAR}`, `${VAR:-default}`, `${VAR:?err}`, `${VAR:+alt}`, `$$`.
    With `env` None nothing is set: required variables get a dummy value and a
    bare `${VAR}` (silently empty in compose) is an error."""
    env = env or {}

    def one(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group("braced") or match.group("bare")
        op, arg = match.group("op"), match.group("arg")
        is_set = name in env and (env[name] != "" or (op is not None and ":" not in op))
        if op in (":-", "-"):
            return env[name] if is_set else arg
        if op in (":?", "?"):
            return env[name] if is_set else dummy_for(name)
        if op in (":+", "+"):
            return arg if is_set else ""
        if name not in env:
            raise ValueError(f"${{{name}}} has no default and is not required (use "
                             f"${{{name}:-default}} or ${{{name}:?message}})")
        return env[name]

    return _VAR.sub(one, value)


def required_variables(text: str) -> set[str]:
    return {m.group("braced") for m in _VAR.finditer(text) if m.group("op") in (":?", "?")}


def all_variables(text: str) -> set[str]:
    return {m.group("braced") or m.group("bare") for m in _VAR.finditer(text)
            if m.group(0) != "$$"}


# --- what a service is -------------------------------------------------------------

def environment(service: dict[str, Any]) -> dict[str, Any]:
    """The raw environment (mapping or KEY=VALUE list form), not yet interpolated."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        return dict(item.split("=", 1) if "=" in item else (item, None) for item in env)
    return dict(env)


def interpolated_environment(service: dict[str, Any]) -> dict[str, str]:
    out = {}
    for key, value in environment(service).items():
        if value is None or isinstance(value, bool):
            raise ValueError(f"{key}: give a string value (got {value!r})")
        out[key] = interpolate(str(value))
    return out


def parse_command(service: dict[str, Any]) -> Any:
    """The service's command parsed by the real CLI (the image's ENTRYPOINT is
    `vilokanam`, so `command` is its argument list)."""
    command = service.get("command")
    if isinstance(command, str):
        command = shlex.split(command)
    if not isinstance(command, list) or not all(isinstance(a, str) for a in command):
        raise ValueError(f"command must be a list of strings, got {command!r}")
    try:
        return build_parser().parse_args(command)
    except SystemExit as exc:
        raise ValueError(f"`vilokanam {' '.join(command)}` does not parse") from exc


def effective_settings(service: dict[str, Any]) -> Settings:
    """What `vilokanam <command>` would run with: environment plus CLI flags."""
    args = parse_command(service)
    overrides = {k: v for k, v in vars(args).items() if k != "command" and v is not None}
    return Settings.from_env(interpolated_environment(service), **overrides)


def listening_port(role: str, settings: Settings) -> int:
    return {"signaling": settings.http_port, "sfu": settings.sfu_port,
            "billing": settings.billing_port, "media": settings.media_port}[role]


def healthcheck_test(service: dict[str, Any]) -> str:
    test = (service.get("healthcheck") or {}).get("test")
    if isinstance(test, list):
        if not test or test[0] == "NONE":
            return ""
        return " ".join(test[1:])
    return test or ""


def published_host_ports(service: dict[str, Any]) -> list[tuple[str, int, int]]:
    """(host address, host port, container port) for each `ports:` entry."""
    out = []
    for entry in service.get("ports") or []:
        if isinstance(entry, dict):
            out.append((entry.get("host_ip", "0.0.0.0"), int(entry["published"]),
                        int(entry["target"])))
            continue
        spec = str(entry).split("/")[0]
        parts = spec.rsplit(":", 2)
        if len(parts) == 3:
            out.append((parts[0], int(parts[1]), int(parts[2])))
        elif len(parts) == 2:
            out.append(("0.0.0.0", int(parts[0]), int(parts[1])))
        else:
            raise ValueError(f"{entry!r}: publish a fixed host port")
    return out


def depends_on(service: dict[str, Any]) -> dict[str, str]:
    deps = service.get("depends_on") or {}
    if isinstance(deps, list):  # short form: only "started"
        return {name: "service_started" for name in deps}
    return {name: (spec or {}).get("condition", "service_started") for name, spec in deps.items()}


# --- the checks: each returns its problems ------------------------------------------

def problems_services(compose: Compose) -> list[str]:
    services = compose["services"]
    return [f"service {name} is missing" for name in [*STORES, *ROLES] if name not in services]


def problems_commands(compose: Compose) -> list[str]:
    problems = []
    for name, role in ROLES.items():
        service = compose["services"][name]
        try:
            args = parse_command(service)
        except ValueError as exc:
            problems.append(f"{name}: {exc}")
            continue
        if args.command != role:
            problems.append(f"{name}: runs `vilokanam {args.command}`, expected {role}")
        if "entrypoint" in service:
            problems.append(f"{name}: must keep the image's ENTRYPOINT (vilokanam)")
        build = service.get("build")
        context = build.get("context") if isinstance(build, dict) else build
        if context not in (".", "./"):
            problems.append(f"{name}: must build the image from this repository's Dockerfile")
    return problems


def problems_environment(compose: Compose) -> list[str]:
    problems = []
    for name in ROLES:
        service = compose["services"][name]
        for key in environment(service):
            if key not in KNOWN_ENV:
                problems.append(f"{name}: {key} is not a setting of vilokanam.config.Settings")
        try:
            settings = effective_settings(service)
        except (ValueError, ConfigError) as exc:
            problems.append(f"{name}: {exc}")
            continue
        if not settings.database_url:
            problems.append(f"{name}: DATABASE_URL is not set")
        if ROLES[name] != "migrate" and not settings.redis_url:
            problems.append(f"{name}: REDIS_URL is not set")
        if ROLES[name] == "signaling" and settings.http_host != "0.0.0.0":
            problems.append(f"{name}: VILOKANAM_HTTP_HOST must be 0.0.0.0 to be reachable")
        if ROLES[name] == "sfu" and settings.sfu_host != "0.0.0.0":
            problems.append(f"{name}: VILOKANAM_SFU_HOST must be 0.0.0.0 to be reachable")
        if ROLES[name] == "billing" and not (settings.substrate_url and settings.escrow_uri):
            problems.append(f"{name}: billing needs SUBSTRATE_URL and VILOKANAM_ESCROW_URI")
    return problems


def problems_role_scoped(compose: Compose) -> list[str]:
    """A setting meant for some roles only (the escrow's secret URI, the token
    secret) must not be given to another role's service."""
    scoped = {s.env: s.roles for s in all_settings() if s.roles}
    return [f"{name}: {key} is for {'/'.join(scoped[key])} only"
            for name, role in ROLES.items()
            for key in environment(compose["services"][name])
            if key in scoped and role not in scoped[key]]


def problems_secrets(compose: Compose) -> list[str]:
    """Secrets must come from the environment (`${VAR:?message}`), never a literal."""
    problems = []
    required = re.compile(r"^\$\{[A-Za-z_][A-Za-z0-9_]*:?\?[^}]*\}$")
    for name, service in compose["services"].items():
        env = environment(service)
        for key, value in env.items():
            if key in SECRET_ENV | {"POSTGRES_PASSWORD"} and not required.match(str(value)):
                problems.append(f"{name}: {key} must be ${{VAR:?message}}, not a literal")
            if key == "DATABASE_URL":  # (urlsplit would stop at the `?` of `:?`)
                userinfo = re.match(r"^[a-z]+://([^:@/]*:)?(?P<password>.*)@[^@]*$", str(value))
                if not userinfo or not required.match(userinfo.group("password")):
                    problems.append(f"{name}: DATABASE_URL's password must be ${{VAR:?message}}")
    return problems


def problems_healthchecks(compose: Compose) -> list[str]:
    problems = []
    for name, service in compose["services"].items():
        test = healthcheck_test(service)
        if name == "migrate":
            continue
        if not test or (service.get("healthcheck") or {}).get("disable"):
            problems.append(f"{name}: no healthcheck")
    for name in LONG_RUNNING:
        service = compose["services"][name]
        try:
            port = listening_port(ROLES[name], effective_settings(service))
        except (ValueError, ConfigError) as exc:
            problems.append(f"{name}: {exc}")
            continue
        url = f"http://127.0.0.1:{port}/healthz"
        if url not in healthcheck_test(service):
            problems.append(f"{name}: its healthcheck must request {url}")
    postgres, redis = compose["services"]["postgres"], compose["services"]["redis"]
    if "pg_isready" not in healthcheck_test(postgres):
        problems.append("postgres: healthcheck must use pg_isready")
    if "redis-cli" not in healthcheck_test(redis) or "ping" not in healthcheck_test(redis):
        problems.append("redis: healthcheck must be redis-cli ping")
    return problems


def problems_depends_on(compose: Compose) -> list[str]:
    services = compose["services"]
    problems = []
    for name, service in services.items():
        for dep in depends_on(service):
            if dep not in services:
                problems.append(f"{name}: depends on unknown service {dep}")
    want = {"migrate": {"postgres": "service_healthy"}}
    for name in LONG_RUNNING:
        want[name] = {"migrate": "service_completed_successfully",
                      "postgres": "service_healthy", "redis": "service_healthy"}
    want["billing"]["chain"] = "service_healthy"
    for name, deps in want.items():
        have = depends_on(services[name])
        for dep, condition in deps.items():
            if have.get(dep) != condition:
                problems.append(f"{name}: must depend on {dep} with condition {condition} "
                                f"(has {have.get(dep)})")
    if str(services["migrate"].get("restart", "no")) != "no":
        problems.append("migrate: a one-shot service must not restart")
    return problems


def problems_host_network(compose: Compose) -> list[str]:
    """Host-networked services share the host's ports with each other and with
    what other services publish; they cannot use compose service names."""
    services = compose["services"]
    problems = []
    taken: dict[int, str] = {}

    def take(port: int, owner: str) -> None:
        if port in taken:
            problems.append(f"host port {port} is used by both {taken[port]} and {owner}")
        taken[port] = owner

    published: dict[str, list[tuple[str, int, int]]] = {}
    for name, service in services.items():
        if service.get("network_mode") == "host":
            if service.get("ports"):
                problems.append(f"{name}: `ports` has no effect with host networking")
            continue
        published[name] = published_host_ports(service)
        for _ip, host_port, _target in published[name]:
            take(host_port, name)
    for name, service in services.items():
        if service.get("network_mode") != "host" or name not in ROLES:
            continue
        try:
            settings = effective_settings(service)
        except (ValueError, ConfigError) as exc:
            problems.append(f"{name}: {exc}")
            continue
        if ROLES[name] != "migrate":
            take(listening_port(ROLES[name], settings), name)
        for url, store in ((settings.database_url, "postgres"), (settings.redis_url, "redis")):
            if not url:
                continue
            parts = urlsplit(url)
            if parts.hostname not in LOOPBACK:
                problems.append(f"{name}: on the host network it cannot resolve "
                                f"{parts.hostname!r}; use 127.0.0.1 and a published port")
            elif not any(port == parts.port for _ip, port, _t in published.get(store, [])):
                problems.append(f"{name}: {store} publishes no host port {parts.port}")
    return problems


def problems_sfu_media(compose: Compose) -> list[str]:
    """Each SFU worker on the compose network publishes exactly its one media
    UDP port 1:1, announces an address, and registers a control URL signaling
    can resolve (its service name and control port)."""
    problems = []
    udp_ports: dict[int, str] = {}
    for name, role in ROLES.items():
        if role != "sfu":
            continue
        service = compose["services"][name]
        if service.get("network_mode") == "host":
            problems.append(f"{name}: must not use host networking (it publishes one UDP port)")
        try:
            settings = effective_settings(service)
        except (ValueError, ConfigError) as exc:
            problems.append(f"{name}: {exc}")
            continue
        port = settings.sfu_udp_port
        if port is None:
            problems.append(f"{name}: VILOKANAM_SFU_UDP_PORT is not set")
            continue
        if port in udp_ports:
            problems.append(f"{name}: UDP port {port} is also {udp_ports[port]}'s")
        udp_ports[port] = name
        udp = [str(e) for e in service.get("ports") or [] if str(e).endswith("/udp")]
        if udp != [f"{port}:{port}/udp"]:
            problems.append(f"{name}: must publish {port}:{port}/udp (and no other UDP port)")
        if not settings.sfu_public_ip:
            problems.append(f"{name}: VILOKANAM_SFU_PUBLIC_IP is not set")
        control = urlsplit(settings.sfu_control_url)
        if (control.hostname, control.port) != (name, settings.sfu_port):
            problems.append(f"{name}: VILOKANAM_SFU_ADVERTISE_URL must be "
                            f"http://{name}:{settings.sfu_port}")
    return problems


def problems_chain(compose: Compose) -> list[str]:
    chain = compose["services"]["chain"]
    problems = []
    configs = chain.get("configs") or []
    if len(configs) != 1:
        return ["chain: expected one chopsticks config"]
    source, target = configs[0]["source"], configs[0]["target"]
    config = yaml.safe_load(compose["configs"][source]["content"])
    script = " ".join(chain["command"])
    if target not in script:
        problems.append(f"chain: the command does not use the config at {target}")
    if config.get("host") != "0.0.0.0":
        problems.append("chain: chopsticks must bind 0.0.0.0 inside its container")
    if config.get("build-block-mode") != "Instant":
        problems.append("chain: build-block-mode must be Instant")
    if Path(config.get("genesis", "")).name not in script:
        problems.append("chain: the command does not write the genesis file the config names")
    for name in ("signaling", "billing"):
        url = urlsplit(interpolated_environment(compose["services"][name])["SUBSTRATE_URL"])
        if (url.hostname, url.port) != ("chain", config.get("port")):
            problems.append(f"{name}: SUBSTRATE_URL does not point at chain:{config.get('port')}")
    if f"http://127.0.0.1:{config.get('port')}" not in healthcheck_test(chain):
        problems.append("chain: the healthcheck does not ask chopsticks' port")
    return problems


def problems_stores(compose: Compose) -> list[str]:
    services = compose["services"]
    problems = []
    declared = set(compose.get("volumes") or {})
    for name, image in (("postgres", "postgres:16"), ("redis", "redis:7")):
        if services[name].get("image") != image:
            problems.append(f"{name}: image must be {image}")
    for name in STORES:
        named = [str(v).split(":")[0] for v in services[name].get("volumes") or []]
        if not any(v in declared for v in named):
            problems.append(f"{name}: needs a named volume")
    redis_command = " ".join(services["redis"].get("command") or [])
    if "--appendonly yes" not in redis_command or "--appendfsync always" not in redis_command:
        problems.append("redis: must run with --appendonly yes --appendfsync always")
    return problems


# --- the tests ---------------------------------------------------------------------

def test_services_exist(compose: Compose) -> None:
    assert problems_services(compose) == []


def test_role_commands_parse_with_the_real_cli(compose: Compose) -> None:
    assert problems_commands(compose) == []


def test_role_environment_is_known_settings_and_parses(compose: Compose) -> None:
    assert problems_environment(compose) == []


def test_secrets_come_from_the_environment(compose: Compose) -> None:
    assert problems_secrets(compose) == []


def test_secrets_reach_only_their_roles(compose: Compose) -> None:
    assert problems_role_scoped(compose) == []


def test_every_service_but_migrate_has_a_healthcheck(compose: Compose) -> None:
    assert problems_healthchecks(compose) == []


def test_roles_wait_for_migrate_and_stores(compose: Compose) -> None:
    assert problems_depends_on(compose) == []


def test_host_networked_services_do_not_collide(compose: Compose) -> None:
    assert problems_host_network(compose) == []


def test_sfu_workers_publish_their_one_media_port(compose: Compose) -> None:
    assert problems_sfu_media(compose) == []


def test_chain_service(compose: Compose) -> None:
    assert problems_chain(compose) == []


def test_stores(compose: Compose) -> None:
    assert problems_stores(compose) == []


def test_every_interpolation_resolves_and_required_ones_are_in_env_example() -> None:
    text = COMPOSE_FILE.read_text()
    for match in _VAR.finditer(text):
        interpolate(match.group(0))  # no bare ${VAR} without a default
    example = {line.split("=", 1)[0].strip() for line in ENV_EXAMPLE.read_text().splitlines()
               if "=" in line and not line.lstrip().startswith("#")}
    assert required_variables(text) <= example, "document every required variable"
    assert example <= all_variables(text), ".env.example names a variable nothing uses"


def test_env_example_values_work() -> None:
    """With .env.example's values (required ones filled in) every role's settings parse."""
    values = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        if "=" in line and not line.lstrip().startswith("#"):
            key, value = line.split("=", 1)
            values[key.strip()] = value.strip() or dummy_for(key.strip())
    compose = load_compose()
    for name in ROLES:
        service = compose["services"][name]
        env = {k: interpolate(str(v), values) for k, v in environment(service).items()}
        Settings.from_env(env)


# --- the Dockerfile ----------------------------------------------------------------

def dockerfile_instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            out.append((keyword.upper(), rest.strip()))
    return out


def test_dockerfile() -> None:
    instructions = dockerfile_instructions()
    froms = [rest.split()[0] for kw, rest in instructions if kw == "FROM"]
    assert froms and all(image == "python:3.11-slim" for image in froms)
    final_stage = instructions[max(i for i, (kw, _) in enumerate(instructions) if kw == "FROM"):]
    entrypoints = [rest for kw, rest in final_stage if kw == "ENTRYPOINT"]
    assert entrypoints and json.loads(entrypoints[-1]) == ["vilokanam"]
    users = [rest for kw, rest in final_stage if kw == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0"), "run as a non-root user"
    runs = " ".join(rest for kw, rest in instructions if kw == "RUN")
    assert re.search(r"pip install [^&;]*--no-deps \.", runs), "install the project with pip"
    assert not re.search(r"pip install [^&;]*(-e|--editable)\b", runs), "not editable"
    assert not re.search(r"\b(nodejs|npm|npx)\b", runs), "no Node in the image"


# --- the checks can fail -----------------------------------------------------------

def broken(mutate: Any) -> Compose:
    compose = copy.deepcopy(load_compose())
    mutate(compose["services"])
    return compose


def test_checks_catch_mistakes() -> None:
    assert problems_environment(broken(
        lambda s: s["billing"]["environment"].update(VILOKANAM_BOGUS="1")))
    assert problems_environment(broken(
        lambda s: s["signaling"]["environment"].update(VILOKANAM_HTTP_PORT="http")))
    assert problems_environment(broken(
        lambda s: s["sfu-1"]["environment"].update(VILOKANAM_ICE_SERVERS="[{}]")))
    assert problems_commands(broken(lambda s: s["sfu-1"].update(command=["sfu", "--bogus"])))
    assert problems_commands(broken(lambda s: s["billing"].update(command=["signaling"])))
    assert problems_secrets(broken(
        lambda s: s["billing"]["environment"].update(VILOKANAM_ESCROW_URI="//Alice")))
    assert problems_role_scoped(broken(lambda s: s["signaling"]["environment"].update(
        VILOKANAM_ESCROW_URI="${VILOKANAM_ESCROW_URI:?}")))
    assert problems_secrets(broken(lambda s: s["migrate"]["environment"].update(
        DATABASE_URL="postgresql://vilokanam:hunter2@postgres:5432/vilokanam")))
    assert problems_host_network(broken(lambda s: s["sfu-1"].update(network_mode="host")))
    assert problems_sfu_media(broken(lambda s: s["sfu-1"].update(network_mode="host")))
    assert problems_sfu_media(broken(
        lambda s: s["sfu-2"]["environment"].update(VILOKANAM_SFU_UDP_PORT="50001")))
    assert problems_sfu_media(broken(lambda s: s["sfu-2"].update(ports=["50003:50002/udp"])))
    assert problems_sfu_media(broken(
        lambda s: s["sfu-1"]["environment"].update(VILOKANAM_SFU_ADVERTISE_URL="http://x:1")))
    assert problems_healthchecks(broken(lambda s: s["redis"].pop("healthcheck")))
    assert problems_healthchecks(broken(
        lambda s: s["sfu-2"]["environment"].update(VILOKANAM_SFU_PORT="8093")))
    assert problems_depends_on(broken(lambda s: s["signaling"]["depends_on"].pop("migrate")))
    assert problems_depends_on(broken(
        lambda s: s["billing"]["depends_on"]["migrate"].update(condition="service_started")))
    with pytest.raises(ValueError):
        interpolate("${UNSET_WITHOUT_DEFAULT}")
