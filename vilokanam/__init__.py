"""Vilokanam-view: pay-per-second live streaming.

This package is the platform's shared core — configuration, database and Redis
access, money, ids, migrations, logging, the local service supervisors and the
`vilokanam` command. The roles live beside it: `signaling`, `sfu`, `billing`.
"""

__version__ = "0.1.0"
