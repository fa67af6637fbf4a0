"""Routing: what signaling servers and SFU workers share, and nothing else.

The worker registry and heartbeats (`registry`), stream pins and placement
(`placement`), the reaper of dead workers (`reaper`) and the event channels
workers publish on (`channels`). Signaling and the workers meet here, in the
worker control HTTP API, and in Postgres; neither imports the other
(docs/architecture.md)."""
