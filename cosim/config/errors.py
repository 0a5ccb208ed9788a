"""Errors that reach the user with a clear message instead of a traceback."""

from __future__ import annotations

from pathlib import Path


class InputError(Exception):
    """A scenario, network or order file is invalid.

    Carries every problem found in the file, so the user can fix them all at once.
    The command line prints the message and exits with status 2.

    Parameters
    ----------
    path : path of the offending file
    problems : one line per bad field: ``field: expected ..., found ...``
    """

    def __init__(self, path: str | Path, problems: list[str]):
        self.path = str(path)
        self.problems = list(problems)
        super().__init__(self.format())

    def format(self) -> str:
        if len(self.problems) == 1:
            return f"{self.path}: {self.problems[0]}"
        lines = [f"{self.path}: {len(self.problems)} problem(s)"]
        lines += [f"  - {p}" for p in self.problems]
        return "\n".join(lines)
