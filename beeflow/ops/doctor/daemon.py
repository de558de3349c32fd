"""Which AppAPI deploy daemon put this container here, as far as it can be known, and a warning on
the Docker Socket Proxy (deprecated in AppAPI 34, its removal planned for 35).

AppAPI tells an ExApp nothing about its daemon: the container's environment has AA_VERSION,
APP_*, NEXTCLOUD_URL and COMPUTE_DEVICE for every Docker or Kubernetes deploy, HP_* only for a
HaRP daemon with the FRP tunnel; `ex-app/info` answers id, name, version, enabled and status;
the daemon list is an administrator's page, not an ExApp API (AppAPI 32.0.0, checked in its
source). So the daemon is inferred from what the container can see (docs/deployments.md):

* HP_SHARED_KEY set: a HaRP daemon with the FRP tunnel;
* KUBERNETES_SERVICE_HOST (set in every pod): the Kubernetes daemon, always behind HaRP;
* neither, and no AA_VERSION: not deployed by AppAPI (manual install);
* neither, with AA_VERSION: a Docker daemon without the tunnel, so either the Docker Socket
  Proxy (or a Docker socket without a proxy) or HaRP with direct connect. What separates them is
  how requests arrive (HaRP's carry its headers; the PHP proxy's carry X-Origin-IP): when the
  running connector's heartbeat says which it saw (`routing`), that decides.
"""

from __future__ import annotations

from typing import Any, Final

from beeflow.ops.doctor.result import PASS, WARN, Check, Context

DEPRECATED_IN: Final = 34  # AppAPI: the Docker Socket Proxy deprecated
REMOVAL_PLANNED: Final = 35


def check_deploy_daemon(ctx: Context) -> Check:
    name = "deploy_daemon"
    d = ctx.deployment
    app_id = ctx.config.app_id
    details: dict[str, Any] = {"appapiVersion": d.appapi_version or None}
    if d.harp_tunnel:
        return Check(name, PASS, "a HaRP deploy daemon, with the FRP tunnel", details=details)
    if d.kubernetes:
        return Check(name, PASS, "the Kubernetes deploy daemon (behind HaRP)", details=details)
    if not d.appapi_version:
        return Check(
            name, PASS, "not deployed by an AppAPI daemon (manual install)", details=details
        )
    routing = ctx.heartbeat.get("routing")
    seen = routing.get("seen") if isinstance(routing, dict) else routing
    details["routingSeen"] = seen if isinstance(seen, str) else None
    if seen == "harp":
        return Check(
            name, PASS, "a HaRP deploy daemon with direct connect (no tunnel)", details=details
        )
    major = d.appapi_major
    when = (
        f"AppAPI {major} still runs it, but it is deprecated since AppAPI {DEPRECATED_IN} and "
        f"its removal is planned for {REMOVAL_PLANNED}"
        if major is not None and major >= DEPRECATED_IN
        else f"it is deprecated from AppAPI {DEPRECATED_IN} on, its removal planned for "
        f"{REMOVAL_PLANNED}"
    )
    if seen == "php":
        summary = f"a Docker daemon behind the Docker Socket Proxy: {when}"
    else:
        summary = (
            "a Docker deploy daemon without HaRP's tunnel: the Docker Socket Proxy unless the "
            f"daemon is HaRP with direct connect (--harp_exapp_direct); the proxy: {when}"
        )
    return Check(
        name,
        WARN,
        summary,
        "Move to HaRP: register a HaRP deploy daemon (docs/install-harp.md) and the app on it: "
        f"`occ app_api:app:unregister {app_id}`, then `occ app_api:app:register {app_id} "
        "<harp daemon>` (the data volume stays unless --rm-data).",
        details,
    )
