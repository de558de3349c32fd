"""The log redactor masks registered secrets in messages, arguments and tracebacks."""

from __future__ import annotations

import logging

import pytest

from beeflow.redact import Redactor, loggable_path


def test_masks_messages_args_and_tracebacks(caplog: pytest.LogCaptureFixture) -> None:
    redactor = Redactor()
    redactor.add("s3cr3t-value-123")
    redactor.add("s3cr3t-value-123-longer")
    redactor.add("short")  # too short to mask safely: ignored
    log = logging.getLogger("test.redact")
    log.addFilter(redactor)
    try:
        with caplog.at_level(logging.INFO, logger="test.redact"):
            log.info("token=%s and %s", "s3cr3t-value-123-longer", "s3cr3t-value-123")
            try:
                raise ValueError("bad s3cr3t-value-123")
            except ValueError:
                log.exception("failed")
    finally:
        log.removeFilter(redactor)
    text = caplog.text
    assert "s3cr3t" not in text
    assert "token=*** and ***" in text
    assert "short" not in [r.getMessage() for r in caplog.records]


@pytest.mark.parametrize(
    ("path", "shown"),
    [
        ("/api/conversations/42", "/api/conversations/42"),
        ("/nc/remote.php/dav/files/alice/My Report.pdf", "/nc/remote.php/dav/files/…"),
        ("/nc/remote.php/dav/calendars/bob/personal/x.ics", "/nc/remote.php/dav/calendars/…"),
        ("/nc/ocs/v2.php/cloud/users/carol", "/nc/ocs/v2.php/cloud/…"),
        ("/nc/remote.php/dav/files", "/nc/remote.php/dav/files"),
        ("/nc/", "/nc/"),
    ],
)
def test_nc_paths_in_logs_stop_at_the_route_family(path: str, shown: str) -> None:
    assert loggable_path(path) == shown
