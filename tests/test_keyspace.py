"""The tick path's key names: unchanged on a standalone Redis, one hash slot
per shard in a cluster (what lets each script run there); and the
`redis+cluster://` URL they are chosen by."""

from __future__ import annotations

import uuid

import pytest
from redis.crc import key_slot

from vilokanam.keyspace import CLUSTER_SHARDS, STANDALONE, TickKeys, batch_id_of, batch_key
from vilokanam.redis_client import ClusterClient, cluster_nodes, is_cluster_url, redis_from_url

CLUSTER = TickKeys(cluster=True)


def test_standalone_names_are_the_documented_ones() -> None:
    user = str(uuid.uuid4())
    assert STANDALONE.shards == [None]
    assert STANDALONE.balance(user) == f"vk:bal:{user}"
    assert STANDALONE.pending(None) == "vk:ticks:pending"
    assert batch_key(STANDALONE.batch_id("w1:100", None)) == "vk:ticks:batch:w1:100"
    assert STANDALONE.user_of_balance(f"vk:bal:{user}".encode()) == user


def test_a_users_balance_batches_and_pending_index_share_one_slot_in_a_cluster() -> None:
    users = [str(uuid.uuid4()) for _ in range(200)]
    shards = {CLUSTER.shard(u) for u in users}
    assert shards == set(range(CLUSTER_SHARDS))  # 200 users reach every shard
    for user in users:
        shard = CLUSTER.shard(user)
        slots = {key_slot(CLUSTER.balance(user).encode()),
                 key_slot(CLUSTER.pending(shard).encode()),
                 key_slot(batch_key(CLUSTER.batch_id("w1:100", shard)).encode())}
        assert len(slots) == 1, (user, slots)
        assert CLUSTER.user_of_balance(CLUSTER.balance(user)) == user
        assert CLUSTER.balance(user).startswith(CLUSTER.balance_prefix(shard))
    # different shards are different slots (else 16 tags would spread nothing)
    assert len({key_slot(CLUSTER.pending(s).encode()) for s in CLUSTER.shards}) == CLUSTER_SHARDS


def test_a_parts_batch_id_keeps_worker_and_second() -> None:
    part = CLUSTER.batch_id("bench-w0001:1700000000", 7)
    assert part == "bench-w0001:1700000000{t7}"
    assert batch_id_of(batch_key(part)) == part
    assert part.rsplit(":", 1)[0] == "bench-w0001"


def test_group_splits_users_by_shard() -> None:
    users = [str(uuid.uuid4()) for _ in range(50)]
    groups = CLUSTER.group(users)
    assert sorted(u for g in groups.values() for u in g) == sorted(users)
    assert all(CLUSTER.shard(u) == shard for shard, g in groups.items() for u in g)
    assert STANDALONE.group(users) == {None: users}


def test_a_cluster_url_names_its_nodes() -> None:
    url = "redis+cluster://:s3cret@10.0.0.1:7000,10.0.0.2:7001,redis-3"
    assert is_cluster_url(url) and not is_cluster_url("redis://127.0.0.1:6379/0")
    assert [(n.host, n.port) for n in cluster_nodes(url)] == [
        ("10.0.0.1", 7000), ("10.0.0.2", 7001), ("redis-3", 6379)]
    with pytest.raises(ValueError):
        cluster_nodes("redis+cluster://")


async def test_the_url_picks_the_client() -> None:
    cluster = redis_from_url("redis+cluster://127.0.0.1:7000")
    standalone = redis_from_url("redis://127.0.0.1:6379/0")
    try:
        assert isinstance(cluster, ClusterClient)
        assert not isinstance(standalone, ClusterClient)
    finally:
        await cluster.aclose()
        await standalone.aclose()
