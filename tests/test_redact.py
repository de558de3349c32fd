"""The log redactor masks registered secrets in messages, arguments and tracebacks."""

from __future__ import annotations

import logging

import pytest

from beeflow.redact import Redactor


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
