"""The community routes and the resources they own, added to the signaling
app in one place (signaling/app.py calls `add_community`)."""

from __future__ import annotations

from aiohttp import web

from signaling.community import (
    categories,
    chat,
    comments,
    dashboard,
    follows,
    likes,
    moderation,
    profile_images,
    profiles,
    reports,
)
from signaling.community.presence import presence_ctx


def add_community(app: web.Application) -> None:
    """Call after `events_ctx` is in the cleanup contexts (presence listens
    through the EventHub) and before the websocket routes (whose clean-up
    must run first)."""
    app.cleanup_ctx.append(presence_ctx)
    r = app.router
    r.add_get("/api/categories", categories.list_categories)
    r.add_post("/api/categories", categories.create_category)
    r.add_put("/api/videos/{video_id}/categories", categories.put_video_categories)
    r.add_get("/api/users/{account}", profiles.get_profile)
    r.add_patch("/api/me", profiles.update_me)
    r.add_put("/api/me/profile-image", profile_images.put_profile_image)
    r.add_delete("/api/me/profile-image", profile_images.delete_profile_image)
    r.add_get("/api/users/{account}/profile-image", profile_images.get_profile_image)
    r.add_post("/api/users/{account}/follow", follows.follow)
    r.add_delete("/api/users/{account}/follow", follows.unfollow)
    r.add_get("/api/users/{account}/followers", follows.followers_of)
    r.add_get("/api/users/{account}/following", follows.following_of)
    r.add_get("/api/me/following", follows.my_following)
    r.add_get("/api/me/feed", follows.my_feed)
    r.add_post("/api/streams/{stream_id}/comments", chat.post_stream_comment)
    r.add_get("/api/streams/{stream_id}/comments", chat.list_stream_comments)
    r.add_post("/api/videos/{video_id}/comments", comments.post_video_comment)
    r.add_get("/api/videos/{video_id}/comments", comments.list_video_comments)
    r.add_delete("/api/comments/{comment_id}", comments.delete_comment)
    r.add_get("/api/videos/{video_id}/like", likes.my_video_like)
    r.add_post("/api/videos/{video_id}/like", likes.like_video)
    r.add_delete("/api/videos/{video_id}/like", likes.unlike_video)
    r.add_get("/api/videos/{video_id}/comment-likes", likes.my_comment_likes)
    r.add_post("/api/comments/{comment_id}/like", likes.like_comment)
    r.add_delete("/api/comments/{comment_id}/like", likes.unlike_comment)
    r.add_post("/api/reports", reports.create_report)
    r.add_get("/api/moderation/reports", moderation.list_reports)
    r.add_post("/api/moderation/reports/{report_id}", moderation.act_on_report)
    r.add_get("/api/me/dashboard", dashboard.my_dashboard)
    r.add_get("/api/videos/{video_id}/analytics", dashboard.video_analytics)
