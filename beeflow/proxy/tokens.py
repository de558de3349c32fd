"""Per-user JWTs for the service proxy, minted with the tenant key and reused while fresh."""

from __future__ import annotations

import time
from collections import OrderedDict

import attrs

from beeflow.nextcloud.users import NcUser
from beeflow.signing import mint_jwt, user_claims


@attrs.frozen
class _Token:
    facts: tuple[object, ...]
    jwt: str
    exp: float


class TokenCache:
    """Per-user JWTs, reused while more than half their lifetime is left and while the key and
    the user's facts are unchanged. Bounded (least recently minted are dropped first)."""

    def __init__(self, *, max_entries: int = 1024) -> None:
        self._max = max_entries
        self._tokens: OrderedDict[str, _Token] = OrderedDict()

    def token(self, key: str, user: NcUser, ttl: int, *, now: float | None = None) -> str:
        now = time.time() if now is None else now
        facts = (key, user.email, user.display_name, user.is_admin, ttl)
        hit = self._tokens.get(user.uid)
        if hit is not None and hit.facts == facts and hit.exp - now > ttl / 2:
            return hit.jwt
        iat = int(now)
        claims = user_claims(
            uid=user.uid,
            email=user.email,
            name=user.display_name,
            nc_admin=user.is_admin,
            iat=iat,
            ttl=ttl,
        )
        jwt = mint_jwt(key, claims)
        self._tokens[user.uid] = _Token(facts, jwt, float(iat + ttl))
        self._tokens.move_to_end(user.uid)
        while len(self._tokens) > self._max:
            self._tokens.popitem(last=False)
        return jwt

    def clear(self) -> None:
        self._tokens.clear()
