"""What runs between our fork and frpc's exec: ask the kernel to kill this process when its
parent dies, then become frpc, which keeps that order (docs/transports.md, "Tied to its parent").

Run as a script (`python -I -S child.py PARENT_PID STATUS_FD FRPC ARGS...`), not imported: it
must start fast and import nothing of beeflow. It reports on STATUS_FD, which closes when the
exec succeeds: `exec <errno>` when frpc cannot be executed, `nopdeathsig` (then frpc still
runs) when the kernel call is not available. asyncio's subprocess support offers no safe hook
after the fork (`preexec_fn` is unsafe with threads), hence this short-lived step.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def _report(fd: int, message: str) -> None:
    with contextlib.suppress(OSError):
        os.write(fd, message.encode() + b"\n")


def main(argv: list[str]) -> int:
    parent, status_fd, binary, args = int(argv[1]), int(argv[2]), argv[3], argv[3:]
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        ok = libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0
    except (OSError, AttributeError):
        ok = False
    if not ok:
        _report(status_fd, "nopdeathsig")
    # The parent may have died before the prctl took effect: then nobody would kill us.
    if os.getppid() != parent:
        return 1
    os.set_inheritable(status_fd, False)  # closed by the exec: end of file means frpc runs
    try:
        os.execv(binary, args)  # noqa: S606 - frpc itself, as the supervisor resolved it
    except OSError as exc:
        _report(status_fd, f"exec {exc.errno or 0}")
    return 127


if __name__ == "__main__":
    sys.exit(main(sys.argv))
