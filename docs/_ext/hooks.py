"""MkDocs hook of the API reference: every public module of a layer gets documented.

Modules are being split and moved, so each page of ``docs/api/`` lists its main modules
in reading order (``::: cosim.<layer>.<module>`` lines) and ends with a marker line::

    <!-- api-modules: cosim.<layer> -->

This hook replaces the marker with a ``:::`` line for every other public module found
under ``cosim/<layer>/`` (subpackages included, names starting with ``_`` left out), and
drops a listed line whose module no longer exists (logged), so that a split module is
documented without editing the page. Edit the page to change the reading order.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

log = logging.getLogger("mkdocs.hooks.api_modules")

ROOT = Path(__file__).resolve().parents[2]
MARKER_RE = re.compile(r"^<!-- api-modules: (cosim(?:\.\w+)*) -->$", re.MULTILINE)
DIRECTIVE_RE = re.compile(r"^::: (cosim(?:\.\w+)*)\s*$", re.MULTILINE)


def module_path(name: str) -> Path | None:
    """The file of a module or package by dotted name, or None."""
    base = ROOT.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def public_modules(package: str) -> list[str]:
    """Every public module under a package, subpackages' modules included, sorted."""
    folder = ROOT.joinpath(*package.split("."))
    names = []
    for path in sorted(folder.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        if path.name == "__init__.py" or any(p.startswith("_") for p in parts):
            continue
        if not all((ROOT.joinpath(*parts[:i]) / "__init__.py").is_file() for i in range(2, len(parts))):
            continue
        names.append(".".join(parts))
    return names


def on_page_markdown(markdown: str, page, **kwargs) -> str:
    marker = MARKER_RE.search(markdown)
    if not marker:
        return markdown

    def keep_existing(m: re.Match) -> str:
        if module_path(m.group(1)) is None:
            log.info("%s: %s no longer exists; left out", page.file.src_path, m.group(1))
            return ""
        return m.group(0)

    markdown = DIRECTIVE_RE.sub(keep_existing, markdown)
    listed = set(DIRECTIVE_RE.findall(markdown))
    others = [name for name in public_modules(marker.group(1)) if name not in listed]
    block = "\n\n".join(f"::: {name}" for name in others)
    if block:
        block = "## Other modules\n\n" + block
    return markdown[: marker.start()] + block + markdown[marker.end():]
