"""`serve --demo`: the connector with built-in DEMO STAND-INS of Nextcloud and the Bee Flow
service on loopback. No Nextcloud, no account, no network. The browser talks to the real
connector through a stand-in of AppAPI's proxy that signs requests as a logged-in demo admin.

    demo = Demo()
    env = await demo.start()          # stand-ins running; env for Config.from_env
    ... serve the connector on env["APP_PORT"] ...
    print(demo.url)                   # open this in a browser
    await demo.stop()
"""

from __future__ import annotations

import contextlib
import secrets
import shutil
import socket
import string
import tempfile
from pathlib import Path
from typing import Final

from yarl import URL

from beeflow import __version__
from beeflow.demo.nextcloud import DemoNextcloud
from beeflow.demo.service import DemoService
from beeflow.setup import store

APP_ID: Final = "bee_flow"
# A fixed, obviously-demo tenant key shared by the connector and the service stand-in.
DEMO_TENANT_KEY: Final = "demo-tenant-key-not-a-secret-0000"
_SECRET_ALPHABET: Final = string.ascii_letters + string.digits


def free_port(host: str = "127.0.0.1") -> int:
    """A loopback port nothing listens on right now (bound, read, released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class Demo:
    """Starts and stops the stand-ins; `url` is what to open once the connector listens."""

    def __init__(self, *, delay: float = 0.05, port: int | None = None) -> None:
        self.delay = delay
        self.port = port
        self.secret = "".join(secrets.choice(_SECRET_ALPHABET) for _ in range(64))
        self.tenant_key = DEMO_TENANT_KEY
        self.directory: Path | None = None
        self.nextcloud: DemoNextcloud | None = None
        self.service: DemoService | None = None
        self.connector_url = URL()
        self.nextcloud_url = URL()
        self.url = ""
        self.embedded_url = ""
        self.setup_url = ""
        self.harp_url = ""

    async def start(self) -> dict[str, str]:
        """Start the stand-ins; return the environment for Config.from_env."""
        port = self.port or free_port()
        self.connector_url = URL.build(scheme="http", host="127.0.0.1", port=port)
        self.directory = Path(tempfile.mkdtemp(prefix="beeflow-demo-"))
        storage = self.directory / "data"
        try:
            self.service = DemoService(self.tenant_key, delay=self.delay)
            service_url = await self.service.start()
            self.nextcloud = DemoNextcloud(
                app_id=APP_ID,
                secret=self.secret,
                app_version=__version__,
                connector_url=self.connector_url,
            )
            self.nextcloud_url = await self.nextcloud.start()
            # The picker's saved choice (not BEEFLOW_API_BASE_URL, which would lock the picker):
            # the demo's /setup can test and switch services like a real one.
            store.save(storage, "self-hosted", str(service_url))
        except BaseException:
            await self.stop()
            raise
        base = str(self.nextcloud_url)
        self.url = f"{base}/index.php/apps/app_api/proxy/{APP_ID}/"
        self.embedded_url = f"{base}/index.php/apps/app_api/embedded/{APP_ID}/main"
        self.setup_url = f"{base}/index.php/apps/app_api/proxy/{APP_ID}/setup"
        self.harp_url = f"{base}/exapps/{APP_ID}/"
        return {
            "APP_ID": APP_ID,
            "APP_SECRET": self.secret,
            "APP_VERSION": __version__,
            "APP_HOST": "127.0.0.1",
            "APP_PORT": str(port),
            "APP_PERSISTENT_STORAGE": str(storage),
            "NEXTCLOUD_URL": base,
            "BEEFLOW_TENANT_KEY": self.tenant_key,
            # The demo serves the UI bundled with the connector, never the network's.
            "BEEFLOW_EMBED_BASE_URL": "bundled",
        }

    async def stop(self) -> None:
        """Stop the stand-ins and remove the temporary storage (safe to call twice)."""
        if self.nextcloud is not None:
            await self.nextcloud.stop()
            self.nextcloud = None
        if self.service is not None:
            await self.service.stop()
            self.service = None
        if self.directory is not None:
            with contextlib.suppress(OSError):
                shutil.rmtree(self.directory)
            self.directory = None
