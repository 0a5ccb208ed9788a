"""The operator's settings: a shipped base scenario and the fields the operator edits on
top of it, checked by the same loader as ``cosim run`` and ``cosim validate``
(`cosim.config.load.load_scenario`), with its field-level messages.

The settings are stored as text exactly as typed; each field is read as a YAML value
(``0.3`` a number, ``abc`` a string, empty = the scenario's own value), put into the
base scenario at its dotted path, written to a scenario file and loaded. Every problem
the loader reports is shown beside the field whose path it names.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from pathlib import Path

import yaml

from cosim.config.errors import InputError
from cosim.config.files import read_yaml
from cosim.config.load import load_scenario
from cosim.config.network_file import find_network_file


@dataclass(frozen=True)
class Field:
    path: str
    """Dotted path in the scenario file."""
    label: str
    choices: tuple[str, ...] = ()
    multiline: bool = False


#: The fields the operator sets, in the order of the form.
FIELDS = (
    Field("start", "First round (local time, 2016)"),
    Field("duration", "Run length (e.g. 2h, 1d)"),
    Field("market.mechanism", "Market mechanism", choices=()),  # choices from the registry
    Field("market.options", "Mechanism options (YAML mapping)", multiline=True),
    Field("market.k", "k-pricing parameter k [0..1]"),
    Field("market.retail_price_per_kwh", "Retail tariff [currency/kWh]"),
    Field("market.feed_in_price_per_kwh", "Feed-in tariff [currency/kWh]"),
    Field("market.currency", "Currency"),
    Field("feedback.charge_method", "Network-charge method", choices=("none", "flat", "sensitivity")),
    Field("feedback.charge_rate_per_kwh", "Network-charge rate [currency/kWh]"),
    Field("feedback.v_min_pu", "Voltage band, lower edge [pu]"),
    Field("feedback.v_max_pu", "Voltage band, upper edge [pu]"),
    Field("feedback.max_loading_pct", "Loading limit of lines and transformers [%]"),
    Field("feedback.curtailment_rule", "Curtailment rule", choices=("sensitivity", "pro_rata", "equal_share")),
)
FIELD_PATHS = tuple(f.path for f in FIELDS)
#: The longest value a field may hold [characters].
MAX_FIELD_CHARS = 2000


def mechanisms() -> tuple[str, ...]:
    from cosim.markets import MECHANISMS

    return tuple(sorted(MECHANISMS))


def base_scenarios(folder: Path) -> list[str]:
    """Scenario files the operator may start from (their stems)."""
    return sorted(p.stem for p in folder.glob("*.yaml"))


def _get(data: dict, path: str):
    node = data
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _set(data: dict, path: str, value) -> None:
    parts = path.split(".")
    node = data
    for part in parts[:-1]:
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    node[parts[-1]] = value


def as_text(value) -> str:
    """A scenario value as the form shows it."""
    if value is None:
        return ""
    if isinstance(value, (dict, list)):
        return yaml.safe_dump(value, sort_keys=False).strip() if value else ""
    return str(value)


def parse_value(text: str):
    """A field's text read as a YAML value; text YAML cannot read stays a string."""
    text = text.strip()
    if text == "":
        return None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def defaults_from(base_file: Path) -> dict[str, str]:
    """The base scenario's own values of the form's fields (resolved, with defaults)."""
    resolved = yaml.safe_load(load_scenario(base_file).to_yaml())
    return {path: as_text(_get(resolved, path)) for path in FIELD_PATHS}


def scenario_data(base_file: Path, values: dict[str, str], dest: Path, declared: list[dict] | None = None) -> dict:
    """The base scenario with the form's values put in, its relative paths made to work
    from `dest` (the folder the scenario file will be written to), and the admitted
    prosumers' `declared` PV and batteries (``prosumers.declared``) added to its own."""
    data = read_yaml(base_file)
    if declared:
        own = _get(data, "prosumers.declared")
        _set(data, "prosumers.declared", (own if isinstance(own, list) else []) + list(declared))
    for path in FIELD_PATHS:
        value = parse_value(values.get(path, ""))
        if value is not None:
            _set(data, path, value)
        elif path == "market.options" and isinstance(data.get("market"), dict):
            data["market"].pop("options", None)
    network = data.get("network")
    if isinstance(network, str):
        found = find_network_file(network, base_file)
        again = find_network_file(network, dest / "x.yaml")
        if found is not None and (again is None or again.resolve() != found.resolve()):
            data["network"] = str(found.resolve())
    csv = _get(data, "storage.ev.sessions_csv")
    if isinstance(csv, str) and not Path(csv).is_absolute():
        _set(data, "storage.ev.sessions_csv", str((base_file.parent / csv).resolve()))
    return data


def write_scenario(base_file: Path, values: dict[str, str], dest: Path, name: str,
                   declared: list[dict] | None = None) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    path = dest / f"{name}.yaml"
    path.write_text(yaml.safe_dump(scenario_data(base_file, values, dest, declared), sort_keys=False))
    return path


def validate(base_file: Path, values: dict[str, str], scratch: Path) -> dict[str, list[str]]:
    """Problems of the settings, by form field ('' for those no field names): the
    messages of `load_scenario`, the same as ``cosim validate`` prints."""
    errors: dict[str, list[str]] = {}
    for path in FIELD_PATHS:
        if len(values.get(path, "")) > MAX_FIELD_CHARS:
            errors.setdefault(path, []).append(
                f"{path}: expected at most {MAX_FIELD_CHARS} characters, found {len(values[path])}")
    if errors:
        return errors
    path = write_scenario(base_file, values, scratch, f"settings-check-{secrets.token_hex(8)}")  # one per request
    try:
        load_scenario(path)
    except InputError as err:
        for problem in err.problems:
            where = problem.split(":", 1)[0].strip()
            field = next((f for f in sorted(FIELD_PATHS, key=len, reverse=True)
                          if where == f or where.startswith(f + ".")), "")
            errors.setdefault(field, []).append(problem)
    finally:
        path.unlink(missing_ok=True)
    return errors


def dumps(values: dict[str, str]) -> str:
    return json.dumps({k: values.get(k, "") for k in FIELD_PATHS}, sort_keys=True)
