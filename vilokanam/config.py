"""Configuration: every setting comes from the environment (and, where it makes
sense, a command-line flag of the same name).

`SETTINGS` is the single list of what can be configured; the README's
configuration table and docker-compose.yml are checked against it by the tests,
so adding a setting here without documenting it fails CI.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from vilokanam.storage import S3Config


class ConfigError(ValueError):
    """A setting has a value we cannot use; the message names the variable."""


@dataclass(frozen=True)
class Setting:
    env: str
    default: str | None
    help: str
    secret: bool = False
    # The roles that may be given this setting (None: every role). A secret
    # reaches only the role that needs it: `as_env(role)` leaves it out for the
    # others, and the compose test refuses it in another role's service.
    roles: tuple[str, ...] | None = None


def _setting(env: str, default: str | None, help: str, *, secret: bool = False,
             roles: tuple[str, ...] | None = None) -> Any:
    return field(default=None, metadata={"setting": Setting(env, default, help, secret, roles)})


def _parse_port(name: str, raw: str) -> int:
    try:
        port = int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a port number, got {raw!r}") from None
    if not 0 <= port <= 65535:
        raise ConfigError(f"{name} must be between 0 and 65535, got {port}")
    return port


def _parse_decimal(name: str, raw: str) -> Decimal:
    try:
        value = Decimal(raw)
    except InvalidOperation:
        raise ConfigError(f"{name} must be a decimal number, got {raw!r}") from None
    if not value.is_finite():
        raise ConfigError(f"{name} must be finite, got {raw!r}")
    return value


def _parse_ice_servers(name: str, raw: str) -> list[dict[str, Any]]:
    """Either a JSON list of RTCIceServer dicts or a comma-separated list of URLs."""
    raw = raw.strip()
    if not raw:
        return []
    if raw.startswith("["):
        try:
            servers = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{name} is not valid JSON: {exc.msg}") from None
        if not all(isinstance(s, dict) and "urls" in s for s in servers):
            raise ConfigError(f"{name}: every entry needs a 'urls' field")
        return list(servers)
    return [{"urls": url.strip()} for url in raw.split(",") if url.strip()]


@dataclass(frozen=True)
class Settings:
    database_url: str | None = _setting(
        "DATABASE_URL", None,
        "Postgres URL. Unset under `vilokanam dev`: it starts its own Postgres.")
    redis_url: str | None = _setting(
        "REDIS_URL", None,
        "Redis URL. Unset under `vilokanam dev`: it starts its own Redis. "
        "`redis+cluster://host:port[,host:port...]` names a Redis Cluster "
        "(docs/metering.md, \"Redis Cluster\").")
    substrate_url: str | None = _setting(
        "SUBSTRATE_URL", None,
        "WebSocket RPC URL of the Substrate chain. Unset under `vilokanam dev`: "
        "it starts the local chopsticks chain (needs Node).")
    http_host: str = _setting(
        "VILOKANAM_HTTP_HOST", "127.0.0.1", "Address the signaling server binds.")
    http_port: int = _setting(
        "VILOKANAM_HTTP_PORT", "8080", "Port of the signaling server.")
    public_url: str | None = _setting(
        "VILOKANAM_PUBLIC_URL", None,
        "Base URL clients reach signaling at; absolute WHIP/WHEP/watch URLs are built "
        "from it. Default `http://<host>:<port>`.")
    flush_interval: Decimal = _setting(
        "VILOKANAM_FLUSH_INTERVAL", "0.5",
        "Seconds between the billing worker's tick flushes (a tick reaches Postgres ~1-2.5 s "
        "after its second ends: the worker writes it during the next second, the next round "
        "takes it).")
    tick_sync_interval: Decimal = _setting(
        "VILOKANAM_TICK_SYNC_INTERVAL", "2",
        "Seconds between the billing worker's syncs of flushed ticks into the totals "
        "(payments, balances, earnings, stream_viewers); under load a sync takes longer and "
        "covers more seconds.")
    sfu_host: str = _setting(
        "VILOKANAM_SFU_HOST", "127.0.0.1",
        "Address an SFU worker binds its private control port to.")
    sfu_port: int = _setting(
        "VILOKANAM_SFU_PORT", "8090",
        "Private control (and /healthz, /metrics) port of an SFU worker.")
    sfu_advertise_url: str | None = _setting(
        "VILOKANAM_SFU_ADVERTISE_URL", None,
        "Control URL an SFU worker registers for signaling to reach it. "
        "Default `http://<sfu host>:<sfu port>`.")
    sfu_capacity: int = _setting(
        "VILOKANAM_SFU_CAPACITY", "150",
        "Upper bound on the peer connections (publishers + viewers) one SFU worker holds "
        "(one worker per core); below it, admission follows the measured load "
        "(`VILOKANAM_SFU_MAX_CPU`, `VILOKANAM_SFU_MAX_LOOP_LAG_MS`).")
    sfu_workers: int = _setting(
        "VILOKANAM_SFU_WORKERS", "1",
        "How many SFU workers `vilokanam dev` runs (one per core): the first on "
        "`VILOKANAM_SFU_PORT`, the others on the next free ports up (and on "
        "`VILOKANAM_SFU_UDP_PORT` + n if set). One stream's audience spans them (the cascade).")
    sfu_max_cpu: Decimal = _setting(
        "VILOKANAM_SFU_MAX_CPU", "0.85",
        "An SFU worker refuses new viewers (`at_capacity`) while its event-loop thread used "
        "more than this share of one core over the last second.")
    sfu_max_loop_lag_ms: int = _setting(
        "VILOKANAM_SFU_MAX_LOOP_LAG_MS", "100",
        "An SFU worker refuses new viewers while its event loop ran more than this many "
        "milliseconds behind in the last second (a backstop: the CPU share predicts; on a "
        "shared machine other processes' load alone makes a loop lag tens of ms).")
    sfu_edge_keep: Decimal = _setting(
        "VILOKANAM_SFU_EDGE_KEEP", "30",
        "Seconds an edge keeps relaying a stream after its last viewer left, so the next "
        "viewer placed there starts without waiting for a new relay (0: hand the relay back "
        "at once). A kept relay holds one peer connection on each of the two workers.")
    billing_port: int = _setting(
        "VILOKANAM_BILLING_PORT", "8070",
        "Port of the billing worker's /healthz, /readyz and /metrics.")
    data_dir: Path = _setting(
        "VILOKANAM_DATA_DIR", "./.vilokanam",
        "Where `vilokanam dev` keeps Postgres, Redis and chain data (survives restarts).")
    dev_postgres_port: int = _setting(
        "VILOKANAM_DEV_POSTGRES_PORT", "54329", "Port of the Postgres that `vilokanam dev` starts.")
    dev_redis_port: int = _setting(
        "VILOKANAM_DEV_REDIS_PORT", "63799", "Port of the Redis that `vilokanam dev` starts.")
    dev_chain_port: int = _setting(
        "VILOKANAM_DEV_CHAIN_PORT", "8000", "RPC port of the chain that `vilokanam dev` starts.")
    ice_servers: list[dict[str, Any]] = _setting(
        "VILOKANAM_ICE_SERVERS", "",
        "ICE servers for every peer connection: comma-separated URLs or a JSON list of "
        "RTCIceServer objects. Empty by default: nothing contacts a public STUN host.")
    ice_host_addresses: list[str] = _setting(
        "VILOKANAM_ICE_HOST_ADDRESSES", "",
        "Comma-separated local addresses an SFU worker offers as host ICE candidates. "
        "Empty: every interface but loopback (aioice's default). `127.0.0.1` keeps media "
        "on loopback (tests, one-machine setups).")
    sfu_udp_port: int | None = _setting(
        "VILOKANAM_SFU_UDP_PORT", None,
        "One UDP port an SFU worker serves all its peer connections' media on (ICE, DTLS, "
        "SRTP), demultiplexed by ICE username and remote address; publish just this port. "
        "Unset: a new port per peer connection (aioice's default).")
    sfu_public_ip: str | None = _setting(
        "VILOKANAM_SFU_PUBLIC_IP", None,
        "With VILOKANAM_SFU_UDP_PORT: the address the worker's host candidates announce "
        "(its public IP behind NAT, e.g. a container's published port); default: the host "
        "addresses.")
    ss58_prefix: int = _setting(
        "VILOKANAM_SS58_PREFIX", "42", "SS58 prefix in which account ids are stored.")
    token_symbol: str = _setting(
        "VILOKANAM_TOKEN_SYMBOL", "ROC", "The chain token's symbol (the dev chain's is ROC).")
    token_decimals: int = _setting(
        "VILOKANAM_TOKEN_DECIMALS", "12",
        "The chain token's decimals: 10^decimals planck = 1 token. Prices must be whole planck.")
    price_default: Decimal = _setting(
        "VILOKANAM_PRICE_DEFAULT", "0.001", "Default price per second of a stream, in tokens.")
    platform_fee: Decimal = _setting(
        "VILOKANAM_PLATFORM_FEE", "0.1", "Platform's share of each tick, a fraction (0.1 = 10%).")
    escrow_uri: str | None = _setting(
        "VILOKANAM_ESCROW_URI", None,
        "Secret URI (e.g. a mnemonic or `//Escrow`) of the platform's escrow account. "
        "Never logged; given to the billing role only. `vilokanam dev` uses the dev URI "
        "`//VilokanamEscrow`.", secret=True, roles=("billing",))
    escrow_account: str | None = _setting(
        "VILOKANAM_ESCROW_ACCOUNT", None,
        "Public address (any SS58 prefix) of the escrow account, which `GET /api/billing/info` "
        "shows viewers as where to deposit. Signaling needs only this, never the secret URI. "
        "`vilokanam dev` derives it from the dev escrow.")
    dev_mode: bool = _setting(
        "VILOKANAM_DEV_MODE", "false",
        "Enables `POST /api/dev/token` (a viewer token for any account, no signature). "
        "`vilokanam dev` turns it on; never in production.")
    token_secret: str | None = _setting(
        "VILOKANAM_TOKEN_SECRET", None,
        "HMAC secret that signs Bearer tokens (at least 32 characters). Never logged. "
        "`vilokanam dev` makes one and keeps it in its data dir. Given to the signaling role "
        "only.", secret=True, roles=("signaling",))
    settlement_period: Decimal = _setting(
        "VILOKANAM_SETTLEMENT_PERIOD", "60",
        "Seconds between creator payout batches on chain.")
    payout_threshold: Decimal = _setting(
        "VILOKANAM_PAYOUT_THRESHOLD", "10",
        "A creator whose pending payout passes this many tokens is paid without waiting for "
        "the period.")
    reconcile_interval: Decimal = _setting(
        "VILOKANAM_RECONCILE_INTERVAL", "60",
        "Seconds between the billing worker's proofs that every live balance (Redis) is "
        "ledger - charges (Postgres); a drift seen in two rounds in a row is repaired.")
    chain_public_url: str | None = _setting(
        "VILOKANAM_CHAIN_PUBLIC_URL", None,
        "Chain RPC URL given to browsers in /api/billing/info. Default: SUBSTRATE_URL.")
    explorer_url: str = _setting(
        "VILOKANAM_EXPLORER_URL",
        "https://polkadot.js.org/apps/?rpc={rpc}#/explorer/query/{block}",
        "Block explorer link the studio gives each payout: `{block}` is the block hash, "
        "`{extrinsic}` the extrinsic hash, `{rpc}` the chain RPC (URL-encoded). Empty: no link.")
    thumbnail_interval: Decimal = _setting(
        "VILOKANAM_THUMBNAIL_INTERVAL", "30",
        "Seconds between live thumbnails: an SFU worker decodes one keyframe per live stream "
        "(not per viewer) this often into `streams/<id>/thumb.jpg`. 0 turns them off.")
    upload_max_bytes: int = _setting(
        "VILOKANAM_UPLOAD_MAX_BYTES", "4294967296",
        "Largest video upload accepted, in bytes (default 4 GiB); a larger one is refused with "
        "413 before its body is read past the limit.")
    storage_dir: Path | None = _setting(
        "VILOKANAM_STORAGE_DIR", None,
        "Directory of the video storage (originals, recordings, HLS renditions, thumbnails); "
        "several hosts share it as a volume. Default `<VILOKANAM_DATA_DIR>/media`.")
    ipfs_api: str | None = _setting(
        "VILOKANAM_IPFS_API", None,
        "HTTP API of an IPFS node (e.g. `http://127.0.0.1:5001`, kubo): when set, the media role "
        "adds every video's original to it. The CIDs are computed either way.")
    s3_bucket: str | None = _setting(
        "VILOKANAM_S3_BUCKET", None,
        "When set, the video storage is this S3-compatible bucket (VILOKANAM_STORAGE_DIR then "
        "only spools files being written: live recordings, processing attempts, downloads).")
    s3_endpoint: str | None = _setting(
        "VILOKANAM_S3_ENDPOINT", None,
        "URL of the S3-compatible service (MinIO, Ceph, ...); unset: AWS S3 itself.")
    s3_region: str = _setting("VILOKANAM_S3_REGION", "us-east-1", "Region of the bucket.")
    s3_access_key: str | None = _setting(
        "VILOKANAM_S3_ACCESS_KEY", None,
        "Access key id for the bucket. Given only to signaling, sfu and media.",
        secret=True, roles=("signaling", "sfu", "media"))
    s3_secret_key: str | None = _setting(
        "VILOKANAM_S3_SECRET_KEY", None,
        "Secret access key for the bucket. Never logged; given only to signaling, sfu and "
        "media.", secret=True, roles=("signaling", "sfu", "media"))
    media_port: int = _setting(
        "VILOKANAM_MEDIA_PORT", "8060", "Port of the media role's /healthz, /readyz and /metrics.")
    media_concurrency: int = _setting(
        "VILOKANAM_MEDIA_CONCURRENCY", "1",
        "Processing jobs one media worker runs at once (each transcodes in its own thread).")
    media_job_lease: Decimal = _setting(
        "VILOKANAM_MEDIA_JOB_LEASE", "30",
        "Seconds a claimed job stays claimed without its worker renewing the lease (renewed "
        "every third of it); a worker killed mid-job loses its jobs after this.")
    media_max_attempts: int = _setting(
        "VILOKANAM_MEDIA_MAX_ATTEMPTS", "3",
        "Claims of a processing job before it fails for good.")
    playback_ttl: int = _setting(
        "VILOKANAM_PLAYBACK_TTL", "21600",
        "Seconds a video view's signed playlist and segment URLs stay valid.")
    record_streams: bool = _setting(
        "VILOKANAM_RECORD_STREAMS", "true",
        "Whether SFU workers record live sessions (a stream may still opt out with "
        "`\"record\": false`).")
    log_format: str = _setting(
        "VILOKANAM_LOG_FORMAT", "text", "`text` (key=value) or `json`: one line per event.")
    log_level: str = _setting("VILOKANAM_LOG_LEVEL", "INFO", "Log level.")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Read every setting from `env` (default: os.environ); `overrides`
        (e.g. CLI flags) win over the environment when not None."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for f in fields(cls):
            spec: Setting = f.metadata["setting"]
            override = overrides.get(f.name)
            raw = str(override) if override is not None else env.get(spec.env, spec.default)
            values[f.name] = _PARSERS.get(f.name, _keep)(spec.env, raw)
        settings = cls(**values)
        settings.validate()
        return settings

    def validate(self) -> None:
        if self.price_default <= 0:
            raise ConfigError("VILOKANAM_PRICE_DEFAULT must be greater than zero")
        if not Decimal(0) <= self.platform_fee < Decimal(1):
            raise ConfigError("VILOKANAM_PLATFORM_FEE must be a fraction in [0, 1)")
        if self.token_secret is not None and len(self.token_secret) < 32:
            raise ConfigError("VILOKANAM_TOKEN_SECRET must be at least 32 characters")
        if not 0 <= self.token_decimals <= 18:
            raise ConfigError("VILOKANAM_TOKEN_DECIMALS must be between 0 and 18")
        if self.price_default.scaleb(self.token_decimals) % 1:
            raise ConfigError("VILOKANAM_PRICE_DEFAULT must be a whole number of planck")
        if not Decimal("0.01") <= self.flush_interval <= Decimal(60):
            raise ConfigError("VILOKANAM_FLUSH_INTERVAL must be between 0.01 and 60 seconds")
        if not Decimal("0.01") <= self.tick_sync_interval <= Decimal(60):
            raise ConfigError("VILOKANAM_TICK_SYNC_INTERVAL must be between 0.01 and 60 seconds")
        if self.settlement_period <= 0 or self.payout_threshold <= 0:
            raise ConfigError("VILOKANAM_SETTLEMENT_PERIOD and VILOKANAM_PAYOUT_THRESHOLD "
                              "must be greater than zero")
        if not Decimal("0.1") <= self.reconcile_interval <= Decimal(86400):
            raise ConfigError("VILOKANAM_RECONCILE_INTERVAL must be between 0.1 and 86400 "
                              "seconds")
        if self.sfu_capacity < 1:
            raise ConfigError("VILOKANAM_SFU_CAPACITY must be at least 1")
        if not 1 <= self.sfu_workers <= 64:
            raise ConfigError("VILOKANAM_SFU_WORKERS must be between 1 and 64")
        if not Decimal(0) < self.sfu_max_cpu <= Decimal(64):
            raise ConfigError("VILOKANAM_SFU_MAX_CPU must be a share of a core above 0")
        if self.sfu_max_loop_lag_ms < 1:
            raise ConfigError("VILOKANAM_SFU_MAX_LOOP_LAG_MS must be at least 1")
        if not Decimal(0) <= self.sfu_edge_keep <= Decimal(3600):
            raise ConfigError("VILOKANAM_SFU_EDGE_KEEP must be between 0 and 3600 seconds")
        if self.upload_max_bytes < 1:
            raise ConfigError("VILOKANAM_UPLOAD_MAX_BYTES must be at least 1")
        if self.media_concurrency < 1 or self.media_max_attempts < 1:
            raise ConfigError("VILOKANAM_MEDIA_CONCURRENCY and VILOKANAM_MEDIA_MAX_ATTEMPTS "
                              "must be at least 1")
        if not Decimal(1) <= self.media_job_lease <= Decimal(3600):
            raise ConfigError("VILOKANAM_MEDIA_JOB_LEASE must be between 1 and 3600 seconds")
        if self.playback_ttl < 60:
            raise ConfigError("VILOKANAM_PLAYBACK_TTL must be at least 60 seconds")
        if self.log_format not in ("text", "json"):
            raise ConfigError("VILOKANAM_LOG_FORMAT must be 'text' or 'json'")

    @property
    def base_url(self) -> str:
        if self.public_url:
            return self.public_url.rstrip("/")
        return f"http://{self.http_host}:{self.http_port}"

    @property
    def media_dir(self) -> Path:
        return self.storage_dir if self.storage_dir is not None else self.data_dir / "media"

    @property
    def s3(self) -> S3Config | None:
        if self.s3_bucket is None:
            return None
        return S3Config(self.s3_endpoint, self.s3_bucket, self.s3_region, self.s3_access_key,
                        self.s3_secret_key)

    @property
    def sfu_control_url(self) -> str:
        if self.sfu_advertise_url:
            return self.sfu_advertise_url.rstrip("/")
        return f"http://{self.sfu_host}:{self.sfu_port}"

    def as_env(self, role: str | None = None) -> dict[str, str]:
        """The environment that reproduces these settings in a child process;
        for `role`, without the settings (secrets) meant for other roles."""
        env: dict[str, str] = {}
        for f in fields(self):
            spec: Setting = f.metadata["setting"]
            value = getattr(self, f.name)
            if value is None or (role and spec.roles and role not in spec.roles):
                continue
            if f.name == "ice_host_addresses":
                env[spec.env] = ",".join(value)
            elif isinstance(value, list):
                env[spec.env] = json.dumps(value)
            elif isinstance(value, bool):
                env[spec.env] = "true" if value else "false"
            else:
                env[spec.env] = str(value)
        return env


def _keep(_name: str, raw: str | None) -> str | None:
    return raw


def _optional(parse: Callable[[str, str], Any]) -> Callable[[str, str | None], Any]:
    def parse_optional(name: str, raw: str | None) -> Any:
        return None if raw is None else parse(name, raw)

    return parse_optional


def _parse_bool(name: str, raw: str) -> bool:
    lowered = raw.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise ConfigError(f"{name} must be true or false, got {raw!r}")


def _parse_int(name: str, raw: str) -> int:
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be an integer, got {raw!r}") from None


_PARSERS: dict[str, Callable[[str, str | None], Any]] = {
    "http_port": _optional(_parse_port),
    "sfu_port": _optional(_parse_port),
    "billing_port": _optional(_parse_port),
    "dev_postgres_port": _optional(_parse_port),
    "dev_redis_port": _optional(_parse_port),
    "dev_chain_port": _optional(_parse_port),
    "data_dir": _optional(lambda _n, raw: Path(raw)),
    "storage_dir": _optional(lambda _n, raw: Path(raw)),
    "media_port": _optional(_parse_port),
    "upload_max_bytes": _optional(_parse_int),
    "media_concurrency": _optional(_parse_int),
    "media_max_attempts": _optional(_parse_int),
    "media_job_lease": _optional(_parse_decimal),
    "playback_ttl": _optional(_parse_int),
    "record_streams": _optional(_parse_bool),
    "ice_servers": _optional(_parse_ice_servers),
    "ice_host_addresses": _optional(
        lambda _n, raw: [a.strip() for a in raw.split(",") if a.strip()]),
    "ss58_prefix": _optional(_parse_int),
    "sfu_capacity": _optional(_parse_int),
    "sfu_workers": _optional(_parse_int),
    "sfu_max_cpu": _optional(_parse_decimal),
    "sfu_max_loop_lag_ms": _optional(_parse_int),
    "sfu_edge_keep": _optional(_parse_decimal),
    "sfu_udp_port": _optional(_parse_port),
    "token_decimals": _optional(_parse_int),
    "dev_mode": _optional(_parse_bool),
    "price_default": _optional(_parse_decimal),
    "platform_fee": _optional(_parse_decimal),
    "thumbnail_interval": _optional(_parse_decimal),
    "flush_interval": _optional(_parse_decimal),
    "tick_sync_interval": _optional(_parse_decimal),
    "settlement_period": _optional(_parse_decimal),
    "payout_threshold": _optional(_parse_decimal),
    "reconcile_interval": _optional(_parse_decimal),
}


def all_settings() -> list[Setting]:
    return [f.metadata["setting"] for f in fields(Settings)]


def redact_url(url: str) -> str:
    """A URL fit for a log line or an error message: the password is hidden."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))
