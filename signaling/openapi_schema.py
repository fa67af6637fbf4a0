"""Building blocks of the OpenAPI document (signaling/openapi.py), shared by
the parts other modules contribute (signaling/community/openapi.py), so the
document and its parts import this and not each other."""

from __future__ import annotations

from typing import Any

Schema = dict[str, Any]

_ERROR_REF = {"$ref": "#/components/schemas/Error"}
_STREAM_ID = {"name": "stream_id", "in": "path", "required": True,
              "schema": {"type": "string", "format": "uuid"}}
_RESOURCE_ID = {"name": "resource_id", "in": "path", "required": True,
                "schema": {"type": "string"}}
_PAGING = [{"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1,
                                                        "maximum": 200, "default": 50}},
           # to Postgres' bigint OFFSET (signaling/paging.py): past the end, an empty page
           {"name": "offset", "in": "query", "schema": {"type": "integer", "minimum": 0,
                                                         "maximum": 2**63 - 1, "default": 0}}]
# `format: ss58`: an SS58 address in any prefix, its checksum right (a string
# that is not one is refused with 400 `invalid_account`).
_SS58: Schema = {"type": "string", "format": "ss58", "description": "SS58 address (any prefix)"}
_ACCOUNT = {"name": "account", "in": "path", "required": True, "schema": _SS58}
# `format: category`: the id or the name (any case) of a category that exists
# (GET /api/categories); another is refused (400 `unknown_category`).
_CATEGORY: Schema = {"type": "string", "format": "category", "maxLength": 100,
                     "description": "a category's id or name"}
_BEARER: list[dict[str, list[str]]] = [{"bearer": []}]
_SDP = "application/sdp"
_TRICKLE = "application/trickle-ice-sdpfrag"


def _ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: Schema, description: str) -> Schema:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _error(description: str) -> Schema:
    return {"$ref": f"#/components/responses/{description}"}


def _body(schema: Schema) -> Schema:
    return {"required": True, "content": {"application/json": {"schema": schema}}}


def _op(summary: str, responses: dict[str, Schema], **extra: Any) -> Schema:
    """One operation; every operation may also answer the shared 5xx errors."""
    return {"summary": summary, **extra,
            "responses": {**responses, "500": _error("InternalError"),
                          "503": _error("Unavailable")}}


def _obj(props: dict[str, Schema], required: list[str] | None = None) -> Schema:
    return {"type": "object", "properties": props,
            "required": list(props) if required is None else required}


_STR: Schema = {"type": "string"}
_NSTR: Schema = {"type": ["string", "null"]}
_INT: Schema = {"type": "integer"}
_NINT: Schema = {"type": ["integer", "null"]}
_BOOL: Schema = {"type": "boolean"}
# Money is a decimal string in tokens: never a float.
_AMOUNT: Schema = {"type": "string", "pattern": r"^-?\d+(\.\d+)?$"}
_TIME: Schema = {"type": ["string", "null"], "format": "date-time"}
# An amount the API takes: tokens > 0 and below 10^20, in whole planck (12
# decimals), as a decimal string (trailing zeros allowed) or a JSON integer. A
# JSON number with a fraction is read exactly too (as Decimal, never float),
# but JSON Schema cannot say "whole planck" of a number, so the document
# promises strings and integers only.
_AMOUNT_IN: Schema = {"anyOf": [
    {"type": "string",
     "pattern": r"^(0*[1-9][0-9]{0,19}(\.0+|\.[0-9]{0,11}[1-9]0*)?|0+\.[0-9]{0,11}[1-9]0*)$"},
    {"type": "integer", "minimum": 1, "maximum": 10**20 - 1}]}
# A price: null (or absent) is the default (create) or unchanged (PATCH).
_PRICE_IN: Schema = {"anyOf": [*_AMOUNT_IN["anyOf"], {"type": "null"}]}
# Text that must keep a character besides spaces, and no NUL (Postgres refuses it).
_TEXT_PATTERN = r"^[^\x00]*[^\s\x00][^\x00]*$"


def _text(max_length: int) -> Schema:
    return {"type": "string", "minLength": 1, "maxLength": max_length, "pattern": _TEXT_PATTERN}

