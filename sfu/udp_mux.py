"""One UDP port for every peer connection of a worker (VILOKANAM_SFU_UDP_PORT),
as LiveKit's `rtc.udp_port` and mediasoup's WebRtcServer do: a deployment
publishes one port per worker instead of a range or host networking.

Every ICE connection of the worker gets a `StunProtocol` whose transport is a
`MuxTransport` over the one socket. An incoming datagram goes to the
connection that owns its source address; a STUN binding request from an
address not seen yet is routed by the local ICE username fragment in its
USERNAME attribute ("<our ufrag>:<their ufrag>"), which also makes that
address known. So ICE, DTLS, SRTP and RTCP of all viewers and publishers
share the port. Host candidates announce the configured addresses (or
VILOKANAM_SFU_PUBLIC_IP behind NAT) with that port."""

from __future__ import annotations

import asyncio
import logging
import socket
from dataclasses import dataclass, field
from typing import Any

from aioice import stun
from prometheus_client import Counter

from vilokanam.logs import log_event

log = logging.getLogger(__name__)

MAGIC_COOKIE = b"\x21\x12\xa4\x42"
RECEIVE_BUFFER = 8 * 1024 * 1024  # every publisher's ingest lands here (capped by rmem_max)

UNROUTED = Counter("vilokanam_sfu_udp_mux_unrouted_total",
                   "Datagrams on the worker's shared UDP port that belong to no connection.")


def stun_username(data: bytes) -> str | None:
    """The USERNAME of a STUN binding request, None for anything else."""
    if len(data) < 20 or data[0] > 3 or data[4:8] != MAGIC_COOKIE:
        return None
    try:
        message = stun.parse_message(data)
    except ValueError:
        return None
    if message.message_class != stun.Class.REQUEST:
        return None
    username = message.attributes.get("USERNAME")
    return username if isinstance(username, str) else None


@dataclass
class MuxRoutes:
    """Who gets a datagram: pure bookkeeping, no sockets."""

    by_ufrag: dict[str, Any] = field(default_factory=dict)  # local ufrag -> protocol
    by_address: dict[tuple[str, int], Any] = field(default_factory=dict)

    def add(self, ufrag: str, protocol: Any) -> None:
        self.by_ufrag.setdefault(ufrag, protocol)

    def remove(self, protocol: Any) -> None:
        for ufrag in [u for u, p in self.by_ufrag.items() if p is protocol]:
            del self.by_ufrag[ufrag]
        for address in [a for a, p in self.by_address.items() if p is protocol]:
            del self.by_address[address]

    def sent_to(self, address: tuple[str, int], protocol: Any) -> None:
        if self.by_address.get(address) is not protocol:
            self.by_address[address] = protocol

    def route(self, data: bytes, address: tuple[str, int]) -> Any:
        protocol = self.by_address.get(address)
        if protocol is not None:
            return protocol
        username = stun_username(data)
        if username is None:
            return None
        protocol = self.by_ufrag.get(username.split(":", 1)[0])
        if protocol is not None:
            self.by_address[address] = protocol
        return protocol


class MuxTransport(asyncio.DatagramTransport):
    """What one connection's StunProtocol sees: the shared socket, its own
    routes. `get_extra_info("socket")` is the shared socket (the forwarder's
    batch sender duplicates it)."""

    def __init__(self, mux: UdpMux, protocol: Any) -> None:
        super().__init__()
        self._mux, self._protocol = mux, protocol
        self._closing = False

    def sendto(self, data: Any, addr: Any = None) -> None:
        address = (addr[0], addr[1])
        self._mux.routes.sent_to(address, self._protocol)
        self._mux.sendto(data, address)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._mux.extra(name, default)

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        self._mux.routes.remove(self._protocol)
        asyncio.get_running_loop().call_soon(self._protocol.connection_lost, None)

    def abort(self) -> None:
        self.close()


class _MuxProtocol(asyncio.DatagramProtocol):
    def __init__(self, mux: UdpMux) -> None:
        self._mux = mux

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        address = (addr[0], addr[1])
        protocol = self._mux.routes.route(data, address)
        if protocol is None:
            UNROUTED.inc()
            return
        protocol.datagram_received(data, address)

    def error_received(self, exc: Exception) -> None:  # ICMP unreachable etc.: UDP goes on
        log_event(log, "udp_mux.error", logging.DEBUG, error=repr(exc))


@dataclass
class UdpMux:
    bind_host: str
    port: int
    announced: list[str]  # addresses the host candidates carry
    routes: MuxRoutes = field(default_factory=MuxRoutes)
    _transport: asyncio.DatagramTransport | None = None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._transport, _ = await loop.create_datagram_endpoint(
            lambda: _MuxProtocol(self), local_addr=(self.bind_host, self.port),
            reuse_port=False)
        sock = self._transport.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
        self.port = self._transport.get_extra_info("sockname")[1]
        log_event(log, "udp_mux.listening", host=self.bind_host, port=self.port,
                  announced=",".join(self.announced))

    def sendto(self, data: bytes, address: tuple[str, int]) -> None:
        if self._transport is not None:
            self._transport.sendto(data, address)

    def extra(self, name: str, default: Any = None) -> Any:
        return self._transport.get_extra_info(name, default) if self._transport else default

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
            self._transport = None

    async def host_candidates(self, connection: Any, component: int) -> list[Any]:
        """Stands in for aioice's Connection.get_component_candidates: host
        candidates on the shared port, one protocol per announced address."""
        from aioice.candidate import candidate_foundation, candidate_priority
        from aioice.ice import Candidate, StunProtocol

        candidates = []
        for address in self.announced:
            protocol = StunProtocol(connection)
            protocol.connection_made(MuxTransport(self, protocol))
            protocol.local_candidate = Candidate(
                foundation=candidate_foundation("host", "udp", address), component=component,
                transport="udp", priority=candidate_priority(component, "host"), host=address,
                port=self.port, type="host")
            connection._protocols.append(protocol)
            self.routes.add(connection.local_username, protocol)
            candidates.append(protocol.local_candidate)
        return candidates
