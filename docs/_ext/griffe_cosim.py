"""Griffe extension for the API reference: reads cosim's docstrings the way they are written.

cosim's docstrings are numpydoc with two habits that Markdown misreads, so this extension
adjusts the text griffe hands to mkdocstrings (the source files are not touched):

- Doctests (``>>>`` lines and their output) often stand in the description or right after
  a Parameters list, with no ``Examples`` heading. Then ``[...]`` output lines read as
  Markdown reference links and the numpy parser takes ``>>>`` lines for parameters. The
  extension puts an ``Examples`` heading before the first doctest of such a docstring, so
  the doctests render as Python code.
- Units in brackets next to other brackets, as in ``[r_K, b_L] [currency/kWh]``, read as
  a Markdown reference link. The extension escapes the second bracket, outside code.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_SECTION_RE = re.compile(r"^\s*-{3,}\s*$")
_ADJACENT_BRACKETS_RE = re.compile(r"\]( ?)\[")
_CODE_SPAN_RE = re.compile(r"(`+)(.+?)\1")


def _has_examples_heading(lines: list[str]) -> bool:
    return any(
        line.strip() in ("Examples", "Example") and i + 1 < len(lines) and _SECTION_RE.match(lines[i + 1])
        for i, line in enumerate(lines)
    )


def _escape_adjacent_brackets(line: str) -> str:
    """Escape ``[`` in ``] [`` outside inline code spans."""
    out, last = [], 0
    for m in _CODE_SPAN_RE.finditer(line):
        out.append(_ADJACENT_BRACKETS_RE.sub(r"]\1\\[", line[last:m.start()]))
        out.append(m.group(0))
        last = m.end()
    out.append(_ADJACENT_BRACKETS_RE.sub(r"]\1\\[", line[last:]))
    return "".join(out)


def rewrite(text: str) -> str:
    """The docstring text as mkdocstrings should read it."""
    lines = text.split("\n")
    out: list[str] = []
    in_fence = in_doctest = False
    examples_added = _has_examples_heading(lines)
    for line in lines:
        stripped = line.strip()
        if stripped.startswith("```"):
            in_fence = not in_fence
        if not in_fence and stripped.startswith(">>>") and not in_doctest:
            in_doctest = True
            if not examples_added:
                indent = line[: len(line) - len(line.lstrip())]
                if out and out[-1].strip():
                    out.append("")
                out += [f"{indent}Examples", f"{indent}--------"]
                examples_added = True
        elif in_doctest and not stripped:
            in_doctest = False
        if not (in_fence or in_doctest):
            line = _escape_adjacent_brackets(line)
        out.append(line)
    return "\n".join(out)


class CosimDocstrings(griffe.Extension):
    """Rewrite each docstring once, when griffe creates its object."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = rewrite(obj.docstring.value)
