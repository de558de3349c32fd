"""AppAPI lifecycle (docs/lifecycle.md): `routes` answers /heartbeat, /ready, /init and
/enabled; `pipeline` runs every feature's /init phases with progress; `boot` decides at start
whether to run them; `callers` tells who may see the heartbeat's details."""

from beeflow.lifecycle.callers import unix_peer_pid
from beeflow.lifecycle.pipeline import pipeline
from beeflow.lifecycle.routes import setup

__all__ = ["pipeline", "setup", "unix_peer_pid"]
