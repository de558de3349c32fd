"""One error tree: each class carries its HTTP status, a stable code and a public reason."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar


class BeeflowError(Exception):
    """Base of every error the connector answers with; `code` is stable, `message` is public."""

    status: ClassVar[int] = 500
    code: ClassVar[str] = "internal_error"
    default_message: ClassVar[str] = "Internal error"

    def __init__(
        self,
        message: str | None = None,
        *,
        code: str | None = None,
        status: int | None = None,
        headers: Mapping[str, str] | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        self.message = message or self.default_message
        self.instance_code = code or self.code
        self.instance_status = status or self.status
        self.headers = dict(headers or {})
        self.extra = dict(extra or {})
        super().__init__(self.message)

    def body(self) -> dict[str, Any]:
        return {"code": self.instance_code, "error": self.message, **self.extra}


class BadRequest(BeeflowError):
    status = 400
    code = "bad_request"
    default_message = "Bad request"


class Unauthorized(BeeflowError):
    status = 401
    code = "unauthorized"
    default_message = "Authentication failed"


class Forbidden(BeeflowError):
    status = 403
    code = "forbidden"
    default_message = "Forbidden"


class NotFound(BeeflowError):
    status = 404
    code = "not_found"
    default_message = "Not found"


class MethodNotAllowed(BeeflowError):
    status = 405
    code = "method_not_allowed"
    default_message = "Method not allowed"


class Conflict(BeeflowError):
    status = 409
    code = "conflict"
    default_message = "Conflict"


class PayloadTooLarge(BeeflowError):
    status = 413
    code = "payload_too_large"
    default_message = "Request body too large"


class TooManyRequests(BeeflowError):
    status = 429
    code = "rate_limited"
    default_message = "Too many requests"

    def __init__(self, message: str | None = None, *, retry_after: int = 60, **kw: Any) -> None:
        headers = {"Retry-After": str(max(1, retry_after)), **kw.pop("headers", {})}
        extra = {"retryAfter": max(1, retry_after), **kw.pop("extra", {})}
        super().__init__(message, headers=headers, extra=extra, **kw)


class BadGateway(BeeflowError):
    status = 502
    code = "upstream_unreachable"
    default_message = "The upstream service is unreachable"


class ServiceUnavailable(BeeflowError):
    status = 503
    code = "unavailable"
    default_message = "Temporarily unavailable"


class GatewayTimeout(BeeflowError):
    status = 504
    code = "upstream_timeout"
    default_message = "The upstream service did not answer in time"


class ConfigError(Exception):
    """Every bad environment variable at once: {name: why}. Never holds a secret value."""

    def __init__(self, problems: Mapping[str, str]) -> None:
        self.problems = dict(problems)
        super().__init__(self.render())

    def render(self) -> str:
        lines = [f"configuration error ({len(self.problems)} problem(s)):"]
        lines += [f"  {name}: {why}" for name, why in self.problems.items()]
        return "\n".join(lines)


class NextcloudError(Exception):
    """A control-plane call to Nextcloud failed; `kind` says how (for diagnostics and retry)."""

    def __init__(self, message: str, *, kind: str, status: int | None = None) -> None:
        self.kind = kind
        self.status = status
        super().__init__(message)
