"""Build step: download the frpc release pinned in frpc/pin.toml for one architecture, verify its
sha256, and extract the frpc binary. Any architecture without a pinned checksum fails the build.

    python fetch_frpc.py --pin frpc/pin.toml --arch "$TARGETARCH" --out /out/frpc

Standard library only: it runs in the image's Python base before anything else is installed.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import re
import sys
import tarfile
import tomllib
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Final

RELEASES: Final = "https://github.com/fatedier/frp/releases/download"
MAX_DOWNLOAD: Final = 64 * 1024 * 1024
_VERSION_RE: Final = re.compile(r"^\d+\.\d+\.\d+$")
_SHA256_RE: Final = re.compile(r"^[0-9a-f]{64}$")


class PinError(Exception):
    """The pin file, the architecture or the download is not what the build may use."""


def read_pin(path: Path) -> tuple[str, dict[str, str]]:
    """(version, {arch: sha256}) from frpc/pin.toml, validated."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise PinError(f"cannot read {path}: {exc}") from None
    version = data.get("version")
    sums = data.get("sha256")
    if not isinstance(version, str) or not _VERSION_RE.match(version):
        raise PinError(f"{path}: `version` must look like 0.61.1")
    if not isinstance(sums, dict) or not sums:
        raise PinError(f"{path}: a [sha256] table with one key per architecture is required")
    for arch, digest in sums.items():
        if not isinstance(digest, str) or not _SHA256_RE.match(digest):
            raise PinError(f"{path}: sha256.{arch} must be 64 lowercase hex digits")
    return version, dict(sums)


def release_url(version: str, arch: str, base: str = RELEASES) -> str:
    return f"{base}/v{version}/frp_{version}_linux_{arch}.tar.gz"


def checksum_for(sums: dict[str, str], arch: str) -> str:
    if arch not in sums:
        raise PinError(
            f"no pinned frpc checksum for architecture {arch!r} "
            f"(pinned: {', '.join(sorted(sums))}); build for one of those"
        )
    return sums[arch]


def download(url: str, limit: int = MAX_DOWNLOAD) -> bytes:
    if not url.startswith(("https://", "http://")):
        raise PinError(f"refusing to download {url!r}")
    request = urllib.request.Request(url, headers={"User-Agent": "beeflow-image-build"})  # noqa: S310
    with urllib.request.urlopen(request, timeout=60) as response:  # noqa: S310 - checked above
        data: bytes = response.read(limit + 1)
    if len(data) > limit:
        raise PinError(f"{url} is larger than {limit} bytes")
    return data


def verify(data: bytes, expected: str) -> None:
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected:
        raise PinError(f"sha256 mismatch: expected {expected}, got {actual}")


def extract_frpc(data: bytes, version: str, arch: str) -> bytes:
    member = f"frp_{version}_linux_{arch}/frpc"
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as archive:
        try:
            info = archive.getmember(member)
        except KeyError:
            raise PinError(f"the archive has no {member}") from None
        if not info.isfile():
            raise PinError(f"{member} is not a regular file")
        handle = archive.extractfile(info)
        if handle is None:
            raise PinError(f"cannot read {member}")
        return handle.read()


def fetch(pin: Path, arch: str, out: Path, base: str = RELEASES) -> str:
    version, sums = read_pin(pin)
    expected = checksum_for(sums, arch)
    url = release_url(version, arch, base)
    data = download(url)
    verify(data, expected)
    binary = extract_frpc(data, version, arch)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(binary)
    out.chmod(0o755)
    return f"frpc {version} ({arch}) verified from {url}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pin", type=Path, required=True, help="frpc/pin.toml")
    parser.add_argument("--arch", required=True, help="Docker's TARGETARCH (amd64, arm64)")
    parser.add_argument("--out", type=Path, required=True, help="where to write the binary")
    parser.add_argument("--base-url", default=RELEASES, help="release download base (tests)")
    args = parser.parse_args(argv)
    try:
        message = fetch(args.pin, args.arch, args.out, args.base_url.rstrip("/"))
    except (PinError, OSError, tarfile.TarError) as exc:
        sys.stderr.write(f"fetch_frpc: {exc}\n")
        return 1
    sys.stdout.write(message + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
