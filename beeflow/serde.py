"""The one private cattrs converter, and JSON-to-attrs structuring with readable errors."""

from __future__ import annotations

import json
import time
from typing import Any, TypeVar

import cattrs
from cattrs.errors import ClassValidationError, ForbiddenExtraKeysError

from beeflow.errors import BadRequest

T = TypeVar("T")

# Strict for payloads we define (unknown keys are errors); Nextcloud's lenient shapes are read
# with plain dict access where they are read, not through this converter.
converter = cattrs.Converter(forbid_extra_keys=True)


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
