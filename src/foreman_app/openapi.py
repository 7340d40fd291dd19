"""The OpenAPI request body of a route that reads its body itself, from a msgspec Struct.

Litestar describes a body from the handler's `data` parameter, which it decodes and validates
itself. The queued routes cannot let it: their bytes go to Ollama unchanged, as JSON whatever the
Content-Type, with Ollama's error messages (`requests.py`). Litestar's documented way for such a
route is its `operation_class`: `documented_body(Struct)` is an `Operation` class whose request
body is the Struct's JSON Schema (msgspec writes it; Litestar's schema types carry it, nested
Structs inlined, so a Struct must not contain itself). It costs nothing per request: Litestar
builds the description once, when it is first asked for.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import msgspec
from litestar.openapi.spec import (
    OpenAPIFormat,
    OpenAPIMediaType,
    OpenAPIType,
    Operation,
    RequestBody,
    Schema,
)

_SCHEMA_FIELDS = {
    field.metadata.get("alias", field.name): field.name for field in dataclasses.fields(Schema)
}
"""Litestar's `Schema` field for each JSON Schema keyword."""
_SCHEMA_MAPS = {"properties", "patternProperties", "dependentSchemas"}
_SCHEMA_LISTS = {"allOf", "anyOf", "oneOf", "prefixItems"}
_SCHEMA_VALUES = {"items", "additionalProperties", "not", "contains", "propertyNames"}


def documented_body(struct: type[msgspec.Struct]) -> type[Operation]:
    """An `operation_class` whose request body is `struct` as JSON (the handler reads it)."""
    json_schema = msgspec.json.schema(struct)
    body = RequestBody(
        content={"application/json": OpenAPIMediaType(schema=_schema(json_schema, json_schema))},
        description=struct.__doc__,
        required=True,
    )

    @dataclasses.dataclass
    class OperationWithBody(Operation):
        def __post_init__(self) -> None:
            self.request_body = body

    return OperationWithBody


def _schema(node: dict[str, Any], root: dict[str, Any]) -> Schema:
    """Litestar's `Schema` for one JSON Schema `node`, its `$ref`s to `root`'s `$defs` inlined."""
    if "$ref" in node:
        name = node["$ref"].rpartition("/")[2]
        return _schema(root["$defs"][name], root)
    fields: dict[str, Any] = {}
    for keyword, value in node.items():
        if keyword == "$defs":
            continue
        if keyword in _SCHEMA_MAPS:
            value = {name: _schema(inner, root) for name, inner in value.items()}
        elif keyword in _SCHEMA_LISTS:
            value = [_schema(inner, root) for inner in value]
        elif keyword in _SCHEMA_VALUES and isinstance(value, dict):
            value = _schema(value, root)
        elif keyword == "type" and isinstance(value, list):
            value = [OpenAPIType(name) for name in value]
        elif keyword == "type":
            value = OpenAPIType(value)
        elif keyword == "format":
            value = OpenAPIFormat(value)
        fields[_SCHEMA_FIELDS[keyword]] = value
    return Schema(**fields)
