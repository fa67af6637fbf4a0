"""One Redis client from `REDIS_URL`: a standalone Redis (`redis://`,
`rediss://`, `unix://`) or a Redis Cluster (`redis+cluster://host:port[,host:port...]`,
any of its nodes; the client discovers the rest).

The scheme, not a second setting, says which: a URL is passed to every role
and child process as it is, so one variable cannot disagree with another.
The key layout follows the client's type (vilokanam/keyspace.py)."""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote, urlsplit

import redis.asyncio as aioredis
from redis.asyncio.client import PubSub
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.exceptions import RedisClusterException, RedisError

CLUSTER_SCHEME = "redis+cluster"
# What a Redis that does not answer raises: a cluster none of whose nodes
# answers raises RedisClusterException, which is not a RedisError.
REDIS_ERRORS: tuple[type[Exception], ...] = (OSError, RedisError, RedisClusterException)


class ClusterClient(RedisCluster):
    """redis-py's cluster client, plus `pubsub()` and `publish()`: its
    asyncio client has neither. A cluster broadcasts every PUBLISH to all its
    nodes, so a subscriber on any one node hears every message; both go
    through the first node named in the URL."""

    def __init__(self, *args: Any, pubsub_node: ClusterNode, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._subscriber = aioredis.Redis(
            host=pubsub_node.host, port=pubsub_node.port, username=kwargs.get("username"),
            password=kwargs.get("password"),
            socket_connect_timeout=kwargs.get("socket_connect_timeout"))

    def pubsub(self, **kwargs: Any) -> PubSub:
        return self._subscriber.pubsub(**kwargs)

    async def publish(self, channel: str | bytes, message: str | bytes) -> int:
        return int(await self._subscriber.publish(channel, message))

    async def aclose(self) -> None:
        await self._subscriber.aclose()
        await super().aclose()


def is_cluster_url(url: str) -> bool:
    return url.split("://", 1)[0].lower() == CLUSTER_SCHEME


def cluster_nodes(url: str) -> list[ClusterNode]:
    """The `host:port` list of a `redis+cluster://` URL (port 6379 if omitted)."""
    netloc = urlsplit(url).netloc.rsplit("@", 1)[-1]
    nodes = []
    for part in filter(None, netloc.split(",")):
        host, _, port = part.rpartition(":") if ":" in part else (part, "", "6379")
        nodes.append(ClusterNode(host.strip("[]"), int(port)))
    if not nodes:
        raise ValueError("a redis+cluster:// URL names at least one host:port")
    return nodes


def _credentials(url: str) -> dict[str, Any]:
    netloc = urlsplit(url).netloc
    if "@" not in netloc:
        return {}
    user, _, password = netloc.rsplit("@", 1)[0].partition(":")
    return {"username": unquote(user) or None, "password": unquote(password) or None}


def redis_from_url(url: str, **kwargs: Any) -> aioredis.Redis:
    """A client for `url`; `kwargs` are redis-py's connection options. A
    cluster client is typed as a Redis client: the commands the project uses
    are the same on both (what differs, the keys' slots, keyspace.py handles)."""
    if not is_cluster_url(url):
        return aioredis.Redis.from_url(url, **kwargs)
    nodes = cluster_nodes(url)
    kwargs.pop("health_check_interval", None)
    client = ClusterClient(startup_nodes=nodes, pubsub_node=nodes[0], **_credentials(url),
                           **kwargs)
    return client  # type: ignore[return-value]
