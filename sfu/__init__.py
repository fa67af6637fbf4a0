"""SFU worker (aiortc): peer connections, forwarding of encoded frames without
re-encoding, stream lifecycle and tick emission. One process per core; each
serves a private HTTP control port that only signaling talks to."""
