"""Signaling server (aiohttp): the websocket protocol, WHIP/WHEP, the REST API,
the pages and authentication. It holds no media: it places streams on SFU
workers and talks to them over their private HTTP control port."""
