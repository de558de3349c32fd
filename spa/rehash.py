"""Rename spa/assets/* to carry their content hash and update index.html (run after editing).

Files under assets/ are served as immutable for a year, so their names must change with their
content. `python spa/rehash.py` renames `name[.oldhash].ext` to `name.<sha256[:10]>.ext` and
rewrites the references in index.html. tests/web/test_static.py fails when this was forgotten.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

HERE = Path(__file__).resolve().parent
NAME = re.compile(r"^(?P<stem>[A-Za-z0-9_-]+?)(?:\.(?P<hash>[0-9a-f]{10}))?(?P<ext>\.[a-z0-9]+)$")


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:10]


def main() -> None:
    index = HERE / "index.html"
    html = index.read_text(encoding="utf-8")
    for path in sorted((HERE / "assets").iterdir()):
        match = NAME.match(path.name)
        if not match or not path.is_file():
            continue
        wanted = f"{match['stem']}.{digest(path)}{match['ext']}"
        if wanted != path.name:
            path.rename(path.with_name(wanted))
        pattern = re.escape(match["stem"]) + r"(?:\.[0-9a-f]{10})?" + re.escape(match["ext"])
        html = re.sub(r"assets/" + pattern, "assets/" + wanted, html)
    index.write_text(html, encoding="utf-8")


if __name__ == "__main__":
    main()
