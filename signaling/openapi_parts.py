"""The building blocks of the OpenAPI document (signaling/openapi.py) and of
its community part (signaling/community/openapi.py): both import them from
here, so neither imports the other's module to build itself."""

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
           {"name": "offset", "in": "query", "schema": {"type": "integer", "minimum": 0,
                                                         "default": 0}}]
_ACCOUNT = {"name": "account", "in": "path", "required": True,
            "schema": {"type": "string", "description": "SS58 address (any prefix)"}}
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
