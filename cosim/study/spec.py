"""Study files: YAML validated once into a frozen pydantic `Study` (unknown fields are errors).

A study names a base scenario and sweeps it: ``axes`` (lists or ranges of values by the
scenario's dotted path), Monte Carlo ``seeds`` (which redraw who gets PV, batteries and EVs,
and the bids), and ``periods`` (a week per season, or the year). With a
``hosting_capacity`` section it also searches, for every seed and setting, the largest
penetration at which the grid limits hold (`cosim.study.hosting`).

Example
-------
>>> s = Study.model_validate({"name": "demo", "base": "../smoke.yaml", "seeds": 3,
...                           "axes": {"prosumers.pv_kwp": {"start": 4, "stop": 8, "step": 2}}})
>>> s.seed_list, axis_values(s.axes["prosumers.pv_kwp"])
([1, 2, 3], [4.0, 6.0, 8.0])
"""

from __future__ import annotations

import datetime as dt
import math
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from cosim.config.errors import InputError
from cosim.config.files import format_validation_error, read_yaml
from cosim.config.scenario import Duration, Scenario
from cosim.markets.flexibility import FlexibilityOptions

#: Named periods [first round, local time; length]: a week per season of the profile year 2016, or the year.
PERIODS = {
    "winter": (dt.datetime(2016, 1, 18), dt.timedelta(days=7)),
    "spring": (dt.datetime(2016, 4, 18), dt.timedelta(days=7)),
    "summer": (dt.datetime(2016, 7, 18), dt.timedelta(days=7)),
    "autumn": (dt.datetime(2016, 10, 17), dt.timedelta(days=7)),
    "year": (dt.datetime(2016, 1, 1), dt.timedelta(days=366)),
}
#: Paths a study sets itself (``seeds``, ``periods``, ``hosting_capacity``), never as an axis.
RESERVED = ("name", "seed", "start", "duration", "variants")
#: What the hosting-capacity search may raise, and its unit.
PENETRATIONS = {
    "prosumers.pv_share": "share of households with PV [0..1]",
    "prosumers.pv_kwp": "PV per household with PV [kWp]",
    "storage.ev.share": "share of households with an EV [0..1]",
}
#: The settings of a hosting-capacity search and the variant of a run each needs
#: (`cosim.sim.setup.variants_for`): no P2P on a passive grid (the classic hosting
#: capacity), no P2P with the DSO's curtailment by feedback, P2P with feedback, and the
#: DSO's flexibility market (`cosim.markets.flexibility`) with feedback.
SETTINGS = {"passive": "baseline_no_feedback", "curtailment": "baseline", "p2p": "market",
            "flexibility": "market"}
#: The mechanism each setting's runs take instead of the scenario's (the others keep it).
SETTING_MECHANISMS = {"flexibility": "flexibility"}


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)


class Range(_Frozen):
    """Values ``start, start + step, ...`` up to and including ``stop``."""

    start: float
    stop: float
    step: Annotated[float, Field(gt=0.0)]

    @model_validator(mode="after")
    def _ordered(self) -> Range:
        if self.stop < self.start:
            raise ValueError(f"expected stop >= start, found {self.stop} < {self.start}")
        if (self.stop - self.start) / self.step > 1000:
            raise ValueError(f"expected at most 1000 values, found {(self.stop - self.start) / self.step:.0f}")
        return self


Scalar = bool | int | float | str
AxisValues = Annotated[list[Scalar], Field(min_length=1)] | Range


def axis_values(values: list | Range) -> list:
    """The values of an axis: its list, or its range spelt out (rounded to 1e-9).

    >>> axis_values(Range(start=0.0, stop=0.3, step=0.1))
    [0.0, 0.1, 0.2, 0.3]
    """
    if isinstance(values, Range):
        n = int(math.floor((values.stop - values.start) / values.step + 1e-9))
        return [round(values.start + i * values.step, 9) for i in range(n + 1)]
    return list(values)


class Period(_Frozen):
    """A period of its own: first round and length."""

    start: dt.datetime
    """First round [local wall-clock time, 2016, as the scenario's ``start``]."""
    duration: Duration


class Limits(_Frozen):
    """What "the limits hold" means for the hosting-capacity search, over every round of
    the period and every LV bus and branch."""

    v_min_pu: Annotated[float, Field(gt=0.5, lt=1.0)] = 0.90
    """Lower edge of the voltage band [pu]."""
    v_max_pu: Annotated[float, Field(gt=1.0, lt=1.5)] = 1.10
    """Upper edge of the voltage band [pu] (EN 50160: 0.90-1.10)."""
    max_loading_pct: Annotated[float, Field(gt=0.0)] = 100.0
    """Loading limit of lines and the transformer [%]."""
    voltage_rise_pct: Annotated[float, Field(gt=0.0)] | None = None
    """Largest voltage rise at any LV bus that the generation may cause, against the same
    seed's run without it, in % of nominal voltage (VDE-AR-N 4105: 3); none: not checked."""
    max_curtailment_share: Annotated[float, Field(ge=0.0, le=1.0)] = 0.03
    """Largest share of the PV energy that may be curtailed (settings with feedback) [0..1]."""
    max_shed_share: Annotated[float, Field(ge=0.0, le=1.0)] = 0.03
    """Largest share of the load energy that may be shed (settings with feedback) [0..1]."""


class HostingCapacity(_Frozen):
    """The search for the largest penetration at which the limits hold (`cosim.study.hosting`)."""

    penetration: Literal["prosumers.pv_share", "prosumers.pv_kwp", "storage.ev.share"] = "prosumers.pv_share"
    """What is raised: the share of households with PV, the kWp per PV household, or the share with an EV."""
    low: Annotated[float, Field(ge=0.0)] = 0.0
    """Lowest penetration searched [unit of `penetration`]."""
    high: Annotated[float, Field(gt=0.0)] = 1.0
    """Highest penetration searched [unit of `penetration`]."""
    step: Annotated[float, Field(gt=0.0)] = 0.05
    """Resolution of the answer [unit of `penetration`], e.g. 0.05 = 5 % of households."""
    settings: Annotated[list[Literal["passive", "curtailment", "p2p", "flexibility"]],
                        Field(min_length=1)] = ["passive", "curtailment", "p2p"]
    """passive: no P2P, no feedback (the classic hosting capacity); curtailment: no P2P, the
    DSO curtails by feedback; p2p: the scenario's market with price-responsive flexibility and
    feedback; flexibility: the DSO's flexibility market (mechanism ``flexibility``) with
    feedback: where the grid check finds a violation, the DSO buys curtailment and import
    reduction from offers instead of curtailing at the feed-in value."""
    flexibility: FlexibilityOptions = FlexibilityOptions()
    """Options of the flexibility market in the ``flexibility`` setting (the mechanism's own,
    see docs/markets/flexibility.md); its markup ``seed`` is the run's seed unless set here."""
    limits: Limits = Limits()

    @model_validator(mode="after")
    def _grid(self) -> HostingCapacity:
        if self.high <= self.low:
            raise ValueError(f"expected high > low, found {self.high} <= {self.low}")
        if self.penetration != "prosumers.pv_kwp" and self.high > 1.0:
            raise ValueError(f"expected high <= 1 for a share, found {self.high}")
        if (self.high - self.low) / self.step > 1000:
            raise ValueError(f"expected at most 1000 penetration levels, found {(self.high - self.low) / self.step:.0f}")
        if len(set(self.settings)) != len(self.settings):
            raise ValueError(f"expected distinct settings, found {self.settings}")
        return self

    @property
    def levels(self) -> list[float]:
        """The penetrations the search may try, low to high."""
        return axis_values(Range(start=self.low, stop=self.high, step=self.step))


class Transformer(_Frozen):
    """Inputs of the transformer's thermal model (IEC 60076-7, `transformer-thermal-model`)."""

    ambient_c: Annotated[float, Field(ge=-40.0, le=50.0)] = 20.0
    """Ambient temperature, constant over the period [degC]."""
    insulation: Literal["normal", "thermally_upgraded"] = "normal"
    """Paper insulation, for the relative ageing rate."""


class Study(_Frozen):
    """A sweep of a base scenario, and optionally a hosting-capacity search."""

    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]+$")]
    """Study name; the results go to results/studies/<name>/."""
    description: str = ""
    base: str
    """The base scenario file (relative to the study file)."""
    seeds: Annotated[int, Field(ge=1, le=10000)] | Annotated[list[int], Field(min_length=1)] = 1
    """Monte Carlo seeds: a count N (seeds 1..N) or a list."""
    periods: Annotated[list[Literal["winter", "spring", "summer", "autumn", "year"] | Period],
                       Field(min_length=1)] | None = None
    """Named periods (a week per season, or the year) or periods of their own; none: the base scenario's."""
    axes: dict[str, AxisValues] = {}
    """Swept values by the scenario's dotted path (``prosumers.pv_share``, ``market.mechanism``, ...)."""
    set: dict[str, Scalar] = {}
    """Values every run takes, by dotted path (e.g. ``resolution: 1h``)."""
    hosting_capacity: HostingCapacity | None = None
    transformer: Transformer = Transformer()

    @model_validator(mode="after")
    def _paths(self) -> Study:
        problems = []
        for where, paths in (("axes", self.axes), ("set", self.set)):
            for path in paths:
                problem = scalar_path_problem(path)
                if problem:
                    problems.append(f"{where}.{path}: {problem}")
        both = sorted(set(self.axes) & set(self.set))
        if both:
            problems.append(f"expected each path in axes or in set, not both, found {both}")
        if self.hosting_capacity is not None and self.hosting_capacity.penetration in self.axes:
            problems.append(f"expected the hosting capacity's penetration ({self.hosting_capacity.penetration}) "
                            f"not to be an axis too, found it in axes")
        if isinstance(self.seeds, list) and len(set(self.seeds)) != len(self.seeds):
            problems.append(f"expected distinct seeds, found {self.seeds}")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @property
    def seed_list(self) -> list[int]:
        return list(range(1, self.seeds + 1)) if isinstance(self.seeds, int) else list(self.seeds)


def scalar_path_problem(path: str) -> str | None:
    """Why `path` does not name a scalar field of a scenario a study may set (None if it does).

    >>> scalar_path_problem("prosumers.pv_share") is None, scalar_path_problem("prosumers.pv_shar")
    (True, "expected a scalar field of the scenario, found no field 'pv_shar' in prosumers")
    """
    if path in RESERVED:
        return f"expected a field other than {list(RESERVED)} (the study sets those), found {path!r}"
    model: Any = Scenario
    parts = path.split(".")
    for i, part in enumerate(parts):
        fields = model.model_fields if isinstance(model, type) and issubclass(model, BaseModel) else {}
        if part not in fields:
            where = ".".join(parts[:i]) or "the scenario"
            return f"expected a scalar field of the scenario, found no field {part!r} in {where}"
        model = fields[part].annotation
    if isinstance(model, type) and issubclass(model, BaseModel):
        return f"expected a scalar field of the scenario, found the section {path!r}"
    if path == "market.options" or path.endswith(".validators"):
        return f"expected a scalar field of the scenario, found {path!r}, which is not one"
    return None


def load_study(path: str | Path) -> Study:
    """Read and validate a study file; every problem is reported at once (`InputError`)."""
    path = Path(path)
    data = read_yaml(path)
    try:
        study = Study.model_validate(data)
    except ValidationError as err:
        raise InputError(path, _split(format_validation_error(err))) from None
    base = base_path(study, path)
    if not base.is_file():
        raise InputError(path, [f"base: expected a scenario file (relative to the study file), found no such file "
                                f"{study.base!r}"])
    return study


def base_path(study: Study, study_path: str | Path) -> Path:
    """The base scenario file, resolved against the study file's folder."""
    base = Path(study.base)
    return base if base.is_absolute() else Path(study_path).resolve().parent / base


def _split(lines: list[str]) -> list[str]:
    """The model validator joins its problems with '; ': one line each, without pydantic's prefix."""
    out = []
    for line in lines:
        where, _, rest = line.partition(": ")
        if where == "(top level)" and "; " in rest:
            out += [p for p in rest.split("; ")]
        else:
            out.append(line if where != "(top level)" else rest)
    return out
