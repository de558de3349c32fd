"""The one private cattrs converter, and JSON-to-attrs structuring with readable errors."""

from __future__ import annotations

import json
import time
from typing import Any, TypeVar, Union

import attrs
import cattrs
from cattrs.errors import ClassValidationError, ForbiddenExtraKeysError
from cattrs.gen import make_dict_structure_fn, make_dict_unstructure_fn, override
from cattrs.strategies import configure_union_passthrough

from beeflow.errors import BadRequest

T = TypeVar("T")

# Strict for payloads we define (unknown keys are errors); Nextcloud's lenient shapes are read
# with plain dict access where they are read, not through this converter.
converter = cattrs.Converter(forbid_extra_keys=True)
# JSON's scalars as they come (an id may be a number or a string).
configure_union_passthrough(Union[str, int, float, bool, None], converter)  # noqa: UP007


def camel(name: str) -> str:
    """`tenant_key` -> `tenantKey`: the spelling of every JSON file and answer we write."""
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


def register_camel_record(cls: type[Any], *, extra_keys: bool) -> None:
    """Structure and unstructure the attrs class `cls` under camelCase names. A field that
    defaults to None is left out while it is None. `extra_keys`: unknown keys are ignored (a
    file a newer version wrote) instead of refused."""
    names: dict[str, Any] = {
        field.name: override(rename=camel(field.name), omit_if_default=field.default is None)
        for field in attrs.fields(cls)
    }
    converter.register_structure_hook(
        cls,
        make_dict_structure_fn(cls, converter, _cattrs_forbid_extra_keys=not extra_keys, **names),
    )
    converter.register_unstructure_hook(cls, make_dict_unstructure_fn(cls, converter, **names))


def describe(exc: BaseException) -> str:
    """One readable line per problem, e.g. "apiBaseUrl: expected str"."""
    if isinstance(exc, ForbiddenExtraKeysError):
        return "unknown field(s): " + ", ".join(sorted(exc.extra_fields))
    if isinstance(exc, ClassValidationError):
        parts = []
        for problem, note in zip(
            exc.exceptions, [getattr(e, "__notes__", [""])[0] for e in exc.exceptions], strict=True
        ):
            where = str(note).removeprefix("Structuring class ").split("@")[0].strip()
            field = where.split("attribute ")[-1] if "attribute" in where else where
            parts.append(f"{field}: {describe(problem)}" if field else describe(problem))
        return "; ".join(parts)
    if isinstance(exc, KeyError):
        return f"missing field {exc.args[0]}"
    if isinstance(exc, (TypeError, ValueError)):
        return "wrong type or value"
    return type(exc).__name__


def iso_utc(ts: float | None) -> str | None:
    """A Unix time as the ISO 8601 UTC string our JSON answers and files use."""
    if ts is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def structure(data: Any, cls: type[T]) -> T:
    """Structure decoded JSON into `cls`, or raise BadRequest (400 `invalid_body`)."""
    try:
        return converter.structure(data, cls)
    except Exception as exc:
        raise BadRequest(f"Invalid request body: {describe(exc)}", code="invalid_body") from None


def loads(raw: bytes | str, cls: type[T]) -> T:
    """Parse JSON and structure it; bad JSON is 400 `invalid_json`."""
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise BadRequest("Request body is not valid JSON", code="invalid_json") from None
    return structure(data, cls)
