"""Reading input files: YAML mappings, and pydantic's validation errors turned into one
line per bad field in cosim's format (where, what was expected, what was found)."""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import ValidationError

from cosim.config.errors import InputError


def _expected(msg: str) -> str:
    """Turn pydantic's wording into 'expected ...'."""
    msg = msg.removeprefix("Value error, ")
    for prefix, repl in (
        ("Input should be ", "expected "),
        ("String should match pattern ", "expected text matching "),
        ("Input should ", "expected input to "),
    ):
        if msg.startswith(prefix):
            return repl + msg[len(prefix):]
    return msg if msg.startswith("expected") else f"expected {msg[0].lower()}{msg[1:]}"


def format_validation_error(err: ValidationError) -> list[str]:
    """One line per bad field: where, what was expected, what was found."""
    lines = []
    for e in err.errors():
        where = ".".join(str(p) for p in e["loc"]) or "(top level)"
        if e["type"] == "extra_forbidden":
            lines.append(f"{where}: unknown field (typo?), found {e['input']!r}")
        elif e["type"] == "missing":
            lines.append(f"{where}: required field is missing")
        else:
            msg = _expected(e["msg"])
            if "found" in msg:
                lines.append(f"{where}: {msg}")
            else:
                found = e.get("input")
                found = "a mapping" if isinstance(found, dict) else repr(found)
                lines.append(f"{where}: {msg}, found {found}")
    return lines


def read_yaml(path: Path) -> dict:
    """Read a YAML mapping or raise InputError naming the file."""
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise InputError(path, ["file not found"]) from None
    except IsADirectoryError:
        raise InputError(path, ["expected a YAML file, found a folder"]) from None
    except UnicodeDecodeError as err:
        raise InputError(path, [f"expected UTF-8 text, found bytes that are not ({err.reason} at byte {err.start})"]) from None
    except yaml.YAMLError as err:
        raise InputError(path, [f"not valid YAML: {err}"]) from None
    if not isinstance(data, dict):
        raise InputError(path, [f"expected a YAML mapping of fields, found {type(data).__name__}"])
    return data
