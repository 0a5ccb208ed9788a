"""A study turned into concrete runs: axes x seeds x periods, each a scenario (a plain
mapping, validated by `cosim.config.scenario.Scenario`) with the sweep's values beside it.

A run's id is a hash of its scenario, so that ``--resume`` recognises a finished run by
what it simulated, not by its place in the sweep.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from cosim.config.errors import InputError
from cosim.config.files import format_validation_error, read_yaml
from cosim.config.load import load_scenario
from cosim.config.scenario import Scenario, format_duration
from cosim.study.spec import PERIODS, SETTING_MECHANISMS, SETTINGS, Study, axis_values, base_path


@dataclass(frozen=True)
class Run:
    """One simulation of the study."""

    run_id: str
    """Hash of the scenario (12 hex digits): the run's folder under ``runs/``."""
    values: dict[str, Any]
    """The sweep's values: each axis by its path, ``seed``, ``period``; a hosting-capacity
    run also ``setting``, ``group`` and the penetration."""
    scenario: dict = field(repr=False)
    """The concrete scenario, as a scenario file would hold it."""


def base_data(study: Study, study_path: str | Path) -> dict:
    """The base scenario's mapping, checked as `cosim run` would check it, with its
    relative file paths made absolute (the runs' scenario files live elsewhere)."""
    path = base_path(study, study_path)
    load_scenario(path)  # an InputError names the base file
    data = read_yaml(path)
    network = data.get("network")
    if isinstance(network, str) and (path.parent / network).is_file():
        data["network"] = str((path.parent / network).resolve())
    ev = data.get("storage", {}).get("ev", {}) if isinstance(data.get("storage"), dict) else {}
    if isinstance(ev, dict) and ev.get("sessions_csv") and not Path(ev["sessions_csv"]).is_absolute():
        ev["sessions_csv"] = str((path.parent / ev["sessions_csv"]).resolve())
    return data


def set_path(data: dict, path: str, value: Any) -> None:
    """Set a dotted path in a nested mapping, making the sections on the way.

    >>> d = {"prosumers": {"pv_share": 0.5}}
    >>> set_path(d, "prosumers.pv_kwp", 9.0); set_path(d, "storage.ev.share", 0.2); d
    {'prosumers': {'pv_share': 0.5, 'pv_kwp': 9.0}, 'storage': {'ev': {'share': 0.2}}}
    """
    *sections, last = path.split(".")
    for s in sections:
        data = data.setdefault(s, {})
    data[last] = value


def period_values(study: Study, base: dict) -> list[tuple[str, dict]]:
    """(label, {start, duration}) for each period of the study; the base's own without periods."""
    if study.periods is None:
        return [("base", {})]
    out = []
    for p in study.periods:
        start, duration = PERIODS[p] if isinstance(p, str) else (p.start, p.duration)
        label = p if isinstance(p, str) else f"{start:%Y-%m-%d}+{format_duration(duration)}"
        out.append((label, {"start": start.isoformat(sep=" "), "duration": format_duration(duration)}))
    return out


def make_run(base: dict, study: Study, values: dict[str, Any], fixed: dict[str, Any]) -> Run:
    """The run of `values` (axes by path, ``seed``) and `fixed` (other paths to set)."""
    data = copy.deepcopy(base)
    swept = {k: v for k, v in values.items() if k in study.axes}
    for path, value in {**study.set, **fixed, **swept}.items():
        set_path(data, path, value)
    data["seed"] = values["seed"]
    digest = hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:12]
    data["name"] = f"{study.name}-{digest}"
    return Run(digest, dict(values), data)


def sweep_runs(study: Study, study_path: str | Path, base: dict | None = None) -> list[Run]:
    """Every run of the sweep (axes x seeds x periods), each scenario validated; a bad axis
    value is reported as the study file's error, naming the axis and the value."""
    base = base_data(study, study_path) if base is None else base
    check_axes(study, study_path, base)
    axes = {path: axis_values(v) for path, v in study.axes.items()}
    runs = []
    for combo in itertools.product(*axes.values()):
        for label, period in period_values(study, base):
            for seed in study.seed_list:
                values = {**dict(zip(axes, combo, strict=True)), "seed": seed, "period": label}
                runs.append(make_run(base, study, values, {k: v for k, v in period.items()}))
    problems = []
    for run in runs:
        try:
            Scenario.model_validate(run.scenario)
        except ValidationError as err:
            shown = {k: v for k, v in run.values.items() if k != "seed"}
            problems += [f"axes {shown}: the scenario {line}" for line in format_validation_error(err)]
    if problems:
        raise InputError(study_path, sorted(set(problems)))
    return runs


def check_axes(study: Study, study_path: str | Path, base: dict) -> None:
    """Each axis value and each ``set`` value on its own in the base scenario: one line per bad one."""
    from cosim.markets import MECHANISMS

    problems = []
    single = [("axes", path, i, v) for path, vs in study.axes.items() for i, v in enumerate(axis_values(vs))]
    single += [("set", path, None, v) for path, v in study.set.items()]
    if study.hosting_capacity is not None:
        hc = study.hosting_capacity
        single += [("hosting_capacity", hc.penetration, None, v) for v in (hc.low, hc.high)]
    for where, path, i, value in single:
        at = f"{where}.{path}" + (f"[{i}]" if i is not None else "")
        if path == "market.mechanism" and value not in MECHANISMS:
            problems.append(f"{at}: expected one of {sorted(MECHANISMS)}, found {value!r}")
            continue
        data = copy.deepcopy(base)
        set_path(data, path, value)
        try:
            Scenario.model_validate(data)
        except ValidationError as err:
            problems += [f"{at}: {line.partition(': ')[2]} (scenario field {line.partition(': ')[0]})"
                         for line in format_validation_error(err)]
    if problems:
        raise InputError(study_path, problems)


def hosting_run(base: dict, study: Study, values: dict[str, Any], period: dict, setting: str,
                level: float | None) -> Run:
    """A hosting-capacity run: the setting's variant only (and its mechanism, for the
    ``flexibility`` setting, with the study's options for it), the study's limits as the
    feedback's, the penetration at `level` (None: the reference run without PV, for the
    voltage rise)."""
    hc = study.hosting_capacity
    lim = hc.limits
    fixed = {**period, "variants": [SETTINGS[setting]], "feedback.enabled": setting != "passive",
             "feedback.v_min_pu": lim.v_min_pu, "feedback.v_max_pu": lim.v_max_pu,
             "feedback.max_loading_pct": lim.max_loading_pct}
    if setting in SETTING_MECHANISMS:
        options = hc.flexibility.model_dump(mode="json")
        if "seed" not in hc.flexibility.model_fields_set:
            options["seed"] = values["seed"]
        fixed.update({"market.mechanism": SETTING_MECHANISMS[setting], "market.options": options})
    if level is None:
        fixed["prosumers.pv_share"] = 0.0
        fixed["variants"] = [SETTINGS["passive"]]
        fixed["feedback.enabled"] = False
        values = {**values, "setting": "reference"}
    else:
        fixed[hc.penetration] = level
        values = {**values, "setting": setting, hc.penetration: level}
    return make_run(base, study, values, fixed)


def hosting_groups(study: Study, base: dict) -> list[tuple[dict[str, Any], dict]]:
    """(values, period) of each search: axes x periods x seeds (settings apart)."""
    axes = {path: axis_values(v) for path, v in study.axes.items()}
    out = []
    for combo in itertools.product(*axes.values()):
        for label, period in period_values(study, base):
            for seed in study.seed_list:
                out.append(({**dict(zip(axes, combo, strict=True)), "seed": seed, "period": label}, period))
    return out


__all__ = ["Run", "base_data", "check_axes", "hosting_groups", "hosting_run", "make_run",
           "period_values", "set_path", "sweep_runs"]
