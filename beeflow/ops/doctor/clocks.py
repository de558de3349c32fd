"""Clock skew against Nextcloud and the service, read from the Date headers of the probes:
signed /nc callbacks are refused beyond BEEFLOW_SIG_SKEW_SECONDS."""

from __future__ import annotations

from beeflow.ops.doctor.result import FAIL, PASS, SKIP, WARN, Check, Probe


def skew_check(name: str, who: str, probe: Probe | None, allowed: int) -> Check:
    """How far this container's clock is from `who`'s, as read when its answer came."""
    if probe is None:
        return Check(name, SKIP, f"{who} was not reachable")
    if probe.date is None:
        return Check(name, SKIP, f"{who} sent no Date header")
    # The Date header has a resolution of one second; our clock is read when the answer came.
    skew = probe.sent_at - probe.date
    magnitude = abs(skew)
    direction = "ahead of" if skew > 0 else "behind"
    summary = f"this container's clock is {magnitude:.0f} s {direction} {who}"
    details = {"skewSeconds": round(skew, 1), "allowedSeconds": allowed}
    remedy = (
        "Synchronise the clocks with NTP (host and containers share the host clock). "
        f"Signed /nc callbacks are refused beyond BEEFLOW_SIG_SKEW_SECONDS={allowed}."
    )
    if magnitude > allowed + 1:
        return Check(name, FAIL, summary, remedy, details)
    if magnitude > allowed / 2:
        return Check(name, WARN, summary + " (more than half the allowed skew)", remedy, details)
    return Check(name, PASS, summary, details=details)
