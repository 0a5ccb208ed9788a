"""Network files: a source (SimBench, pandapower, or an inline feeder) plus changes,
validated once into a frozen `NetworkSpec` (the pandapower net is built from it by
`cosim.physical.networks.build_net`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from cosim.config.errors import InputError
from cosim.config.files import format_validation_error, read_yaml

#: The repository's networks/ folder.
REPO_NETWORKS = Path(__file__).resolve().parents[2] / "networks"


#: SimBench's household loads (H0-*) have q_mvar / p_mw = 0.000790 / 0.002 = 0.395 [-].
HOUSEHOLD_Q_PER_P = 0.395


class InlineFeeder(BaseModel):
    """A hand-made radial feeder: a transformer and feeders of lines, a load at each bus."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    trafo_std_type: str = "0.25 MVA 20/0.4 kV"
    line_std_type: str = "NAYY 4x150 SE"
    feeders_km: list[list[Annotated[float, Field(gt=0.0)]]]
    """Per feeder, the lengths of its consecutive line sections [km]; one load at each bus."""
    load_p_kw: Annotated[float, Field(gt=0.0)] = 4.0
    """Reference power the household active-power profiles are scaled by [kW]."""
    load_q_kvar: Annotated[float, Field(ge=0.0)] = 4.0 * HOUSEHOLD_Q_PER_P
    """Reference reactive power the household reactive-power profiles are scaled by [kvar];
    default SimBench's household ratio (q_mvar / p_mw = 0.395) times 4 kW."""


class ProfileChoice(BaseModel):
    """Which SimBench profiles a non-SimBench network's loads and PV use."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    simbench_code: str = "1-LV-rural3--0-sw"
    """SimBench grid whose shipped 15-min profiles are used."""
    load: list[str] = ["H0-A", "H0-B", "H0-C", "H0-G", "H0-L"]
    """Load profiles assigned to the loads in turn."""
    pv: list[str] = ["PV1", "PV3", "PV4", "PV7"]
    """PV profiles; each prosumer draws one with the scenario seed."""


class NetworkSpec(BaseModel):
    """A network file: source plus changes."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    name: str
    description: str = ""
    source: Literal["simbench", "pandapower", "inline"]
    code: str | None = None
    """SimBench code (simbench) or a function of pandapower.networks (pandapower)."""
    keep_sgens: bool = False
    """Keep the net's own generators; by default the scenario's PV fleet replaces them."""
    ext_grid_vm_pu: Annotated[float, Field(gt=0.8, lt=1.2)] | None = None
    """Set-point of the external grid [pu]; default: the net's own."""
    profiles: ProfileChoice = ProfileChoice()
    inline: InlineFeeder | None = None
    balanced_household_p_kw: Annotated[float, Field(gt=0.0)] = 4.0
    """Reference power of the balanced household load that replaces each asymmetric
    (per-phase) load, e.g. of the IEEE European LV feeder; the power flow is balanced [kW]."""
    balanced_household_q_kvar: Annotated[float, Field(ge=0.0)] = 4.0 * HOUSEHOLD_Q_PER_P
    """Its reference reactive power [kvar]; default SimBench's household ratio times 4 kW."""

    @model_validator(mode="after")
    def _source_fields(self) -> NetworkSpec:
        if self.source in ("simbench", "pandapower") and not self.code:
            raise ValueError(f"expected field 'code' with source '{self.source}', found none")
        if self.source == "inline" and self.inline is None:
            raise ValueError("expected field 'inline' with source 'inline', found none")
        return self


def find_network_file(name: str, scenario_path: str | Path | None = None) -> Path | None:
    """Resolve a scenario's `network` field to a file, or None."""
    candidates = [Path(name)]
    if scenario_path is not None:
        base = Path(scenario_path).resolve().parent
        candidates += [base / name, base.parent / "networks" / f"{name}.yaml"]
    candidates += [Path("networks") / f"{name}.yaml", REPO_NETWORKS / f"{name}.yaml"]
    for c in candidates:
        if c.is_file():
            return c
    return None


def load_network_spec(path: str | Path) -> NetworkSpec:
    path = Path(path)
    data = read_yaml(path)
    try:
        spec = NetworkSpec.model_validate(data)
    except ValidationError as err:
        raise InputError(path, format_validation_error(err)) from None
    problems = []
    if spec.source == "simbench":
        import simbench as sb

        if spec.code not in sb.collect_all_simbench_codes():
            problems.append(f"code: expected a SimBench grid code such as '1-LV-rural3--0-sw', found {spec.code!r}")
    elif spec.source == "pandapower":
        import pandapower.networks as pn

        if not callable(getattr(pn, spec.code, None)):
            problems.append(f"code: expected a function of pandapower.networks, found {spec.code!r}")
    if problems:
        raise InputError(path, problems)
    return spec
