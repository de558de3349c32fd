"""Secrets stay where they belong, across every feature, in a real `python -m beeflow serve`
process logging at DEBUG.

One scenario drives everything with known secrets (APP_SECRET, two tenant keys provisioned by
bootstrap and re-bootstrap, HP_SHARED_KEY, a user's Basic credentials and session cookies on the
proxied requests, as Nextcloud's proxy passes them): install (/init: bootstrap, UI registration,
listeners, the progress-100 callbacks), heartbeats with and without the secret, chat over SSE,
/nc WebDAV, the webhook, user sync, the setup page (status, test, save and re-bootstrap), and
errors. Then every log line, every answer and every request the fakes received is searched.
"""

from __future__ import annotations

import asyncio
import base64
import json
import signal
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from multidict import CIMultiDictProxy

from tests.fakes.service import StreamPlan, chat_pieces
from tests.fakes.service_control import PROVISIONED_KEY
from tests.helpers import SECRET, appapi_headers
from tests.proxy.conftest import verify_jwt
from tests.reliability.stack import nc_headers
from tests.reliability.world import HP_KEY, World, world

SECOND_KEY = "tk_rebootstrapped_00ff11ee22dd33cc44bb55aa6699"
ALICE_PASSWORD = "Alice-Nextcloud-Passw0rd!"
SESSION = "nc_session_id=SeSsIoN0123456789abcdef; nc_token=ToKeN0123456789abcdef"
BASIC = "Basic " + base64.b64encode(f"alice:{ALICE_PASSWORD}".encode()).decode()
# What HaRP and Nextcloud's PHP proxy add to a browser's request (docs/proxy.md, "Headers to
# the service").
BROWSER = {
    "Authorization": BASIC,
    "Cookie": SESSION,
    "x-origin-ip": "203.0.113.7",
    "harp-shared-key": HP_KEY,
    "ex-app-host": "bee_flow",
    "ex-app-port": "23000",
}


@pytest.fixture
async def w() -> AsyncIterator[World]:
    async with world(verify_key=PROVISIONED_KEY) as running:
        yield running


class Client:
    """Talks to the process over its Unix socket and keeps every answer it got."""

    def __init__(self, w: World, env: dict[str, str], session: aiohttp.ClientSession) -> None:
        self.w, self.env, self.session = w, env, session
        self.answers: list[tuple[str, int, CIMultiDictProxy[str], bytes]] = []
        self.sent_signatures: list[str] = []

    async def call(
        self,
        method: str,
        path: str,
        *,
        uid: str | None = None,
        browser: bool = False,
        headers: dict[str, str] | None = None,
        **kw: Any,
    ) -> tuple[int, bytes]:
        hdrs: dict[str, str] = {}
        if uid is not None:
            hdrs.update(appapi_headers(uid))
        if browser:
            hdrs.update(BROWSER)
        hdrs.update(headers or {})
        if "X-Beeflow-Sig" in hdrs:
            self.sent_signatures.append(hdrs["X-Beeflow-Sig"])
        url = self.w.base(self.env) + path
        async with self.session.request(method, url, headers=hdrs, **kw) as resp:
            body = await resp.read()
            self.answers.append((path, resp.status, resp.headers, body))
            return resp.status, body


async def wait_until(predicate: Any, timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.02)


async def scenario(w: World, env: dict[str, str], c: Client) -> None:
    nc, control = w.nc, w.control
    # Install: bootstrap (key 1), UI, listeners, user-sync baseline, progress 100 + callbacks.
    status, _ = await c.call("POST", "/init", uid="")
    assert status == 200
    await wait_until(lambda: any(p.get("progress") == 100 for p in nc.progress))
    await wait_until(lambda: len(nc.callbacks) >= 2)
    assert [cb.status for cb in nc.callbacks] == [200, 200]
    for uid in (None, ""):
        status, _ = await c.call("GET", "/heartbeat", uid=uid)
        assert status == 200
    status, _ = await c.call("GET", "/heartbeat", headers=appapi_headers("", secret="wrong"))
    assert status == 200
    # Chat over SSE, a JSON call and an upload to the service, as the browser's user.
    w.service.sse = StreamPlan(chat_pieces(["Hel", "lo"]))
    status, body = await c.call(
        "POST", "/ai/chat/direct/stream", uid="alice", browser=True, json={"message": "hi"}
    )
    assert status == 200
    assert b"event: done" in body
    status, _ = await c.call("GET", "/api/json?x=1", uid="alice", browser=True)
    assert status == 200
    status, _ = await c.call("POST", "/api/echo", uid="alice", browser=True, data=b"payload")
    assert status == 200
    # /nc WebDAV as the service, signed with key 1 (via Nextcloud's proxy: browser headers too).
    file = "/nc/remote.php/dav/files/alice/notes.txt"
    for method, data in (("PUT", b"my notes"), ("GET", b""), ("PROPFIND", b"")):
        sig = dict(nc_headers(method, file, body=data, key=PROVISIONED_KEY))
        extra = {"Depth": "0"} if method == "PROPFIND" else {}
        status, _ = await c.call(
            method, file, uid="", browser=True, headers={**sig, **extra}, data=data
        )
        assert status in (200, 201, 204, 207), (method, status)
    # The webhook, forwarded to the service signed with key 1.
    event = {"eventType": "OCP\\User\\Events\\UserCreatedEvent", "userId": "alice"}
    status, _ = await c.call("POST", "/webhook/nc-events", uid="", json=event)
    assert status == 200
    await control.wait_events(1)
    # User sync: a change after the baseline, sent signed. The install's baseline run may still
    # be going: one run that waits for it (or records it) first.
    status, _ = await c.call("POST", "/webhook/user-sync?wait=1", uid="")
    assert status == 200
    nc.add_user("carol", email="carol@example.com", display_name="Carol", groups=["staff"])
    status, body = await c.call("POST", "/webhook/user-sync?wait=1", uid="")
    assert status == 200
    assert json.loads(body)["state"] == "ok"
    # The setup page as an admin: page, status, probe, save (which re-bootstraps: key 2).
    for method, path, payload in (
        ("GET", "/setup", None),
        ("GET", "/setup/status", None),
        ("POST", "/setup/test", {"apiBaseUrl": str(w.service.url)}),
    ):
        status, _ = await c.call(method, path, uid="admin", browser=True, json=payload)
        assert status == 200, path
    # The service keeps one key per organisation: a second key needs a new organisation (this
    # Nextcloud's was deleted on the service, its users with it).
    control.orgs.clear()
    control.users.clear()
    control.tenant_key = SECOND_KEY
    bootstraps = len(control.bootstraps)
    status, body = await c.call(
        "POST",
        "/setup",
        uid="admin",
        browser=True,
        json={"mode": "self-hosted", "apiBaseUrl": str(w.service.url)},
    )
    assert status == 200, body
    await wait_until(lambda: len(control.bootstraps) > bootstraps)
    control.verify_key = SECOND_KEY

    async def rebound() -> bool:
        _, body = await c.call("GET", "/setup/status", uid="admin")
        return bool(json.loads(body)["rebootstrap"]["state"] == "done")

    async with asyncio.timeout(10):
        while not await rebound():
            await asyncio.sleep(0.05)
    status, _ = await c.call("GET", "/api/json?after=rebootstrap", uid="alice", browser=True)
    assert status == 200
    sig = dict(nc_headers("GET", file, key=SECOND_KEY))
    status, _ = await c.call("GET", file, uid="", browser=True, headers=sig)
    assert status == 200
    # Errors of every kind, each carrying secrets in its request.
    forged = dict(nc_headers("GET", file, key="tk_forged_key_0123456789abcdef0"))
    errors: list[tuple[str, str, dict[str, Any], int]] = [
        ("GET", file, {"uid": "", "browser": True, "headers": forged}, 401),
        ("GET", file, {"uid": "", "headers": dict(nc_headers("GET", file, ts=1))}, 401),
        ("GET", "/api/json", {"headers": appapi_headers("alice", secret="wrong-secret")}, 401),
        ("GET", "/setup/status", {"uid": "alice", "browser": True}, 403),
        ("POST", "/api/reset", {"uid": "alice", "browser": True}, 502),
        ("GET", "/api/status/500", {"uid": "alice", "browser": True}, 500),
        ("POST", "/setup", {"uid": "admin", "json": {"mode": "nope"}}, 400),
        # Normalised to /etc/passwd: the service's USER catch-all, refused without a user.
        ("GET", "/assets/../../etc/passwd", {"browser": True}, 401),
        ("DELETE", "/heartbeat", {"browser": True}, 405),
    ]
    for method, path, kw, want in errors:
        status, _ = await c.call(method, path, **kw)
        assert status == want, (path, status)
    # A browser whose cookies outgrew the parser's limit (the answer echoes them to it only).
    big = {"Cookie": SESSION + "; pad=" + "x" * 17_000}
    async with (
        aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=env["HP_EXAPP_SOCK"])) as raw,
        raw.get("http://localhost/api/json", headers={**appapi_headers("alice"), **big}) as resp,
    ):
        assert resp.status == 400


def b64_forms(secret: str) -> list[str]:
    return [
        base64.b64encode(f"{uid}:{secret}".encode()).decode()
        for uid in ("", "alice", "admin", "carol", "mallory")
    ]


async def test_no_secret_reaches_a_log_an_answer_or_the_wrong_upstream(w: World) -> None:
    env = w.env(BEEFLOW_TENANT_KEY="auto", FAKE_FRPC_ECHO_TOKEN="1")
    del env["BEEFLOW_API_BASE_URL"]  # chosen on the setup page instead (so it can be saved)
    (w.storage / "setup-config.json").write_text(
        json.dumps({"mode": "self-hosted", "apiBaseUrl": str(w.service.url), "savedAt": 1.0})
    )
    proc = await w.start(env)
    await proc.wait_line("ready in")
    async with w.session(env) as session:
        c = Client(w, env, session)
        await scenario(w, env, c)
    proc.send(signal.SIGTERM)
    assert await proc.wait_exit(15) == 0

    service_seen = w.service.requests
    jwts = [
        r.headers["Authorization"].removeprefix("Bearer ")
        for r in service_seen
        if r.headers.get("Authorization", "").startswith("Bearer ")
    ]
    assert len(jwts) >= 4
    # The connector's signatures (webhook and user sync) and the service's (/nc calls).
    signatures = [d.headers["X-Beeflow-Sig"] for d in w.control.deliveries]
    signatures += c.sent_signatures
    sent_sigs = [
        call.headers["X-Beeflow-Sig"]
        for call in w.nc.calls
        if "X-Beeflow-Sig" in call.headers  # (must be none: checked below)
    ]
    assert len(signatures) >= 2
    secrets = {
        "APP_SECRET": [SECRET, *b64_forms(SECRET)],
        "HP_SHARED_KEY": [HP_KEY, json.dumps(HP_KEY)],
        "tenant key 1": [PROVISIONED_KEY],
        "tenant key 2": [SECOND_KEY],
        "JWT": [*jwts, *(j.rsplit(".", 1)[1] for j in jwts)],
        "signature": [s.split(".", 1)[1] for s in signatures],
        "user password": [ALICE_PASSWORD, BASIC.split()[1]],
        "session cookie": ["SeSsIoN0123456789abcdef", "ToKeN0123456789abcdef"],
    }

    # 1. Every log line, DEBUG included, all loggers, frpc's relayed output too.
    log = proc.text
    for what, values in secrets.items():
        for value in values:
            assert value not in log, f"{what} in the log"
    masked = [line for _, line in proc.lines if "***" in line]
    # The only thing the redaction filter had to catch: the stand-in frpc's config dump.
    assert masked, "the frpc token echo was expected (FAKE_FRPC_ECHO_TOKEN=1)"
    assert all("metadatas: token=" in line for line in masked), masked

    # 2. Every answer the connector gave, errors included: no secret, no JWT, no signature.
    assert len(c.answers) >= 25
    for path, status, headers, body in c.answers:
        text = body.decode("utf-8", "replace") + "".join(f"{k}:{v}" for k, v in headers.items())
        for what, values in secrets.items():
            for value in values:
                assert value not in text, f"{what} in the answer to {path} ({status})"
        assert "Traceback" not in text
        if status >= 400 and path not in ("/api/status/500",):
            assert headers.get("Content-Type") == "application/json", (path, status)

    # 3. The service's view: a Bearer JWT under the right tenant key and nothing of AppAPI's,
    #    HaRP's or the browser's; never the tenant key, the secret or the HaRP key themselves.
    for r in service_seen:
        names = {k.lower() for k in r.headers}
        assert not names & {
            "authorization-app-api",
            "ex-app-id",
            "ex-app-version",
            "aa-version",
            "harp-shared-key",
            "ex-app-host",
            "ex-app-port",
            "x-origin-ip",
            "cookie",
        }, (r.path, names)
        auth = r.headers.get("Authorization")
        if auth is not None:
            token = auth.removeprefix("Bearer ")
            assert auth.startswith("Bearer ")
            claims = None
            for key in (PROVISIONED_KEY, SECOND_KEY):
                try:
                    claims = verify_jwt(token, key)
                    break
                except AssertionError:
                    continue
            assert claims is not None, "a JWT the service cannot verify"
        everything = "".join(f"{k}:{v}\n" for k, v in r.headers.items()) + r.body.decode(
            "utf-8", "replace"
        )
        for what in ("APP_SECRET", "HP_SHARED_KEY", "tenant key 1", "tenant key 2"):
            for value in secrets[what]:
                assert value not in everything, f"{what} sent to the service ({r.path})"
        for value in (*secrets["user password"], *secrets["session cookie"]):
            assert value not in everything, (
                f"the browser's credentials reached the service ({r.path})"
            )

    # 4. Nextcloud's view: its own AppAPI header, but never the browser's credentials, the
    #    tenant key, a JWT, the service's signatures or the HaRP key.
    assert sent_sigs == []
    for call in w.nc.calls:
        everything = "".join(f"{k}:{v}\n" for k, v in call.headers.items()) + call.body.decode(
            "utf-8", "replace"
        )
        for what in (
            "tenant key 1",
            "tenant key 2",
            "JWT",
            "HP_SHARED_KEY",
            "user password",
            "session cookie",
        ):
            for value in secrets[what]:
                assert value not in everything, f"{what} sent to Nextcloud ({call.path})"
        names = {k.lower() for k in call.headers}
        assert "x-beeflow-sig" not in names
        assert "harp-shared-key" not in names
        if "authorization" in names:
            assert not call.headers["Authorization"].startswith("Basic "), call.path
    # The DAV calls were made as the signed user through AppAPI, not as the browser.
    dav_users = {d.user for d in w.dav.seen}
    assert dav_users == {""} or dav_users <= {"", "alice"}, dav_users
