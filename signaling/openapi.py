"""The OpenAPI 3.1 document of every HTTP route of the signaling server,
served at `GET /api/openapi.json`.

It is written by hand as data (not derived from the handlers) so it is a
reviewed contract; tests/test_openapi.py fails when a route is added to the
app without being documented here, or documented without existing."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from signaling.community.openapi import COMMUNITY_SCHEMAS, community_paths
from signaling.openapi_schema import (
    _ACCOUNT,
    _AMOUNT,
    _AMOUNT_IN,
    _BEARER,
    _BOOL,
    _CATEGORY,
    _ERROR_REF,
    _INT,
    _NINT,
    _NSTR,
    _PAGING,
    _PRICE_IN,
    _RESOURCE_ID,
    _SDP,
    _SS58,
    _STR,
    _STREAM_ID,
    _TIME,
    _TRICKLE,
    Schema,
    _body,
    _error,
    _json,
    _obj,
    _op,
    _ref,
    _text,
)

_HEX: Schema = {"type": "string", "pattern": "^[0-9a-f]{64}$"}
# A receipt's proof of one batch: merkle-v2 fills root/proof/leaf_*; a digest-v1
# batch (made before Merkle roots) fills digest/lines, the whole batch's lines.
_PROOF: dict[str, Schema] = {
    "root": {"type": ["string", "null"], "description": "the batch's Merkle root (hex)"},
    "proof": {"type": "array", "items": _HEX,
              "description": "sibling hashes from the leaf up (RFC 9162 inclusion path)"},
    "leaf_index": _NINT, "leaf_count": _NINT, "digest": _NSTR,
    "lines": {"type": "array", "items": _STR, "description": "digest-v1 batches only"}}

_SCHEMAS: dict[str, Schema] = {
    "Error": _obj({"error": _obj({"code": _STR, "message": _STR})}),
    "AccountRequest": _obj({"account": _SS58}),
    "Challenge": _obj({"challenge": _STR, "expires_at": {"type": "string",
                                                         "format": "date-time"}}),
    "VerifyRequest": _obj({"account": _SS58, "signature": {
        "type": "string", "pattern": "^0x[0-9a-fA-F]{128}$",
        "description": "the sr25519 signature of the challenge (64 bytes)"}}),
    "Token": _obj({"token": _STR, "user_id": {"type": "string", "format": "uuid"},
                   "account": _STR}),
    "CreateStreamRequest": _obj({"title": _text(255),
                                 "price_per_second": _PRICE_IN,
                                 "category": {"anyOf": [_CATEGORY, {"type": "null"}]},
                                 "require_signed_receipts": {
                                     "type": "boolean", "default": False,
                                     "description": "admit only viewers who sign delivery "
                                                    "receipts (docs/protocol.md)"},
                                 "record": {"type": "boolean", "default": True}},
                                required=["title"]) | {"examples": [
                                    {"title": "Morning ride", "price_per_second": "0.002"},
                                    {"title": "Late show", "price_per_second": 1,
                                     "record": False}]},
    "Stream": _obj({"id": {"type": "string", "format": "uuid"}, "title": _STR,
                    "status": {"enum": ["pending", "live", "ended", "archived"]},
                    "creator_account": _STR, "price_per_second": _AMOUNT,
                    "require_signed_receipts": _BOOL, "viewer_count": _INT,
                    "total_ticks": _INT, "start_time": _TIME,
                    "end_time": _TIME, "watch_url": _STR, "whep_url": _STR,
                    "category_id": {"type": ["string", "null"], "format": "uuid"},
                    "category": _NSTR, "record": _BOOL,
                    "recording_video_id": {"type": ["string", "null"], "description":
                                           "the last ended session's recording (a video)"},
                    "thumbnail_url": {"type": ["string", "null"], "description":
                                      "the latest live keyframe as a JPEG"}},
                   required=["id", "title", "status", "creator_account", "price_per_second",
                             "viewer_count", "total_ticks", "start_time", "end_time",
                             "watch_url", "whep_url"]),
    "CreatedStream": {"allOf": [_ref("Stream"), _obj({
        "stream_key": {"type": "string", "description": "shown once; stored as SHA-256"},
        "whip_url": _STR, "publish_url": _STR})]},
    "UpdateStreamRequest": {**_obj({"title": _text(255), "price_per_second": _PRICE_IN},
                                   required=[]), "minProperties": 1},
    "StreamList": _obj({"streams": {"type": "array", "items": _ref("Stream")},
                        "limit": _INT, "offset": _INT}),
    "StreamKey": _obj({"stream_key": {"type": "string",
                                      "description": "shown once; stored as SHA-256"}}),
    "Payout": _obj({"settlement_id": _STR, "amount": _AMOUNT,
                    "status": {"enum": ["prepared", "submitted", "completed", "failed",
                                        "dropped"]},
                    "extrinsic_hash": _STR, "block_hash": _NSTR, "block_number": _NINT,
                    "created_at": _TIME, "finalized_at": _TIME}),
    "Payouts": _obj({"payouts": {"type": "array", "items": _ref("Payout")},
                     "limit": _INT, "offset": _INT}),
    "Me": _obj({"account": _STR, "is_creator": _BOOL, "is_moderator": _BOOL,
                "open_reports": _NINT, "balance": _AMOUNT}),
    "ViewingSession": _obj({"id": _STR, "stream_id": _STR, "title": _STR, "join_time": _TIME,
                            "active": _BOOL, "seconds": _INT, "cost": _AMOUNT,
                            "price_per_second": _AMOUNT, "payment_status": _NSTR}),
    "ViewingSessions": _obj({"sessions": {"type": "array", "items": _ref("ViewingSession")},
                             "limit": _INT, "offset": _INT}),
    "Earnings": _obj({"total_earnings": _AMOUNT, "pending_payout": _AMOUNT,
                      "last_payout_at": _TIME}),
    "BillingInfo": _obj({"escrow_account": _NSTR, "chain_rpc": _NSTR, "token_symbol": _STR,
                         "token_decimals": _INT, "price_default": _AMOUNT,
                         "platform_fee": _AMOUNT}),
    "Settlement": _obj({"settlement_id": _STR, "status": _STR, "amount": _AMOUNT,
                        "line": _STR, "commitment": {"enum": ["merkle-v2", "digest-v1"]},
                        "extrinsic_hash": _NSTR, "nonce": _NINT,
                        "block_hash": _NSTR, "block_number": _NINT,
                        "extrinsic_index": _NINT, "genesis_hash": _NSTR, "error": _NSTR,
                        **_PROOF, "remark": _NSTR, "created_at": _TIME,
                        "finalized_at": _TIME}),
    "Receipt": _obj({"stream_viewer_id": _STR, "stream_id": _STR, "creator_account": _STR,
                     "seconds": _INT, "price_per_second": _AMOUNT, "charge": _AMOUNT,
                     "settled": _AMOUNT, "unsettled": _AMOUNT, "status": _STR,
                     "active": _BOOL, "extrinsic_hash": _NSTR, "block_hash": _NSTR,
                     "block_number": _NINT, "extrinsic_index": _NINT, "genesis_hash": _NSTR,
                     "commitment": {"enum": ["merkle-v2", "digest-v1", None]},
                     "line": _NSTR, **_PROOF, "remark": _NSTR, "proof_algorithm": _STR,
                     "digest_algorithm": _STR,
                     "settlements": {"type": "array", "items": _ref("Settlement")}}),
    "PaymentReceipt": _obj({"payment_id": _STR, "payment_type": {
                                "enum": ["tip", "subscription", "video_view"]},
                            "reference_id": _NSTR, "creator_account": _NSTR,
                            "charge": _AMOUNT, "settled": _AMOUNT, "unsettled": _AMOUNT,
                            "status": _STR, "created_at": _TIME, "extrinsic_hash": _NSTR,
                            "block_hash": _NSTR, "block_number": _NINT,
                            "extrinsic_index": _NINT, "genesis_hash": _NSTR,
                            "commitment": {"enum": ["merkle-v2", "digest-v1", None]},
                            "line": _NSTR, **_PROOF, "remark": _NSTR, "proof_algorithm": _STR,
                            "digest_algorithm": _STR,
                            "settlements": {"type": "array", "items": _ref("Settlement")}}),
    "TipRequest": _obj({"amount": {**_AMOUNT_IN, "description": "tokens > 0 in whole planck"},
                        "message": {"type": ["string", "null"], "maxLength": 500,
                                    "pattern": "^[^\\x00]*$"}}, required=["amount"]),
    "Tip": _obj({"id": _STR, "payment_id": _STR, "creator_account": _STR, "amount": _AMOUNT,
                 "message": _NSTR, "status": {"const": "pending"}, "created_at": _TIME,
                 "balance": _AMOUNT}),
    "OfferRequest": _obj({"price": {**_AMOUNT_IN,
                                    "description": "tokens for 30 days, whole planck"}}),
    "Offer": _obj({"account": _STR, "price": _AMOUNT, "period_days": _INT}),
    "NoOffer": _obj({"account": _STR, "price": {"type": "null"}}),
    "Subscription": _obj({"id": _STR, "payment_id": _STR, "creator_account": _STR,
                          "price": _AMOUNT, "starts_at": _TIME, "ends_at": _TIME,
                          "status": {"const": "pending"}, "balance": _AMOUNT}),
    "SubscriptionPeriod": _obj({"id": _STR, "creator_account": _STR, "price": _AMOUNT,
                                "starts_at": _TIME, "ends_at": _TIME, "current": _BOOL,
                                "status": _STR}),
    "Subscriptions": _obj({"subscriptions": {"type": "array",
                                             "items": _ref("SubscriptionPeriod")}}),
    "Health": _obj({"status": {"const": "ok"}, "role": _STR}),
    "Readiness": _obj({"ready": _BOOL, "role": _STR,
                       "checks": {"type": "object", "additionalProperties": _BOOL}}),
}

_RESPONSES: dict[str, Schema] = {
    name: _json(_ERROR_REF, text) for name, text in {
        "BadRequest": "invalid input (`bad_json`, `invalid_*`)",
        "Unauthorized": "no valid Bearer token (`WWW-Authenticate: Bearer`)",
        "Forbidden": "the stream belongs to another creator (`forbidden`)",
        "Suspended": "the caller's account is suspended (`suspended`), or may not do this",
        "NotFound": "no such resource",
        "PayloadTooLarge": "the body is over 64 KiB",
        "PaymentRequired": "the live balance does not cover it (`insufficient_funds`)",
        "TooManyRequests": "rate limited",
        "InternalError": "internal server error",
        "Unavailable": "a backing store or worker is not answering (`Retry-After`)",
    }.items()}


# What a creator-only operation on one stream may refuse.
_OWNED_ERRORS = {"400": _error("BadRequest"), "401": _error("Unauthorized"),
                 "403": _error("Forbidden"), "404": _error("NotFound")}


def _api_paths() -> dict[str, Schema]:
    return {
        "/api/openapi.json": {"get": _op("This document", {
            "200": _json({"type": "object"}, "the OpenAPI 3.1 document")})},
        "/api/auth/challenge": {"post": _op("A one-time login challenge (5 minutes)", {
            "200": _json(_ref("Challenge"), "the message to sign"),
            "400": _error("BadRequest"), "413": _error("PayloadTooLarge"),
            "429": _error("TooManyRequests")}, requestBody=_body(_ref("AccountRequest")))},
        "/api/auth/verify": {"post": _op("Trade a signed challenge for a Bearer token", {
            "200": _json(_ref("Token"), "a viewer token"), "400": _error("BadRequest"),
            "401": _error("Unauthorized"), "413": _error("PayloadTooLarge"),
            "429": _error("TooManyRequests")}, requestBody=_body(_ref("VerifyRequest")))},
        "/api/dev/token": {"post": _op("A token for any account (dev mode only)", {
            "200": _json(_ref("Token"), "a viewer token"), "400": _error("BadRequest"),
            "404": _error("NotFound"), "413": _error("PayloadTooLarge")},
            requestBody=_body(_ref("AccountRequest")))},
        "/api/streams": {
            "post": _op("Create a stream; its key is shown once", {
                "201": _json(_ref("CreatedStream"), "the stream and its key"),
                "400": _error("BadRequest"), "401": _error("Unauthorized"),
                "413": _error("PayloadTooLarge")},
                requestBody=_body(_ref("CreateStreamRequest")), security=_BEARER),
            "get": _op("Streams, by viewer count", {
                "200": _json(_ref("StreamList"), "a page of streams"),
                "400": _error("BadRequest")},
                parameters=[{"name": "status", "in": "query", "schema": {
                    "enum": ["pending", "live", "ended", "archived"]}},
                    {"name": "category", "in": "query", "schema": _CATEGORY},
                    {"name": "creator", "in": "query", "schema": _SS58,
                     "description": "the creator's account"},
                    {"name": "q", "in": "query", "description":
                     "search: a substring of the title or the creator's username "
                     "(case-insensitive), or the creator's account in any SS58 prefix",
                     "schema": {"type": "string", "maxLength": 100}}, *_PAGING])},
        "/api/streams/{stream_id}": {
            "get": _op("One stream (never its key)", {
                "200": _json(_ref("Stream"), "the stream"), "400": _error("BadRequest"),
                "404": _error("NotFound")}, parameters=[_STREAM_ID]),
            "patch": _op("Change the creator's own stream: title and/or price per second "
                         "(a new price applies to viewing sessions that start after it)", {
                "200": _json(_ref("Stream"), "the changed stream"),
                "413": _error("PayloadTooLarge"), **_OWNED_ERRORS},
                parameters=[_STREAM_ID], requestBody=_body(_ref("UpdateStreamRequest")),
                security=_BEARER)},
        "/api/streams/{stream_id}/key": {"post": _op(
            "Rotate the stream key (the creator's own stream); the old key stops working", {
                "200": _json(_ref("StreamKey"), "the new key, shown once"),
                **_OWNED_ERRORS}, parameters=[_STREAM_ID], security=_BEARER)},
        "/api/streams/{stream_id}/end": {"post": _op(
            "End the creator's own stream (a no-op when already ended)", {
                "200": _json(_ref("Stream"), "the ended stream"), **_OWNED_ERRORS},
            parameters=[_STREAM_ID], security=_BEARER)},
        "/api/me/streams": {"get": _op("The caller's own streams, newest first", {
            "200": _json(_ref("StreamList"), "a page of streams"),
            "400": _error("BadRequest"), "401": _error("Unauthorized")},
            parameters=_PAGING, security=_BEARER)},
        "/api/me/payouts": {"get": _op("The caller's on-chain payouts, newest first", {
            "200": _json(_ref("Payouts"), "a page of payouts"),
            "400": _error("BadRequest"), "401": _error("Unauthorized")},
            parameters=_PAGING, security=_BEARER)},
        "/api/me": {"get": _op("The caller and its live balance", {
            "200": _json(_ref("Me"), "the caller"), "401": _error("Unauthorized")},
            security=_BEARER)},
        "/api/me/sessions": {"get": _op("The caller's viewing sessions", {
            "200": _json(_ref("ViewingSessions"), "a page of sessions"),
            "400": _error("BadRequest"), "401": _error("Unauthorized")},
            parameters=_PAGING, security=_BEARER)},
        "/api/me/earnings": {"get": _op("The caller's earnings as a creator", {
            "200": _json(_ref("Earnings"), "earnings"), "401": _error("Unauthorized")},
            security=_BEARER)},
        "/api/users/{account}/tips": {"post": _op(
            "Tip a creator from the caller's balance (settled in the next batch)", {
                "201": _json(_ref("Tip"), "the tip, out of the live balance already"),
                "400": _error("BadRequest"), "401": _error("Unauthorized"),
                "402": _error("PaymentRequired"), "404": _error("NotFound"),
                "413": _error("PayloadTooLarge")},
            parameters=[_ACCOUNT], requestBody=_body(_ref("TipRequest")), security=_BEARER)},
        "/api/users/{account}/subscription": {"post": _op(
            "Buy the creator's 30-day subscription (extends a running one); the "
            "subscriber watches their streams at price 0", {
                "201": _json(_ref("Subscription"), "the period bought"),
                "400": _error("BadRequest"), "401": _error("Unauthorized"),
                "402": _error("PaymentRequired"), "404": _error("NotFound")},
            parameters=[_ACCOUNT], security=_BEARER)},
        "/api/users/{account}/subscription-offer": {"get": _op(
            "The creator's subscription offer", {
                "200": _json(_ref("Offer"), "the offer"), "400": _error("BadRequest"),
                "404": _error("NotFound")}, parameters=[_ACCOUNT])},
        "/api/me/subscription-offer": {
            "put": _op("Offer a 30-day subscription at a price (creators only)", {
                "200": _json(_ref("Offer"), "the offer"), "400": _error("BadRequest"),
                "401": _error("Unauthorized"), "403": _error("Forbidden"),
                "413": _error("PayloadTooLarge")},
                requestBody=_body(_ref("OfferRequest")), security=_BEARER),
            "delete": _op("Stop offering (periods bought run to their end)", {
                "200": _json(_ref("NoOffer"), "no offer"), "401": _error("Unauthorized")},
                security=_BEARER)},
        "/api/me/subscriptions": {"get": _op("The caller's subscription periods", {
            "200": _json(_ref("Subscriptions"), "newest first"),
            "401": _error("Unauthorized")}, security=_BEARER)},
        "/api/billing/info": {"get": _op("Where and how to deposit", {
            "200": _json(_ref("BillingInfo"), "billing parameters")})},
        "/api/receipts/{stream_viewer_id}": {"get": _op("A viewing session's receipt", {
            "200": _json(_ref("Receipt"), "the receipt"), "400": _error("BadRequest"),
            "401": _error("Unauthorized"), "404": _error("NotFound")},
            security=_BEARER, parameters=[{"name": "stream_viewer_id", "in": "path",
                                           "required": True,
                                           "schema": {"type": "string", "format": "uuid"}}])},
        "/api/receipts/payments/{payment_id}": {"get": _op(
            "A tip's, a subscription's or a video view's receipt", {
                "200": _json(_ref("PaymentReceipt"), "the receipt"),
                "400": _error("BadRequest"), "401": _error("Unauthorized"),
                "404": _error("NotFound")},
            security=_BEARER, parameters=[{"name": "payment_id", "in": "path", "required": True,
                                           "schema": {"type": "string", "format": "uuid"}}])},
    }


def _sdp(description: str) -> Schema:
    return {"description": description, "content": {_SDP: {"schema": _STR}}}


# A page's 404 is a page too (for a person), not the API's JSON error.
_HTML_NOT_FOUND: Schema = {"description": "no such page (an HTML page)",
                           "content": {"text/html": {"schema": _STR}}}
# Discovery and CORS preflights answer for any URL of the shape: the id is not read.
_ANY_STREAM_ID = {"name": "stream_id", "in": "path", "required": True, "schema": _STR}
# `format: sdp-offer`: an SDP offer (RFC 8866) a browser would send; anything
# else is refused (400 `bad_sdp`, 422 unsupported). `sdpfrag`: trickle ICE
# lines (RFC 8840).
_OFFER: Schema = {"type": "string", "format": "sdp-offer"}
_FRAGMENT: Schema = {"type": "string", "format": "sdpfrag"}


def _session_front(kind: str, who: str) -> dict[str, Schema]:
    """WHIP (RFC 9725) and WHEP: the same endpoint + session resource shape."""
    status_errors = {"401": _error("Unauthorized"), "404": _error("NotFound"),
                     "409": _json(_ERROR_REF, "already live (WHIP) / not live (WHEP)"),
                     "415": _json(_ERROR_REF, "not application/sdp"),
                     "422": _json(_ERROR_REF, "unsupported offer"),
                     "429": _error("TooManyRequests")}
    if kind == "whep":
        status_errors["402"] = _json(_ERROR_REF, "the balance cannot pay 10 s")
    options = _op("CORS preflight / discovery", {"200": {"description": "allowed methods"}},
                  parameters=[_ANY_STREAM_ID])
    return {
        f"/{kind}/{{stream_id}}": {
            "parameters": [_STREAM_ID],
            "post": _op(f"Start a session with an SDP offer ({who})", {
                "201": _sdp("the SDP answer; `Location`, `ETag`, `Link` ICE servers"),
                "400": _json(_ERROR_REF, "the body is empty, not UTF-8, or not an SDP offer "
                                         "(`bad_sdp`)"),
                "413": _error("PayloadTooLarge"), **status_errors},
                requestBody={"required": True, "content": {_SDP: {"schema": _OFFER}}},
                security=_BEARER),
            "get": _op("Discovery: this URL takes SDP offers", {
                "200": {"description": "empty, `Content-Type: application/sdp`"}},
                parameters=[_ANY_STREAM_ID]),
            "options": options},
        f"/{kind}/{{stream_id}}/sessions/{{resource_id}}": {
            "parameters": [_STREAM_ID, _RESOURCE_ID],
            "patch": _op("Trickle ICE candidates (`If-Match: <ETag>`)", {
                "204": {"description": "candidates applied"}, "400": _error("BadRequest"),
                "413": _error("PayloadTooLarge"),
                "404": _error("NotFound"), "412": _json(_ERROR_REF, "ETag mismatch"),
                "428": _json(_ERROR_REF, "no If-Match"),
                "415": _json(_ERROR_REF, f"not {_TRICKLE}"),
                "422": _json(_ERROR_REF, "ICE restart unsupported")},
                parameters=[{"name": "If-Match", "in": "header", "required": True,
                             "schema": _STR, "description": "the session's ETag, or `*`"}],
                requestBody={"required": True, "content": {_TRICKLE: {"schema": _FRAGMENT}}}),
            "delete": _op("End the session", {"200": {"description": "ended"},
                                              "404": _error("NotFound")}),
            "get": _op("Whether the session exists", {"204": {"description": "it does"},
                                                       "404": _error("NotFound")}),
            "options": options},
    }


def _other_paths() -> dict[str, Schema]:
    page = {"200": {"description": "HTML page", "content": {"text/html": {"schema": _STR}}},
            "404": _HTML_NOT_FOUND}
    return {
        "/ws": {"get": _op("The websocket protocol (docs/protocol.md)", {
            "101": {"description": "Switching Protocols: the websocket; auth is in-protocol"},
            "400": _error("BadRequest")})},
        "/healthz": {"get": _op("Liveness", {"200": _json(_ref("Health"), "serving")})},
        "/readyz": {"get": _op("Readiness of the stores", {
            "200": _json(_ref("Readiness"), "ready"),
            "503": _json(_ref("Readiness"), "a store is not answering")})},
        "/metrics": {"get": _op("Prometheus metrics", {"200": {
            "description": "text exposition format",
            "content": {"text/plain": {"schema": _STR}}}})},
        "/": {"get": _op("The home page: live streams by viewer count (`?q=` searches), the "
                         "categories and the newest videos (`?category=` narrows both)",
                         {"200": page["200"], "404": page["404"]}, parameters=[
                             {"name": "q", "in": "query", "schema": {"type": "string"}},
                             {"name": "category", "in": "query", "schema": _STR,
                              "description": "a category's id; unknown: 404"}])},
        "/studio": {"get": _op("The creator's studio page", {"200": page["200"]})},
        "/wallet": {"get": _op("The wallet page: balance, deposit, sessions, receipts",
                               {"200": page["200"]})},
        "/publish/{stream_id}": {"get": _op("One stream in the studio: go live, key, WHIP "
                                            "settings, stats", page, parameters=[_STREAM_ID])},
        "/watch/{stream_id}": {"get": _op("The live watch page: player, chat, follow, tips",
                                          page, parameters=[_STREAM_ID])},
        "/c/{account}": {"get": _op("A channel: profile, follow, live stream, videos, past "
                                    "streams", page, parameters=[
                                        {"name": "account", "in": "path", "required": True,
                                         "schema": _STR}])},
        "/category/{category_id}": {"get": _op("A category: its live streams and videos", page,
                                               parameters=[{"name": "category_id",
                                                            "in": "path", "required": True,
                                                            "schema": _STR}])},
        "/moderation": {"get": _op("The moderation queue page (moderators)",
                                   {"200": page["200"]})},
        "/static/{filename}": {"get": _op("Static assets (ES modules, CSS, vendor bundle)", {
            "200": {"description": "the file"}, "404": _error("NotFound")},
            parameters=[{"name": "filename", "in": "path", "required": True,
                         "schema": _STR}])},
    }


# At most 20 tags of 50 characters (blank ones are dropped), no NUL.
_TAGS: Schema = {"type": "array", "maxItems": 20,
                 "items": {"type": "string", "maxLength": 50, "pattern": "^[^\\x00]*$"}}
_VIDEO_ID = {"name": "video_id", "in": "path", "required": True,
             "schema": {"type": "string", "format": "uuid"}}
_SIGNED = [{"name": n, "in": "query", "required": True, "schema": _STR}
           for n in ("view", "exp", "sig")]
_VIDEO_SCHEMAS: dict[str, Schema] = {
    "VideoVersion": _obj({"resolution": _STR, "bitrate": _NINT, "file_size": _NINT,
                          "width": _NINT, "height": _NINT, "ipfs_hash": _NSTR,
                          "url": {"type": "string", "description":
                                  "the rendition's playlist; plays only signed for a view"}}),
    "VideoMetadata": _obj({"format": _NSTR, "codec": _NSTR, "audio_codec": _NSTR,
                           "frame_rate": {"type": ["string", "null"]},
                           "aspect_ratio": _NSTR, "tags": {"type": "array", "items": _STR}}),
    "Video": _obj({
        "id": {"type": "string", "format": "uuid"}, "title": _STR,
        "status": {"enum": ["uploading", "processing", "ready", "failed", "archived"]},
        "failure_reason": _NSTR, "creator_account": _STR, "duration": _NINT, "width": _NINT,
        "height": _NINT, "file_size": _NINT, "view_count": _INT, "like_count": _INT,
        "comment_count": _INT, "price_per_second": {"type": ["string", "null"]},
        "thumbnail_url": _NSTR, "ipfs_hash": _NSTR, "source_stream_id": _NSTR,
        "tags": {"type": "array", "items": _STR}, "published_at": _TIME,
        "created_at": _TIME, "metadata": _ref("VideoMetadata"),
        "versions": {"type": "array", "items": _ref("VideoVersion")},
        "processing": _obj({"job_id": _STR, "status": _STR, "progress": _AMOUNT,
                            "stage": _NSTR, "attempts": _INT}),
        "upload": _obj({"length": _INT, "offset": _INT})},
        required=["id", "title", "status", "creator_account", "metadata"]),
    "StreamSessionEarnings": _obj({"sessions": {"type": "array", "items": _obj({
        "session_id": _STR, "stream_id": _STR, "title": _STR, "start_time": _TIME,
        "end_time": _TIME, "viewer_peak": _INT, "total_ticks": _INT, "viewers": _INT,
        "paid": _AMOUNT, "earned": {**_AMOUNT, "description":
                                    "the creator's share after the platform fee"}})},
        "limit": _INT, "offset": _INT}),
    "VideoList": _obj({"videos": {"type": "array", "items": _ref("Video")},
                       "limit": _INT, "offset": _INT}),
    "CreatedVideo": _obj({"id": _STR, "status": _STR, "url": _STR, "upload_url": _STR},
                         required=["id", "status"]),
    "VideoView": _obj({"view_id": _STR, "video_id": _STR, "playlist_url": _STR,
                       "expires_at": _INT, "price_per_second": _AMOUNT}),
    "VideoViewStatus": _obj({"view_id": _STR, "seconds": _INT, "cost": _AMOUNT,
                             "billed_seconds": _INT, "billed_cost": _AMOUNT,
                             "watch_completion": _AMOUNT, "cut_off": _BOOL,
                             "price_per_second": _AMOUNT}),
}


def _video_paths() -> dict[str, Schema]:
    video = _json(_ref("Video"), "the video")
    m3u8 = {"description": "an HLS playlist, every URL in it signed for the same view",
            "content": {"application/vnd.apple.mpegurl": {"schema": _STR}}}
    signed_errors = {"403": _json(_ERROR_REF, "not signed for this view, expired "
                                              "(`playback_expired`) or cut off "
                                              "(`insufficient_funds`)"),
                     "400": _error("BadRequest"), "404": _error("NotFound")}
    tus = {"name": "Tus-Resumable", "in": "header", "required": True,
           "schema": {"const": "1.0.0"}}
    return {
        "/api/videos": {
            "post": _op("Upload a video: the file as the body (Content-Type video/*, "
                        "`?title=`, `?tags=a,b`), or a tus 1.0 creation (`Tus-Resumable`, "
                        "`Upload-Length`, `Upload-Metadata`)", {
                "201": _json(_ref("CreatedVideo"), "stored; processing (tus: uploading, "
                                                   "`Location` is the upload URL)"),
                "400": _error("BadRequest"), "401": _error("Unauthorized"),
                "412": _json(_ERROR_REF, "another tus version"),
                "413": _json(_ERROR_REF, "over VILOKANAM_UPLOAD_MAX_BYTES, refused before "
                                         "the body is read past it"),
                "415": _json(_ERROR_REF, "not video/*")},
                security=_BEARER, parameters=[
                    {"name": "title", "in": "query", "schema": _text(255)},
                    {"name": "tags", "in": "query", "schema": {
                        "type": "string", "pattern": "^[^,\\x00]{0,50}(,[^,\\x00]{0,50}){0,19}$",
                        "description": "comma-separated: at most 20 tags of 50 characters"}}],
                requestBody={"required": True, "content": {"video/*": {"schema": {
                    "type": "string", "format": "binary", "minLength": 1}}}}),
            "options": _op("tus discovery (`Tus-Version`, `Tus-Max-Size`)", {
                "204": {"description": "tus 1.0.0, creation"}}),
            "get": _op("Ready videos, newest first", {
                "200": _json(_ref("VideoList"), "videos"), "400": _error("BadRequest")},
                parameters=[*_PAGING, {"name": "creator", "in": "query", "schema": _SS58},
                            {"name": "category", "in": "query", "schema": _STR,
                             "description": "a category's id or name (no match: no videos)"}]),
        },
        "/api/videos/{video_id}": {
            "get": _op("One video, with versions and metadata (any status but archived)", {
                "200": video, "400": _error("BadRequest"), "404": _error("NotFound")},
                parameters=[_VIDEO_ID]),
            "patch": _op("The creator changes title, tags or price", {
                "200": video, **_OWNED_ERRORS}, security=_BEARER, parameters=[_VIDEO_ID],
                requestBody=_body(_obj({"title": _text(255), "tags": _TAGS,
                                        "price_per_second": _PRICE_IN}, required=[]))),
        },
        "/api/videos/{video_id}/upload": {
            "head": _op("tus: the upload's offset", {
                "200": {"description": "`Upload-Offset`, `Upload-Length`"}, **_OWNED_ERRORS,
                "412": _json(_ERROR_REF, "`Tus-Resumable` is not 1.0.0")},
                security=_BEARER, parameters=[_VIDEO_ID, tus]),
            "patch": _op("tus: append at `Upload-Offset` "
                         "(application/offset+octet-stream)", {
                "204": {"description": "stored; the new `Upload-Offset`"}, **_OWNED_ERRORS,
                "409": _json(_ERROR_REF, "`offset_mismatch`, `upload_complete`, "
                                         "`upload_busy`"),
                "412": _json(_ERROR_REF, "`Tus-Resumable` is not 1.0.0"),
                "413": _json(_ERROR_REF, "past Upload-Length"),
                "415": _json(_ERROR_REF, "wrong Content-Type")},
                security=_BEARER, parameters=[_VIDEO_ID, tus]),
        },
        "/api/videos/{video_id}/thumbnail.jpg": {"get": _op("The thumbnail", {
            "200": {"description": "JPEG", "content": {"image/jpeg": {"schema": _STR}}},
            "400": _error("BadRequest"), "404": _error("NotFound")}, parameters=[_VIDEO_ID])},
        "/api/videos/{video_id}/views": {"post": _op(
            "Start a paid view: an HLS master playlist signed for it (HMAC, expiring); "
            "each second delivered is billed once", {
                "201": _json(_ref("VideoView"), "the view"), "400": _error("BadRequest"),
                "401": _error("Unauthorized"), "404": _error("NotFound"),
                "402": _json(_ERROR_REF, "the balance cannot pay 10 s (`insufficient_funds`)"),
                "409": _json(_ERROR_REF, "the video is not ready (`video_not_ready`)")},
            security=_BEARER, parameters=[_VIDEO_ID])},
        "/api/videos/{video_id}/views/{view_id}": {"get": _op(
            "The caller's view: seconds delivered and their cost", {
                "200": _json(_ref("VideoViewStatus"), "the view"),
                "400": _error("BadRequest"), "401": _error("Unauthorized"),
                "404": _error("NotFound")}, security=_BEARER,
            parameters=[_VIDEO_ID, {"name": "view_id", "in": "path", "required": True,
                                    "schema": {"type": "string", "format": "uuid"}}])},
        "/vod/{video_id}/master.m3u8": {"get": _op("A view's master playlist", {
            "200": m3u8, **signed_errors}, parameters=[_VIDEO_ID, *_SIGNED])},
        "/vod/{video_id}/{resolution}/index.m3u8": {"get": _op("A rendition's playlist", {
            "200": m3u8, **signed_errors}, parameters=[
                _VIDEO_ID, {"name": "resolution", "in": "path", "required": True,
                            "schema": _STR}, *_SIGNED])},
        "/vod/{video_id}/{resolution}/{segment}": {"get": _op(
            "A segment (MPEG-TS; range requests): its seconds are billed once per view", {
                "200": {"description": "video/mp2t"}, "206": {"description": "a range"},
                "416": {"description": "a range past the end"}, **signed_errors}, parameters=[
                _VIDEO_ID, {"name": "resolution", "in": "path", "required": True,
                            "schema": _STR},
                {"name": "segment", "in": "path", "required": True, "schema": _STR},
                *_SIGNED])},
        "/video/{video_id}": {"get": _op("The video page (HLS player, seconds and cost)", {
            "200": {"description": "HTML page", "content": {"text/html": {"schema": _STR}}},
            "404": _HTML_NOT_FOUND}, parameters=[_VIDEO_ID])},
    }


def _studio_paths() -> dict[str, Schema]:
    """The studio's lists and the live thumbnail (signaling/studio_api.py,
    signaling/stream_thumbnails.py)."""
    return {
        "/api/me/videos": {"get": _op(
            "The caller's own videos in every state but archived (uploading, processing with "
            "the job's progress, failed with the reason), newest first", {
                "200": _json(_ref("VideoList"), "a page of videos"),
                "400": _error("BadRequest"), "401": _error("Unauthorized")},
            parameters=_PAGING, security=_BEARER)},
        "/api/me/stream-sessions": {"get": _op(
            "What each of the caller's stream sessions earned, newest first", {
                "200": _json(_ref("StreamSessionEarnings"), "a page of sessions"),
                "400": _error("BadRequest"), "401": _error("Unauthorized")},
            parameters=_PAGING, security=_BEARER)},
        "/api/streams/{stream_id}/thumbnail.jpg": {"get": _op(
            "The stream's latest live thumbnail: one keyframe every "
            "VILOKANAM_THUMBNAIL_INTERVAL seconds, decoded by its SFU worker", {
                "200": {"description": "JPEG", "content": {"image/jpeg": {"schema": _STR}}},
                "400": _error("BadRequest"), "404": _error("NotFound")},
            parameters=[_STREAM_ID])},
    }


def openapi_document() -> dict[str, Any]:

    paths = _api_paths()
    for path, item in community_paths().items():  # PATCH /api/me joins GET /api/me
        paths[path] = {**paths.get(path, {}), **item}
    document: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {"title": "Vilokanam signaling", "version": "0.1.0",
                 "description": "Pay-per-second live streaming: REST API, WHIP/WHEP, "
                                "websocket signaling, health. Every error is "
                                '`{"error": {"code", "message"}}`.'},
        "paths": {**paths, **_session_front("whip", "Bearer = the stream key"),
                  **_session_front("whep", "Bearer = a viewer token"), **_other_paths(),
                  **_video_paths(), **_studio_paths()},
        "components": {
            "schemas": {**_SCHEMAS, **COMMUNITY_SCHEMAS, **_VIDEO_SCHEMAS}, "responses": _RESPONSES,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                           "description": "a viewer token from /api/auth/verify "
                                                          "(WHIP: the stream key)"}}},
    }
    _with_suspension(document["paths"])
    return document


def _with_suspension(paths: dict[str, Schema]) -> None:
    """Every Bearer operation refuses a suspended caller with 403
    (signaling/users.py require_user; the authorization matrix,
    tests/test_authz_matrix.py, checks it route by route)."""
    for item in paths.values():
        for operation in item.values():
            if isinstance(operation, dict) and operation.get("security") == _BEARER:
                operation["responses"].setdefault("403", _error("Suspended"))


OPENAPI_KEY = web.AppKey("openapi_document", dict)


async def openapi_json(request: web.Request) -> web.Response:
    return web.json_response(request.app[OPENAPI_KEY])


def add_openapi_routes(app: web.Application) -> None:
    app[OPENAPI_KEY] = openapi_document()  # built once: it is constant data
    app.router.add_get("/api/openapi.json", openapi_json)
