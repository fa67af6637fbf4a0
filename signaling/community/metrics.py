"""Prometheus counters of the community features: what an operator watches
for abuse (a report or chat flood) and growth."""

from __future__ import annotations

from prometheus_client import Counter

CHAT_MESSAGES = Counter("vilokanam_chat_messages", "Chat messages accepted, by front",
                        ["front"])  # front: ws or rest
CHAT_REFUSED = Counter("vilokanam_chat_refused", "Chat messages refused, by code", ["code"])
COMMENTS = Counter("vilokanam_comments", "Comments posted on videos")
REPORTS = Counter("vilokanam_reports", "Reports filed, by target type", ["target_type"])
MODERATION_ACTIONS = Counter("vilokanam_moderation_actions", "Moderator actions, by action",
                             ["action"])
FOLLOWS = Counter("vilokanam_follows", "Follow changes, by change", ["change"])  # follow/unfollow
FOLLOWED_LIVE_SENT = Counter("vilokanam_followed_live_sent",
                             "followed_live alerts delivered to websockets on this server")
LIKES = Counter("vilokanam_likes", "Like changes, by target and change", ["target", "change"])
