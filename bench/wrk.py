"""wrk (Debian's package) driving the small-request test over TCP; None when wrk is missing."""

from __future__ import annotations

import asyncio
import json
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path

import attrs

_DONE = """
done = function(summary, latency, requests)
  io.write(string.format(
    "JSON {\\"requests\\":%d,\\"duration_us\\":%d,\\"status\\":%d,\\"connect\\":%d," ..
    "\\"read\\":%d,\\"write\\":%d,\\"timeout\\":%d,\\"p50\\":%f,\\"p99\\":%f}\\n",
    summary.requests, summary.duration, summary.errors.status, summary.errors.connect,
    summary.errors.read, summary.errors.write, summary.errors.timeout,
    latency:percentile(50), latency:percentile(99)))
end
"""


@attrs.frozen
class WrkResult:
    requests: int
    seconds: float
    errors: int
    p50_us: float
    p99_us: float

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


def available() -> str | None:
    return shutil.which("wrk")


def _lua_string(value: str) -> str:
    return json.dumps(value)  # a JSON string literal is a valid Lua string literal here


def script(method: str, headers: Mapping[str, str]) -> str:
    lines = [f"wrk.method = {_lua_string(method)}"]
    lines += [f"wrk.headers[{_lua_string(k)}] = {_lua_string(v)}" for k, v in headers.items()]
    return "\n".join(lines) + "\n" + _DONE


async def run(
    url: str,
    method: str,
    headers: Mapping[str, str],
    *,
    connections: int,
    seconds: int,
    threads: int = 1,
) -> WrkResult:
    exe = available()
    if exe is None:
        raise RuntimeError("wrk is not installed")
    with tempfile.NamedTemporaryFile("w", suffix=".lua", dir="/tmp", delete=False) as fh:
        fh.write(script(method, headers))
        path = Path(fh.name)
    try:
        proc = await asyncio.create_subprocess_exec(
            exe,
            f"-t{threads}",
            f"-c{connections}",
            f"-d{seconds}s",
            "--timeout",
            "10s",
            "-s",
            str(path),
            url,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), timeout=seconds + 60)
    finally:
        await asyncio.to_thread(path.unlink, missing_ok=True)
    for line in out.decode().splitlines():
        if line.startswith("JSON "):
            data = json.loads(line[5:])
            errors = sum(data[k] for k in ("status", "connect", "read", "write", "timeout"))
            return WrkResult(
                requests=int(data["requests"]) - int(data["status"]),
                seconds=data["duration_us"] / 1e6,
                errors=int(errors),
                p50_us=float(data["p50"]),
                p99_us=float(data["p99"]),
            )
    raise RuntimeError(f"wrk printed no result: {out.decode()[-500:]} {err.decode()[-500:]}")
