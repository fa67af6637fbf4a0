"""The community routes' part of the OpenAPI document (signaling/openapi.py
merges it in; tests/test_openapi.py checks it against the app's routes)."""

from __future__ import annotations

from typing import Any

from signaling.openapi_schema import (
    _BEARER,
    _BOOL,
    _CATEGORY,
    _INT,
    _NSTR,
    _PAGING,
    _SS58,
    _STR,
    _TIME,
    _body,
    _error,
    _json,
    _obj,
    _op,
    _ref,
    _text,
)

Schema = dict[str, Any]

_UUID: Schema = {"type": "string", "format": "uuid"}
# anyOf, not `type: [string, null]`: schemathesis' coverage phase drops the
# format of a multi-type schema and sends "" as a valid id.
_NUUID: Schema = {"anyOf": [_UUID, {"type": "null"}]}
_NO_NUL = r"^[^\x00]*$"
_NINT: Schema = {"type": ["integer", "null"]}
_AMOUNT: Schema = {"type": "string", "pattern": r"^-?\d+(\.\d+)?$"}


def _path(name: str, schema: Schema | None = None) -> Schema:
    return {"name": name, "in": "path", "required": True, "schema": schema or _UUID}


_ACCOUNT = _path("account", _SS58)
_STREAM = _path("stream_id")
_VIDEO = _path("video_id")
_COMMENT = _path("comment_id")
_REPORT = _path("report_id")
_LIMIT = _PAGING[0]
_BEFORE = {"name": "before", "in": "query", "schema": _UUID,
           "description": "the id of the oldest comment already seen (keyset paging)"}


def _report(target_type: Schema, target_id: Schema) -> Schema:
    return _obj({"target_type": target_type, "target_id": target_id,
                 "reason": {"enum": ["spam", "harassment", "hate", "violence", "sexual_content",
                                     "illegal", "copyright", "impersonation", "misinformation",
                                     "other"]},
                 "description": {"type": ["string", "null"], "maxLength": 2000,
                                 "pattern": _NO_NUL}},
                required=["target_type", "target_id", "reason"])


def _conflict(text: str) -> Schema:
    return _json({"$ref": "#/components/schemas/Error"}, text)


COMMUNITY_SCHEMAS: dict[str, Schema] = {
    "Category": _obj({"id": _UUID, "name": _STR, "description": _NSTR}),
    "Categories": _obj({"categories": {"type": "array", "items": _ref("Category")}}),
    "NewCategory": _obj({"name": _text(100),
                         "description": {"type": ["string", "null"], "maxLength": 1000,
                                         "pattern": _NO_NUL}}, required=["name"]),
    "Profile": _obj({"account": _STR, "username": _NSTR, "bio": _NSTR,
                     "profile_image_url": _NSTR, "is_creator": _BOOL, "follower_count": _INT,
                     "following_count": _INT, "role": {"enum": ["user", "moderator"]},
                     "suspended": _BOOL, "live_stream_id": _NUUID, "created_at": _TIME}),
    "OwnProfile": {"allOf": [_ref("Profile"), _obj({"email": _NSTR})]},
    "ProfileChange": {**_obj({
        "username": {"type": ["string", "null"], "pattern": r"^[A-Za-z0-9_][A-Za-z0-9_.-]{2,49}$"},
        "bio": {"type": ["string", "null"], "maxLength": 1000, "pattern": _NO_NUL},
        # "" clears a field, as null does
        "profile_image_url": {"type": ["string", "null"], "maxLength": 2000,
                              "pattern": r"^(https?://[^\s/?#@\[\]\x00]+([/?#][^\s\x00]*)?)?$",
                              "description": "an absolute http(s) URL"},
        "email": {"type": ["string", "null"], "maxLength": 255,
                  "pattern": r"^([^@\s\x00]{1,64}@[^@\s\x00]+\.[^@\s\x00]+)?$"}},
        required=[]), "minProperties": 1},
    "Profiles": _obj({"users": {"type": "array", "items": _ref("Profile")},
                      "limit": _INT, "offset": _INT}),
    "Follow": _obj({"following": _BOOL, "follower_count": _INT}),
    "VideoSummary": _obj({"id": _UUID, "title": _STR, "creator_account": _STR,
                          "thumbnail_url": _NSTR, "duration": _NINT, "view_count": _INT,
                          "like_count": _INT, "published_at": _TIME}),
    "Feed": _obj({"live": {"type": "array", "items": _ref("Stream")},
                  "videos": {"type": "array", "items": _ref("VideoSummary")}}),
    "NewComment": _obj({"content": {**_text(5000), "description": "on a video"},
                        "parent_id": _NUUID}, required=["content"]),
    "NewChatMessage": _obj({"content": {**_text(500), "description": "a chat line"},
                            "parent_id": _NUUID}, required=["content"]),
    "Comment": _obj({"id": _UUID, "content": _NSTR, "author_account": _NSTR,
                     "author_username": _NSTR, "created_at": _TIME, "parent_id": _NUUID,
                     "depth": _INT, "like_count": _INT, "is_deleted": _BOOL,
                     "stream_id": _UUID, "video_id": _UUID, "reply_count": _INT},
                    required=["id", "content", "author_account", "created_at", "parent_id",
                              "is_deleted"]),
    "Comments": _obj({"comments": {"type": "array", "items": _ref("Comment")},
                      "next_before": _NUUID}),
    "Like": _obj({"liked": _BOOL, "like_count": _INT}),
    "CommentLikes": _obj({"comment_ids": {"type": "array", "items": _UUID}}),
    # A user may be named by its account too; the other targets by their id.
    "NewReport": {"oneOf": [_report({"enum": ["video", "comment", "stream"]}, _UUID),
                            _report({"const": "user"}, {"anyOf": [_UUID, _SS58]})]},
    "Report": _obj({"id": _UUID, "status": {"enum": ["pending", "reviewed", "action_taken",
                                                     "dismissed"]},
                    "target_type": _STR, "target_id": _UUID, "reason": _STR,
                    "description": _NSTR, "created_at": _TIME}),
    "QueuedReport": {"allOf": [_ref("Report"), _obj({
        "action": {"enum": ["dismiss", "remove", "suspend", None]},
        "reporter_account": _STR, "reviewed_by_account": _NSTR, "reviewed_at": _TIME,
        "target": _obj({"owner_account": _NSTR, "text": _NSTR,
                        "state": {"type": ["string", "null"],
                                  "description": "visible/deleted (comment), the video's or "
                                                 "stream's status, active/suspended (user)"}})})]},
    "Reports": _obj({"reports": {"type": "array", "items": _ref("QueuedReport")},
                     "limit": _INT, "offset": _INT}),
    "ModerationAction": _obj({"action": {"enum": ["dismiss", "remove", "suspend"]}}),
    "Dashboard": _obj({
        "creator_id": _UUID, "username": _NSTR, "total_videos": _INT, "total_streams": _INT,
        "total_video_views": _INT, "total_stream_viewers": _INT, "last_activity": _TIME,
        "total_earnings": _AMOUNT, "pending_payout": _AMOUNT, "follower_count": _INT,
        "hours": _INT,
        "viewers_over_time": {"type": "array", "items": _obj({
            "minute": _TIME, "viewers": _INT, "streams": _INT})}}),
    "VideoAnalytics": _obj({
        "video_id": _UUID, "title": _STR, "duration": _NINT, "view_count": _INT,
        "like_count": _INT, "comment_count": _INT, "unique_viewers": _INT,
        "total_views": _INT, "avg_view_duration": _NSTR, "avg_watch_completion": _NSTR,
        "published_at": _TIME, "created_at": _TIME}),
}

_AUTH = {"401": _error("Unauthorized"),
         "403": _json({"$ref": "#/components/schemas/Error"}, "`suspended`, or not allowed")}


def _like_ops(what: str, param: Schema) -> Schema:
    answers = {"200": _json(_ref("Like"), "the caller's like and the exact count"),
               "400": _error("BadRequest"), **_AUTH, "404": _error("NotFound"),
               "409": _conflict(f"the {what} cannot be liked (not ready / deleted)")}
    return {"parameters": [param],
            "post": _op(f"Like the {what} (idempotent)", answers, security=_BEARER),
            "delete": _op("Take the like back (idempotent)", answers, security=_BEARER)}


def community_paths() -> dict[str, Schema]:
    comments = {"200": _json(_ref("Comments"), "newest first"), "400": _error("BadRequest"),
                "404": _error("NotFound")}
    posted = {"201": _json(_ref("Comment"), "the comment"), "400": _error("BadRequest"),
              **_AUTH, "404": _error("NotFound"), "413": _error("PayloadTooLarge")}
    follow = {"200": _json(_ref("Follow"), "the follow and the exact count"),
              "400": _json({"$ref": "#/components/schemas/Error"},
                           "`cannot_follow_self`, `invalid_account`"),
              **_AUTH, "404": _error("NotFound")}
    profiles = {"200": _json(_ref("Profiles"), "a page of profiles"),
                "400": _error("BadRequest"), "404": _error("NotFound")}
    return {
        "/api/categories": {
            "get": _op("Categories", {"200": _json(_ref("Categories"), "all categories")}),
            "post": _op("Add a category (moderators)", {
                "201": _json(_ref("Category"), "the category"), "400": _error("BadRequest"),
                **_AUTH, "409": _conflict("`category_exists` (names ignore case)")},
                requestBody=_body(_ref("NewCategory")), security=_BEARER)},
        "/api/videos/{video_id}/categories": {"put": _op(
            "Set a video's categories (its creator; at most 5, ids or names)", {
                "200": _json(_ref("Categories"), "the video's categories"),
                "400": _error("BadRequest"), **_AUTH, "404": _error("NotFound"),
                "413": _error("PayloadTooLarge")},
            parameters=[_VIDEO], requestBody=_body(_obj({"categories": {
                "type": "array", "maxItems": 5, "items": _CATEGORY}})), security=_BEARER)},
        "/api/users/{account}": {"get": _op("A public profile (never the email)", {
            "200": _json(_ref("Profile"), "the profile"), "400": _error("BadRequest"),
            "404": _error("NotFound")}, parameters=[_ACCOUNT])},
        "/api/me": {"patch": _op("Edit the caller's profile (null clears a field)", {
            "200": _json(_ref("OwnProfile"), "the caller's profile, with its email"),
            "400": _error("BadRequest"), **_AUTH, "413": _error("PayloadTooLarge"),
            "409": _conflict("`username_taken` / `email_taken` (case-insensitive)")},
            requestBody=_body(_ref("ProfileChange")), security=_BEARER)},
        "/api/me/profile-image": {
            "put": _op("Upload the caller's profile image (PNG, JPEG, WebP; 512 KiB)", {
                "200": _json(_ref("Profile"), "the profile, profile_image_url set to ours"),
                "400": _json({"$ref": "#/components/schemas/Error"},
                             "`not_an_image`: the bytes are not the declared type"),
                **_AUTH, "413": _error("PayloadTooLarge"),
                "415": _json({"$ref": "#/components/schemas/Error"}, "not an image type")},
                requestBody={"required": True, "content": {
                    t: {"schema": {"type": "string", "format": "binary"}}
                    for t in ("image/png", "image/jpeg", "image/webp")}},
                security=_BEARER),
            "delete": _op("Remove the uploaded profile image", {
                "200": _json(_ref("Profile"), "the profile"), **_AUTH}, security=_BEARER)},
        "/api/users/{account}/profile-image": {"get": _op("A user's uploaded profile image", {
            "200": {"description": "the image (`ETag`, immutable caching, `nosniff`)",
                    "content": {"image/*": {"schema": {"type": "string",
                                                       "format": "binary"}}}},
            "304": {"description": "not modified (`If-None-Match`)"},
            "400": _error("BadRequest"), "404": _error("NotFound")},
            parameters=[_ACCOUNT])},
        "/api/users/{account}/follow": {
            "parameters": [_ACCOUNT],
            "post": _op("Follow (idempotent)", follow, security=_BEARER),
            "delete": _op("Unfollow (idempotent)", follow, security=_BEARER)},
        "/api/users/{account}/followers": {"get": _op(
            "Who follows this user", profiles, parameters=[_ACCOUNT, *_PAGING])},
        "/api/users/{account}/following": {"get": _op(
            "Whom this user follows", profiles, parameters=[_ACCOUNT, *_PAGING])},
        "/api/me/following": {"get": _op("Whom the caller follows", {
            "200": _json(_ref("Profiles"), "a page of profiles"), "400": _error("BadRequest"),
            **_AUTH}, parameters=_PAGING, security=_BEARER)},
        "/api/me/feed": {"get": _op("Followed creators' live streams and new videos", {
            "200": _json(_ref("Feed"), "the feed"), **_AUTH}, security=_BEARER)},
        "/api/streams/{stream_id}/comments": {
            "parameters": [_STREAM],
            "post": _op("Chat on a stream (also pushed on /ws to its chatters)", {
                **posted, "409": _conflict("`chat_closed`: the stream has ended"),
                "429": _json({"$ref": "#/components/schemas/Error"},
                             "`chat_rate_limited` (1/s, bursts of 5; `Retry-After`)")},
                requestBody=_body(_ref("NewChatMessage")), security=_BEARER),
            "get": _op("The stream's chat, newest first", comments,
                       parameters=[_LIMIT, _BEFORE])},
        "/api/videos/{video_id}/comments": {
            "parameters": [_VIDEO],
            "post": _op("Comment on a video (threaded: parent_id, depth at most 4)", {
                **posted, "409": _conflict("`video_unavailable`, `parent_deleted`")},
                requestBody=_body(_ref("NewComment")), security=_BEARER),
            "get": _op("A video's comments: the children of parent_id (top level if absent)",
                       comments, parameters=[_LIMIT, _BEFORE, {
                           "name": "parent_id", "in": "query", "schema": _UUID}])},
        "/api/comments/{comment_id}": {"delete": _op(
            "Soft-delete a comment (its author, the creator, a moderator)", {
                "200": _json(_ref("Comment"), "the deleted comment"),
                "400": _error("BadRequest"), **_AUTH, "404": _error("NotFound")},
            parameters=[_COMMENT], security=_BEARER)},
        "/api/videos/{video_id}/like": {**_like_ops("video", _VIDEO), "get": _op(
            "Whether the caller likes the video, and its count", {
                "200": _json(_ref("Like"), "the caller's like and the exact count"),
                "400": _error("BadRequest"), **_AUTH, "404": _error("NotFound")},
            security=_BEARER)},
        "/api/videos/{video_id}/comment-likes": {"parameters": [_VIDEO], "get": _op(
            "Which of the video's comments the caller likes (ids, at most 1000)", {
                "200": _json(_ref("CommentLikes"), "the liked comments' ids"),
                "400": _error("BadRequest"), **_AUTH, "404": _error("NotFound")},
            security=_BEARER)},
        "/api/comments/{comment_id}/like": _like_ops("comment", _COMMENT),
        "/api/reports": {"post": _op("Report a video, comment, user or stream", {
            "201": _json(_ref("Report"), "the report, pending"), "400": _error("BadRequest"),
            **_AUTH, "404": _error("NotFound"), "413": _error("PayloadTooLarge"),
            "409": _conflict("`already_reported`: one open report per reporter and target")},
            requestBody=_body(_ref("NewReport")), security=_BEARER)},
        "/api/moderation/reports": {"get": _op("The moderation queue (moderators)", {
            "200": _json(_ref("Reports"), "oldest first"), "400": _error("BadRequest"),
            **_AUTH}, parameters=[{"name": "status", "in": "query", "schema": {
                "enum": ["pending", "reviewed", "action_taken", "dismissed"],
                "default": "pending"}}, *_PAGING], security=_BEARER)},
        "/api/moderation/reports/{report_id}": {"post": _op(
            "Act on a report: dismiss, remove (the comment / video / stream), suspend its owner",
            {"200": _json(_ref("QueuedReport"), "the reviewed report"),
             "400": _error("BadRequest"), **_AUTH, "404": _error("NotFound"),
             "409": _conflict("`already_reviewed`, `cannot_suspend_moderator`")},
            parameters=[_REPORT], requestBody=_body(_ref("ModerationAction")),
            security=_BEARER)},
        "/api/me/dashboard": {"get": _op("The creator's dashboard", {
            "200": _json(_ref("Dashboard"), "creator_dashboard, earnings, viewers per minute"),
            "400": _error("BadRequest"), **_AUTH},
            parameters=[{"name": "hours", "in": "query",
                         "schema": {"type": "integer", "minimum": 1, "maximum": 2160,
                                    "default": 24}}], security=_BEARER)},
        "/api/videos/{video_id}/analytics": {"get": _op("A video's analytics (its creator)", {
            "200": _json(_ref("VideoAnalytics"), "the video_analytics row"),
            "400": _error("BadRequest"), **_AUTH, "404": _error("NotFound"),
            "409": _conflict("`video_not_ready`")}, parameters=[_VIDEO], security=_BEARER)},
    }
