"""Scenario files: YAML validated once into frozen pydantic objects.

A scenario says which network, which period, which prosumer fleet, which market,
which network feedback, which ledger (validators, injected attacks) and which storage
(batteries, EVs, shiftable loads and their day-ahead scheduling) to simulate. Every field has a unit in its name or docstring and
a default where a sensible one exists; unknown fields are errors, so a typo is never
silently ignored.

Example
-------
>>> s = Scenario.model_validate({"name": "demo", "network": "feeder"})
>>> s.resolution, s.market.k, s.feedback.v_max_pu
(datetime.timedelta(seconds=900), 0.5, 1.1)
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    model_validator,
)

#: SimBench profiles cover the leap year 2016 at 15-min resolution.
PROFILE_START = dt.datetime(2016, 1, 1)
PROFILE_END = dt.datetime(2017, 1, 1)

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(d|h|min|s)\s*$")
_UNIT_SECONDS = {"d": 86400, "h": 3600, "min": 60, "s": 1}


def _parse_duration(value: Any) -> Any:
    """Accept '7d', '24h', '15min', '30s' (or a timedelta)."""
    if isinstance(value, str):
        m = _DURATION.match(value)
        if not m:
            raise ValueError("expected a duration such as '7d', '24h', '15min'")
        return dt.timedelta(seconds=float(m.group(1)) * _UNIT_SECONDS[m.group(2)])
    return value


def format_duration(value: dt.timedelta) -> str:
    """Write a timedelta back in the scenario's own notation.

    >>> format_duration(dt.timedelta(days=7)), format_duration(dt.timedelta(minutes=15))
    ('7d', '15min')
    """
    seconds = int(value.total_seconds())
    for unit in ("d", "h", "min"):
        if seconds % _UNIT_SECONDS[unit] == 0:
            return f"{seconds // _UNIT_SECONDS[unit]}{unit}"
    return f"{seconds}s"


Duration = Annotated[
    dt.timedelta, BeforeValidator(_parse_duration), PlainSerializer(format_duration, return_type=str)
]
Share = Annotated[float, Field(ge=0.0, le=1.0)]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)


class DeclaredProsumer(_Frozen):
    """What one household declared (e.g. when registering in the portal): its rooftop PV
    and home battery replace those the shares drew for the household at `bus`."""

    bus: Annotated[int, Field(ge=0)]
    """pandapower bus index of the household (the first load at that bus)."""
    pv_kwp: Annotated[float, Field(ge=0.0, le=1000.0)] = 0.0
    """Peak power of its rooftop PV [kWp]; 0: none."""
    battery_kwh: Annotated[float, Field(ge=0.0, le=1000.0)] = 0.0
    """Usable capacity of its home battery [kWh]; 0: none."""
    battery_kw: Annotated[float, Field(ge=0.0, le=1000.0)] = 0.0
    """Charge and discharge power limit of its home battery [kW]; 0: none."""
    ev: bool = False
    """An EV charged at home, with ``storage.ev``'s car, charger and seeded nightly
    sessions, besides the ``storage.ev.share`` drawn (not with ``storage.ev.sessions_csv``,
    which names every EV itself)."""

    @model_validator(mode="after")
    def _battery_whole(self) -> DeclaredProsumer:
        if (self.battery_kwh > 0.0) != (self.battery_kw > 0.0):
            raise ValueError(
                f"expected battery_kwh and battery_kw both > 0 (a battery) or both 0 (none), found "
                f"battery_kwh={self.battery_kwh}, battery_kw={self.battery_kw}"
            )
        return self


class Prosumers(_Frozen):
    """The prosumer fleet. Every load of the network is a prosumer."""

    pv_share: Share = 0.8
    """Share of prosumers with rooftop PV [0..1]."""
    pv_kwp: Annotated[float, Field(ge=0.0)] = 8.0
    """Peak power of each rooftop PV system [kWp]."""
    battery_share: Share = 0.3
    """Share of prosumers with a home battery [0..1]."""
    battery_kwh: Annotated[float, Field(gt=0.0)] = 10.0
    """Usable battery capacity [kWh]."""
    battery_kw: Annotated[float, Field(gt=0.0)] = 5.0
    """Battery charge and discharge power limit [kW]."""
    battery_efficiency: Annotated[float, Field(gt=0.0, le=1.0)] = 0.95
    """One-way charge and discharge efficiency [0..1]."""
    battery_initial_soc: Share = 0.5
    """State of charge at the start of the run [0..1]."""
    load_scale: Annotated[float, Field(gt=0.0)] = 1.0
    """Multiplier on the SimBench load profiles [-]."""
    phases: Literal["three-phase", "single-phase"] = "three-phase"
    """How loads, PV, batteries and EV chargers connect where the network gives no phases:
    three-phase: all on a, b and c; single-phase: each household on a phase drawn with the
    seed, each of its systems on that phase unless larger than single_phase_max_kva. A
    network's published phases (the IEEE European LV feeder) are kept. See
    `cosim.physical.phases`."""
    single_phase_max_kva: Annotated[float, Field(gt=0.0)] = 4.6
    """Size above which a system is three-phase in single-phase mode [kVA]: a load's
    reference apparent power, PV peak [kWp], battery and EV charger power [kW]."""
    declared: list[DeclaredProsumer] = []
    """Households whose PV and battery are declared, not drawn by the shares (one entry
    per bus; each bus must have a load)."""

    @model_validator(mode="after")
    def _declared_buses_distinct(self) -> Prosumers:
        buses = [d.bus for d in self.declared]
        twice = sorted({b for b in buses if buses.count(b) > 1})
        if twice:
            raise ValueError(f"expected each bus at most once in declared, found buses {twice} more than once")
        return self


class Market(_Frozen):
    """The market each round is cleared in."""

    mechanism: str = "uniform"
    """Clearing mechanism, by registry name (see `cosim.markets.MECHANISMS`)."""
    k: Share = 0.5
    """k-pricing: price = low + k (high - low) in the interval of clearing prices [0..1]."""
    retail_price_per_kwh: Annotated[float, Field(ge=0.0)] = 0.30
    """Price the outside grid sells at [currency/kWh]."""
    feed_in_price_per_kwh: Annotated[float, Field(ge=0.0)] = 0.08
    """Price the outside grid buys at [currency/kWh]."""
    currency: str = "EUR"
    bidding: Literal["truthful", "zero-intelligence"] = "truthful"
    """truthful: buyers bid retail, sellers ask feed-in; zero-intelligence: seeded random price between the two."""
    options: dict[str, Any] = {}
    """The mechanism's own settings, checked against its `Options` (see the README)."""

    @model_validator(mode="after")
    def _tariffs_ordered(self) -> Market:
        if self.feed_in_price_per_kwh > self.retail_price_per_kwh:
            raise ValueError(
                f"expected feed_in_price_per_kwh <= retail_price_per_kwh, found "
                f"{self.feed_in_price_per_kwh} > {self.retail_price_per_kwh}"
            )
        return self


class Feedback(_Frozen):
    """Network feedback: grid limits, charges, and the fixed-point iteration."""

    enabled: bool = True
    v_min_pu: Annotated[float, Field(gt=0.5, lt=1.0)] = 0.90
    """Lower edge of the voltage band [pu]."""
    v_max_pu: Annotated[float, Field(gt=1.0, lt=1.5)] = 1.10
    """Upper edge of the voltage band [pu]."""
    max_loading_pct: Annotated[float, Field(gt=0.0)] = 100.0
    """Loading limit of lines and transformers [%]."""
    charge_method: Literal["none", "flat", "sensitivity"] = "none"
    """Network charge on each prosumer's physical injection at its bus, whoever the
    counterparty (peer, community manager, grid): none; flat, a local use-of-system charge
    on the withdrawals the feeder's own injections supplied; or sensitivity, nodal loss
    pricing (rate x marginal loss factor x injection). See `cosim.sim.tariff`."""
    charge_rate_per_kwh: Annotated[float, Field(ge=0.0)] = 0.0
    """flat: charge per kWh of locally supplied withdrawal; sensitivity: price per kWh of
    network losses an injection causes [currency/kWh]."""
    max_iterations: Annotated[int, Field(ge=1, le=50)] = 5
    """Re-clearings per round before curtailment or shedding takes over [-]."""
    margin_pu: Annotated[float, Field(ge=0.0, le=0.05)] = 0.002
    """Voltage margin the linearised constraints aim inside the band [pu]."""
    margin_pct: Annotated[float, Field(ge=0.0, le=20.0)] = 1.0
    """Loading margin the linearised constraints aim below the limit [%]."""
    max_vuf_pct: Annotated[float, Field(gt=0.0, le=100.0)] = 2.0
    """Limit of every bus's voltage unbalance factor |V2| / |V1| [%] (EN 50160: 2 %);
    checked only with ``physics: three-phase`` (a balanced power flow has no unbalance)."""
    curtailment_rule: Literal["sensitivity", "pro_rata", "equal_share"] = "sensitivity"
    """Who is curtailed (or shed) when the re-clearings leave a violation:
    ``sensitivity``: the prosumers where a kWh helps most (least energy);
    ``pro_rata``: every prosumer that makes the violation worse, in proportion to its
    available export (import, for shedding); ``equal_share``: the same fraction of PV
    energy for every PV owner behind the violated element."""

    @model_validator(mode="after")
    def _charge_has_rate(self) -> Feedback:
        if self.charge_method != "none" and self.charge_rate_per_kwh <= 0.0:
            raise ValueError(
                f"expected charge_rate_per_kwh > 0 with charge_method '{self.charge_method}', "
                f"found {self.charge_rate_per_kwh}"
            )
        return self


class Islanded(_Frozen):
    """The grid-forming unit that is the slack of an islanded feeder."""

    grid_forming_bus: int | None = None
    """pandapower bus index of the grid-forming battery inverter; default: the transformer's LV bus."""
    p_kw: Annotated[float, Field(gt=0.0)] = 250.0
    """Inverter power limit, charging and discharging [kW]."""
    s_kva: Annotated[float, Field(gt=0.0)] | None = None
    """Inverter apparent power rating [kVA]: the slack's P and the reactive power it
    supplies to the feeder together stay within it; default ``p_kw``."""
    e_kwh: Annotated[float, Field(gt=0.0)] = 1000.0
    """Usable storage capacity [kWh]."""
    initial_soc: Share = 0.5
    """State of charge at the start of the run [0..1]."""
    soc_min: Share = 0.05
    soc_max: Share = 0.95
    efficiency: Annotated[float, Field(gt=0.0, le=1.0)] = 0.95
    """One-way efficiency [0..1]."""
    voll_per_kwh: Annotated[float, Field(gt=0.0)] = 10.0
    """Value of lost load: the cost of energy shed [currency/kWh]."""

    @model_validator(mode="after")
    def _soc_bounds(self) -> Islanded:
        if not self.soc_min < self.soc_max:
            raise ValueError(f"expected soc_min < soc_max, found {self.soc_min} >= {self.soc_max}")
        if not self.soc_min <= self.initial_soc <= self.soc_max:
            raise ValueError(
                f"expected soc_min <= initial_soc <= soc_max, found {self.initial_soc} "
                f"outside [{self.soc_min}, {self.soc_max}]"
            )
        return self


class Adversary(_Frozen):
    """Bad orders injected to exercise order admission (see `cosim.virtual.admission.Adversary`).

    Honest controllers never send a bad order; each share is the chance that one of the
    round's honest orders draws that attack. All zero (the default): no attack.
    """

    forged_share: Share = 0.0
    """An attacker submits an order in the prosumer's name signed with another key [0..1]."""
    replay_share: Share = 0.0
    """An attacker submits one of the previous round's orders again [0..1]."""
    duplicate_share: Share = 0.0
    """An attacker submits the round's order a second time, same nonce [0..1]."""
    overdelivery_share: Share = 0.0
    """The controller offers more than the prosumer can deliver or absorb; the prosumer
    then trades only with the outside party [0..1]."""
    malformed_share: Share = 0.0
    """A faulty controller first sends an order, signed with its own key, with a negative,
    NaN or infinite quantity or price or an invalid side; its honest order follows [0..1]."""
    unknown_share: Share = 0.0
    """An outsider whose key is not in the genesis block submits an order [0..1]."""


_VALIDATOR_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


def _validator_names(value: Any) -> Any:
    """A count N stands for validator_1 .. validator_N."""
    if isinstance(value, int) and not isinstance(value, bool):
        if not 1 <= value <= 100:
            raise ValueError(f"expected between 1 and 100 validators, found {value}")
        return [f"validator_{i}" for i in range(1, value + 1)]
    return value


class Ledger(_Frozen):
    """The virtual layer: signed orders, blocks approved by a quorum of validators.

    Proof of authority: a block is valid only with the signatures of more than two
    thirds of the validators (3 of 4, 5 of 7). This is the ledger's majority condition:
    validators holding a quorum can together sign any block, true or false, so the
    ledger is only as trustworthy as more than a third of its validators are honest.
    """

    validators: Annotated[list[str], BeforeValidator(_validator_names)] = ["dso", "operator", "member_1", "member_2"]
    """Names of the validators, each with a key derived from the seed; or their number."""
    adversary: Adversary = Adversary()

    @model_validator(mode="after")
    def _names(self) -> Ledger:
        if not self.validators:
            raise ValueError("expected at least one validator, found none")
        bad = [v for v in self.validators if not _VALIDATOR_NAME.match(v)]
        if bad:
            raise ValueError(f"expected validator names of letters, digits, '_', '.', '-', found {bad}")
        if len(set(self.validators)) != len(self.validators):
            raise ValueError(f"expected distinct validator names, found {self.validators}")
        return self

    @property
    def quorum(self) -> int:
        """Signatures a block needs: more than two thirds of the validators."""
        return 2 * len(self.validators) // 3 + 1


class ElectricVehicles(_Frozen):
    """Electric vehicles charged at home: one per chosen prosumer, one session a night.

    Each session runs from an arrival in the evening to a departure the next morning
    (times seeded, normally distributed around the means). The car arrives with the
    energy needed at departure less the energy of the day's driving, and must leave with
    ``departure_soc`` of its battery. ``sessions_csv`` replaces the random sessions with
    a table of real ones.
    """

    share: Share = 0.0
    """Share of prosumers with an EV [0..1]."""
    battery_kwh: Annotated[float, Field(gt=0.0)] = 50.0
    """Usable battery capacity of each EV [kWh]."""
    charger_kw: Annotated[float, Field(gt=0.0)] = 11.0
    """Home charger power limit, charging and (with v2g) discharging [kW]."""
    charge_efficiency: Annotated[float, Field(gt=0.0, le=1.0)] = 0.92
    """Share of the charger's input that reaches the battery [0..1]."""
    discharge_efficiency: Annotated[float, Field(gt=0.0, le=1.0)] = 0.92
    """Share of the energy taken from the battery that the charger delivers (v2g) [0..1]."""
    v2g: bool = False
    """Vehicle-to-grid: the charger may also discharge the car while it is plugged in."""
    arrival_h: Annotated[float, Field(ge=0.0, lt=24.0)] = 18.0
    """Mean arrival time [hour of day]."""
    departure_h: Annotated[float, Field(ge=0.0, lt=24.0)] = 7.5
    """Mean departure time [hour of day]; before arrival_h means the next morning."""
    time_sd_h: Annotated[float, Field(ge=0.0, le=6.0)] = 1.0
    """Standard deviation of arrival and departure times [h]."""
    departure_soc: Share = 0.8
    """Energy needed at departure, as a share of the battery [0..1]."""
    daily_km_mean: Annotated[float, Field(ge=0.0)] = 40.0
    """Mean distance driven between two sessions [km]."""
    daily_km_sd: Annotated[float, Field(ge=0.0)] = 20.0
    """Standard deviation of that distance [km] (negative draws count as 0 km)."""
    kwh_per_km: Annotated[float, Field(gt=0.0)] = 0.18
    """Energy the car uses per km driven [kWh/km]."""
    sessions_csv: str | None = None
    """CSV of charging sessions (relative to the scenario file): columns ``id`` (prosumer,
    e.g. P003), ``arrival``, ``departure`` (times), ``arrival_kwh``, ``required_kwh``;
    optional ``battery_kwh``, ``charger_kw``. Replaces ``share`` and the random sessions."""
    shortfall_penalty_per_kwh: Annotated[float, Field(gt=0.0)] = 5.0
    """Cost the day-ahead schedule gives each kWh an EV misses at departure [currency/kWh]."""


class ShiftableLoads(_Frozen):
    """Appliances (washing machine, dishwasher, heat-pump boost) that must use a fixed
    energy within a daily time window, at any power up to ``power_kw``. Their energy is
    added to the prosumer's SimBench load."""

    share: Share = 0.0
    """Share of prosumers with a shiftable load [0..1]."""
    energy_kwh: Annotated[float, Field(gt=0.0)] = 2.0
    """Energy each shiftable load must use every day within its window [kWh]."""
    power_kw: Annotated[float, Field(gt=0.0)] = 2.0
    """Power limit of the shiftable load [kW]."""
    window_start_h: Annotated[float, Field(ge=0.0, lt=24.0)] = 9.0
    """Start of the daily window [hour of day]."""
    window_end_h: Annotated[float, Field(gt=0.0, le=24.0)] = 17.0
    """End of the daily window [hour of day], after window_start_h."""

    @model_validator(mode="after")
    def _window_fits(self) -> ShiftableLoads:
        if not self.window_start_h < self.window_end_h:
            raise ValueError(
                f"expected window_start_h < window_end_h, found {self.window_start_h} >= {self.window_end_h}"
            )
        most = self.power_kw * (self.window_end_h - self.window_start_h)
        if self.energy_kwh > most + 1e-9:
            raise ValueError(
                f"expected energy_kwh <= power_kw x window ({most:g} kWh), found {self.energy_kwh}"
            )
        return self


class Distributed(_Frozen):
    """Dual decomposition of the central day-ahead schedule (see `cosim.flex.dayahead`)."""

    tolerance: Annotated[float, Field(gt=0.0, le=0.1)] = 1e-4
    """Stop when the certified gap between the schedule's cost and the lower bound on the
    central optimum is below this share of the cost [-]."""
    max_iterations: Annotated[int, Field(ge=1, le=10000)] = 500
    """Price iterations before a day is reported as not converged [-]."""


class BatteryAuction(_Frozen):
    """The home batteries' capacity shared each day by the auction of
    `cosim.flex.battery_auction` (after Tushar et al. 2016): households with a battery (owners)
    offer the empty part of their usable capacity, households with PV and no battery
    (facilities) bid for it; each winner gets a slice of the owners' batteries for the
    day, charged from its surplus and discharged into its deficit, and pays the rent in
    the day's first round. Needs ``storage.strategy`` ``rule`` or ``price``."""

    enabled: bool = False
    """Hold the auction each day and run the batteries' shared capacity by it."""
    day_start_h: Annotated[float, Field(ge=0.0, lt=24.0)] = 6.0
    """Hour of day at which an auction day starts [hour of day, local time]; the run's
    first round also starts one. Near sunrise, when PV-charged batteries are at their
    emptiest, owners have the most capacity to offer and little is left in expiring slices."""
    max_demand_kwh: Annotated[float, Field(gt=0.0)] = 10.0
    """Most capacity a facility asks for in a day [kWh]."""
    value_per_kwh: Annotated[float, Field(ge=0.0)] | None = None
    """What a kWh of storage capacity is worth for a day, before each household's seeded
    preference factor U(0.5, 1.5) [currency/kWh per day]; default what one self-consumption
    cycle saves: (retail - feed-in tariff) x charge x discharge efficiency of the batteries."""


class Storage(_Frozen):
    """Batteries, EVs and shiftable loads, and how they are scheduled.

    ``strategy``: ``rule`` runs each battery by the self-consumption rule, charges each
    EV at full power from arrival and runs each shiftable load as soon as its window
    opens; ``private``, ``central`` and ``distributed`` schedule every asset a day ahead
    (see `cosim.flex.dayahead`) and the real-time rounds follow the schedule.
    """

    strategy: Literal["rule", "price", "private", "central", "distributed"] = "rule"
    """rule: no schedule; price: the rule, and batteries also charge at full power from the
    market while the last round's P2P price is at or below ``price_threshold_per_kwh``;
    private: each prosumer for its own cost; central: for the community's cost within the
    transformer limit; distributed: central by dual decomposition."""
    price_threshold_per_kwh: Annotated[float, Field(ge=0.0)] | None = None
    """``price`` strategy: the P2P price at or below which batteries charge from the market
    [currency/kWh]; default midway between the feed-in tariff and the retail tariff times
    the battery's round-trip efficiency (below it, a kWh bought now and used later to
    avoid a retail purchase saves money)."""
    forecast: Literal["perfect", "persistence"] = "perfect"
    """Load and PV the schedule sees: the real ones, or those of 24 h earlier."""
    reschedule_every: Duration = dt.timedelta(hours=24)
    """Time between day-ahead solves; each covers the next 24 h (a rolling horizon if shorter)."""
    battery_soc_min: Share = 0.0
    """Lowest state of charge of home batteries [0..1]."""
    battery_soc_max: Share = 1.0
    """Highest state of charge of home batteries [0..1]."""
    battery_charge_efficiency: Annotated[float, Field(gt=0.0, le=1.0)] | None = None
    """Charge efficiency of home batteries [0..1]; default prosumers.battery_efficiency."""
    battery_discharge_efficiency: Annotated[float, Field(gt=0.0, le=1.0)] | None = None
    """Discharge efficiency of home batteries [0..1]; default prosumers.battery_efficiency."""
    terminal_energy: Literal["start", "free"] = "start"
    """Batteries end each 24-h schedule with at least the energy they started it with
    ("start"), or with any ("free")."""
    transformer_limit_kw: Annotated[float, Field(gt=0.0)] | None = None
    """Community import and export limit of central and distributed schedules [kW];
    default the transformer rating times feedback.max_loading_pct (unity power factor)."""
    overload_penalty_per_kwh: Annotated[float, Field(gt=0.0)] = 1.0
    """Cost a schedule gives each kWh beyond the transformer limit [currency/kWh]."""
    ev: ElectricVehicles = ElectricVehicles()
    shiftable: ShiftableLoads = ShiftableLoads()
    distributed: Distributed = Distributed()
    battery_auction: BatteryAuction = BatteryAuction()

    @model_validator(mode="after")
    def _bounds(self) -> Storage:
        if self.battery_auction.enabled and self.strategy not in ("rule", "price"):
            raise ValueError(
                f"battery_auction: expected strategy rule or price (a day-ahead schedule plans the whole "
                f"battery), found strategy {self.strategy}"
            )
        if not self.battery_soc_min < self.battery_soc_max:
            raise ValueError(
                f"expected battery_soc_min < battery_soc_max, found {self.battery_soc_min} >= "
                f"{self.battery_soc_max}"
            )
        if not dt.timedelta(0) < self.reschedule_every <= dt.timedelta(hours=24):
            raise ValueError(
                f"expected 0 < reschedule_every <= 24h, found {format_duration(self.reschedule_every)}"
            )
        return self


#: The variants a run can simulate (`cosim.sim.setup.variants_for`), in the order they run.
VARIANTS = ("market", "market_no_feedback", "baseline", "baseline_no_feedback")
VariantName = Literal["market", "market_no_feedback", "baseline", "baseline_no_feedback"]


class Scenario(_Frozen):
    """One simulation: network, period, fleet, market, feedback."""

    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]+$")]
    """Run name; the results go to results/<name>/."""
    description: str = ""
    network: str
    """Network file in networks/ (name without .yaml) or a path to one."""
    mode: Literal["grid-connected", "islanded"] = "grid-connected"
    start: dt.datetime = dt.datetime(2016, 6, 13)
    """First round [local wall-clock time, Europe/Berlin with daylight saving, 2016]: it
    selects the SimBench profile row labelled with this time (see `cosim.physical.profiles`)."""
    duration: Duration = dt.timedelta(days=7)
    resolution: Duration = dt.timedelta(minutes=15)
    seed: int = 42
    physics: Literal["balanced", "three-phase"] = "balanced"
    """The grid check's power flow: ``balanced`` (positive sequence, every prosumer's power
    spread over the three phases) or ``three-phase`` (unbalanced, each load, PV system,
    battery and EV charger on its phases, `prosumers.phases`; limits per phase and on the
    voltage unbalance factor, `feedback.max_vuf_pct`). See docs/three-phase.md."""
    prosumers: Prosumers = Prosumers()
    market: Market = Market()
    feedback: Feedback = Feedback()
    islanded: Islanded = Islanded()
    ledger: Ledger = Ledger()
    storage: Storage = Storage()
    variants: list[VariantName] = list(VARIANTS)
    """Variants to simulate, default all four (see `cosim.sim.loop`): ``market`` (results at
    the folder's top), ``market_no_feedback``, ``baseline``, ``baseline_no_feedback`` (each in
    its subfolder). A study's hosting-capacity search runs only the one its setting needs;
    the report is drawn only when all four ran."""

    @model_validator(mode="after")
    def _variants_distinct(self) -> Scenario:
        if not self.variants or len(set(self.variants)) != len(self.variants):
            raise ValueError(f"expected one or more distinct variants of {list(VARIANTS)}, found {self.variants}")
        return self

    @model_validator(mode="after")
    def _three_phase_grid_connected(self) -> Scenario:
        if self.physics == "three-phase" and self.mode != "grid-connected":
            raise ValueError(f"expected mode grid-connected with physics three-phase (the three-phase power flow "
                             f"needs the external grid's source), found mode {self.mode}")
        return self

    @model_validator(mode="after")
    def _storage_fits(self) -> Scenario:
        st, pr = self.storage, self.prosumers
        if not st.battery_soc_min <= pr.battery_initial_soc <= st.battery_soc_max:
            raise ValueError(
                f"expected storage.battery_soc_min <= prosumers.battery_initial_soc <= "
                f"storage.battery_soc_max, found {pr.battery_initial_soc} outside "
                f"[{st.battery_soc_min}, {st.battery_soc_max}]"
            )
        if st.strategy not in ("rule", "price"):
            day = dt.timedelta(hours=24)
            if day % self.resolution or st.reschedule_every % self.resolution:
                raise ValueError(
                    f"expected a resolution that divides 24h and storage.reschedule_every, found "
                    f"{format_duration(self.resolution)}"
                )
        return self

    @model_validator(mode="after")
    def _period(self) -> Scenario:
        if self.resolution < dt.timedelta(minutes=1) or self.resolution > dt.timedelta(hours=24):
            raise ValueError(f"expected resolution between 1min and 24h, found {format_duration(self.resolution)}")
        if self.duration % self.resolution:
            raise ValueError(
                f"expected a duration that is a whole number of rounds of {format_duration(self.resolution)}, "
                f"found {format_duration(self.duration)}"
            )
        if self.duration < self.resolution:
            raise ValueError(
                f"expected duration >= resolution, found {format_duration(self.duration)} < "
                f"{format_duration(self.resolution)}"
            )
        from cosim.physical.profiles import PROFILE_ROWS, PROFILE_STEP, profile_row

        try:
            first = profile_row(self.start)
        except ValueError as err:
            raise ValueError(f"expected start at a SimBench profile row (local time, 15-min steps, 2016): {err}") from None
        if first + -(-self.duration // PROFILE_STEP) > PROFILE_ROWS:
            raise ValueError(
                f"expected start and start + duration within the SimBench profile year "
                f"2016-01-01 .. 2017-01-01, found {self.start} + {format_duration(self.duration)}"
            )
        return self

    @property
    def n_rounds(self) -> int:
        return int(self.duration / self.resolution)

    @property
    def dt_h(self) -> float:
        """Round length [h]."""
        return self.resolution.total_seconds() / 3600.0

    def to_yaml(self) -> str:
        """The resolved scenario, every default filled in."""
        data = self.model_dump(mode="json")
        data["start"] = self.start.isoformat(sep=" ")
        return yaml.safe_dump(data, sort_keys=False)
