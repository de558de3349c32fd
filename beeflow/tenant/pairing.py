"""Pairing codes (`XXXX-XXXX`): an admin's way to bind this Nextcloud to an existing
organisation; read leniently, shown only masked."""

from __future__ import annotations

from beeflow.envparse import PAIRING_CODE_RE


def normalise_pairing_code(raw: object) -> str | None:
    """`XXXX-XXXX` (letters and digits) after trimming and upper-casing, else None."""
    if not isinstance(raw, str):
        return None
    code = raw.strip().upper()
    return code if PAIRING_CODE_RE.fullmatch(code) else None


def mask_pairing_code(code: str) -> str:
    """What may be logged or shown of a pairing code: its first 4 characters (docs/security.md,
    "Secrets: where they live, where they never go")."""
    return code[:4] + "***"
