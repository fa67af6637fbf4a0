"""The social pages of the web app, rendered like signaling/pages.py's:

| path | page |
|---|---|
| `/c/{account}` | a channel: profile, Follow, the live stream when live, videos, past streams |
| `/category/{category_id}` | a category: its live streams and its videos |
| `/moderation` | the moderation queue (moderators; the API refuses anyone else) |

Everything shown comes from the same queries as the API (profiles, streams
search, ready videos), rendered as text by autoescaping."""

from __future__ import annotations

from aiohttp import web

from signaling.api import search_streams
from signaling.community.categories import all_categories
from signaling.community.profiles import PROFILE_SELECT
from signaling.pages import not_found_page, render
from signaling.state import SETTINGS
from signaling.videos import ready_videos
from vilokanam.accounts import InvalidAccount, canonical_account
from vilokanam.backends import BACKENDS

CHANNEL_VIDEOS = 24
CHANNEL_PAST_STREAMS = 20
CATEGORY_STREAMS = 48
CATEGORY_VIDEOS = 24


async def channel_page(request: web.Request) -> web.Response:
    """A user's channel by account (any SS58 prefix); unknown: the 404 page."""
    try:
        account = canonical_account(request.match_info["account"],
                                    request.app[SETTINGS].ss58_prefix)
    except InvalidAccount:
        return not_found_page(request, "channel")
    profile = await request.app[BACKENDS].pg.fetchrow(
        f"{PROFILE_SELECT} WHERE u.account_id = $1", account)
    if profile is None:
        return not_found_page(request, "channel")
    live = await search_streams(request.app, status="live", query=None, limit=1, offset=0,
                                creator_account=account)
    past = await search_streams(request.app, status="ended", query=None,
                                limit=CHANNEL_PAST_STREAMS, offset=0, creator_account=account)
    past.sort(key=lambda s: s["end_time"] or "", reverse=True)
    videos = await ready_videos(request.app, account, None, CHANNEL_VIDEOS, 0)
    image = profile["profile_image_url"]
    return render(request, "channel.html", "channel", profile=dict(profile),
                  live=live[0] if live else None, past_streams=past, videos=videos,
                  # Only our own uploads load: the CSP allows images from this origin.
                  image_url=image if image and image.startswith("/") else None,
                  # A live channel plays its stream with the watch page's player.
                  config={"channelAccount": account,
                          "streamId": live[0]["id"] if live else None})


async def category_page(request: web.Request) -> web.Response:
    categories = await all_categories(request.app[BACKENDS].pg)
    wanted = request.match_info["category_id"]
    category = next((c for c in categories if c["id"] == wanted), None)
    if category is None:
        return not_found_page(request, "category")
    streams = await search_streams(request.app, status="live", query=None,
                                   limit=CATEGORY_STREAMS, offset=0, category_id=category["id"])
    videos = await ready_videos(request.app, None, category["id"], CATEGORY_VIDEOS, 0)
    return render(request, "category.html", "category", category=category,
                  categories=categories, streams=streams, videos=videos,
                  config={"category": category["id"]})


async def moderation_page(request: web.Request) -> web.Response:
    """The queue itself is fetched by the page with the moderator's token."""
    return render(request, "moderation.html", "moderation")


def add_social_page_routes(app: web.Application) -> None:
    """After add_page_routes (it sets up the templates these pages use)."""
    app.router.add_get("/c/{account}", channel_page)
    app.router.add_get("/category/{category_id}", category_page)
    app.router.add_get("/moderation", moderation_page)
