"""The private converter: strict structuring with readable 400s."""

from __future__ import annotations

import attrs
import pytest

from beeflow.errors import BadRequest
from beeflow.serde import loads


@attrs.frozen
class Payload:
    mode: str
    apiBaseUrl: str = ""


def test_structures_valid_json() -> None:
    assert loads(b'{"mode": "cloud"}', Payload) == Payload("cloud")


@pytest.mark.parametrize(
    ("raw", "code", "fragment"),
    [
        (b"{not json", "invalid_json", "not valid JSON"),
        (b"\xff\xfe", "invalid_json", "not valid JSON"),
        (b'{"mode": "cloud", "extra": 1}', "invalid_body", "extra"),
        (b"{}", "invalid_body", "mode"),
        (b"[]", "invalid_body", "Invalid request body"),
    ],
)
def test_bad_bodies_are_400_with_a_code(raw: bytes, code: str, fragment: str) -> None:
    with pytest.raises(BadRequest) as err:
        loads(raw, Payload)
    assert err.value.instance_code == code
    assert fragment in err.value.message
