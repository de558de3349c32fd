"""A logging filter that masks known secret values wherever they would appear (defence in depth:
secrets are kept out of log calls by construction; this catches what slips, e.g. child output)."""

from __future__ import annotations

import logging
import threading

MASK = "***"
_MIN_SECRET = 6


class Redactor(logging.Filter):
    """Replaces every registered secret in a record's rendered message and arguments."""

    def __init__(self) -> None:
        super().__init__()
        self._secrets: tuple[str, ...] = ()
        self._lock = threading.Lock()

    def add(self, secret: str | None) -> None:
        if not secret or len(secret) < _MIN_SECRET:
            return
        with self._lock:
            if secret not in self._secrets:
                # Longest first so a secret containing another is masked whole.
                self._secrets = tuple(sorted({*self._secrets, secret}, key=len, reverse=True))

    def scrub(self, text: str) -> str:
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, MASK)
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        if not self._secrets:
            return True
        try:
            message = record.getMessage()
        except Exception:  # a broken format string must not lose the record
            message = str(record.msg)
        clean = self.scrub(message)
        if clean != message:
            record.msg, record.args = clean, None
        if record.exc_info and record.exc_info[1] is not None:
            text = self.scrub(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
            record.exc_text = text
        return True


# The process-wide instance: cli installs it on the root handler; the tenant store adds the key.
REDACTOR = Redactor()


# Paths under /nc/ name users and their files and calendars ("users' data"): a log line keeps
# only the route family, e.g. /nc/remote.php/dav/files/… or /nc/ocs/v2.php/cloud/….
_NC_PREFIX = "/nc/"
_NC_KEPT = 3  # segments after /nc/


def loggable_path(path: str) -> str:
    """`path` as a log line may show it: /nc/ paths cut after their route family."""
    if not path.startswith(_NC_PREFIX):
        return path
    segments = path[len(_NC_PREFIX) :].split("/")
    if len(segments) <= _NC_KEPT:
        return path
    return _NC_PREFIX + "/".join(segments[:_NC_KEPT]) + "/…"
