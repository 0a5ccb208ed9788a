"""Home batteries: state of charge, the self-consumption rule, following a schedule.

Sign convention: power positive when charging (pandapower's load convention); energies
in kWh; ``soc`` is stored energy over capacity [0..1].
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # the fleet module re-exports Batteries, so importing it here would be a cycle
    from cosim.config.scenario import Scenario
    from cosim.physical.fleet import Fleet


@dataclass
class Batteries:
    """Home batteries of the fleet, state of charge tracked across rounds.

    The state of charge stays within [soc_min, soc_max]; charging stores
    ``charge_efficiency`` of the power drawn, discharging delivers
    ``discharge_efficiency`` of the energy taken out (both default to the one-way
    ``efficiency``).
    """

    e_kwh: np.ndarray
    p_kw: np.ndarray
    efficiency: float
    soc: np.ndarray
    """State of charge [0..1]; zero where a prosumer has no battery."""
    soc_min: float = 0.0
    soc_max: float = 1.0
    charge_efficiency: float | None = None
    discharge_efficiency: float | None = None

    @classmethod
    def from_fleet(cls, fleet: Fleet, scenario: Scenario) -> Batteries:
        e = fleet.table.battery_kwh.to_numpy(float)
        soc = np.where(e > 0, scenario.prosumers.battery_initial_soc, 0.0)
        st = scenario.storage
        return cls(e, fleet.table.battery_kw.to_numpy(float), scenario.prosumers.battery_efficiency, soc,
                   st.battery_soc_min, st.battery_soc_max, st.battery_charge_efficiency,
                   st.battery_discharge_efficiency)

    @property
    def eta_charge(self) -> float:
        return self.efficiency if self.charge_efficiency is None else self.charge_efficiency

    @property
    def eta_discharge(self) -> float:
        return self.efficiency if self.discharge_efficiency is None else self.discharge_efficiency

    @property
    def energy_kwh(self) -> np.ndarray:
        """Stored energy [kWh]."""
        return self.soc * self.e_kwh

    def power_range_kw(self, dt_h: float) -> tuple[np.ndarray, np.ndarray]:
        """(most it can charge, most it can discharge) this round [kW], from power and state of charge."""
        with np.errstate(divide="ignore", invalid="ignore"):
            room_kw = np.where(self.e_kwh > 0, (self.soc_max - self.soc) * self.e_kwh / (self.eta_charge * dt_h), 0.0)
            avail_kw = np.maximum(self.soc - self.soc_min, 0.0) * self.e_kwh * self.eta_discharge / dt_h
        return np.minimum(self.p_kw, np.maximum(room_kw, 0.0)), np.minimum(self.p_kw, avail_kw)

    def self_consume(self, net_kw: np.ndarray, dt_h: float) -> np.ndarray:
        """Charge from surplus, discharge into deficit; update the state of charge.

        Parameters
        ----------
        net_kw : net load before the battery [kW]
        dt_h : round length [h]

        Returns
        -------
        battery power, positive when charging [kW]
        """
        eta_c, eta_d = self.eta_charge, self.eta_discharge
        with np.errstate(divide="ignore", invalid="ignore"):
            room_kw = np.where(self.e_kwh > 0, (self.soc_max - self.soc) * self.e_kwh / (eta_c * dt_h), 0.0)
            avail_kw = np.maximum(self.soc - self.soc_min, 0.0) * self.e_kwh * eta_d / dt_h
        charge = np.minimum(np.minimum(np.maximum(-net_kw, 0.0), self.p_kw), room_kw)
        discharge = np.minimum(np.minimum(np.maximum(net_kw, 0.0), self.p_kw), avail_kw)
        return self._apply(charge, discharge, dt_h)

    def follow(self, request_kw: np.ndarray, dt_h: float) -> np.ndarray:
        """Run each battery at the requested power (positive = charging) as far as its
        power and state of charge allow; update the state of charge.

        Returns
        -------
        battery power, positive when charging [kW]
        """
        most_charge, most_discharge = self.power_range_kw(dt_h)
        charge = np.minimum(np.maximum(request_kw, 0.0), most_charge)
        discharge = np.minimum(np.maximum(-request_kw, 0.0), most_discharge)
        return self._apply(charge, discharge, dt_h)

    def part(self, e_kwh, p_kw, soc, soc_min=0.0, soc_max=1.0) -> Batteries:
        """Batteries with these ones' efficiencies and their own capacity [kWh], power
        limit [kW], state of charge and bounds [0..1] (scalars or one per battery): a part
        of these batteries run on its own account, as the owners' own accounts and the
        winners' slices of `cosim.flex.capacity_sharing.CapacityShares` are.

        >>> b = Batteries(np.array([10.0]), np.array([5.0]), 0.9, np.array([0.5]))
        >>> half = b.part(b.e_kwh / 2, b.p_kw / 2, np.array([0.0]))
        >>> half.follow(np.array([9.0]), 1.0), half.energy_kwh  # 2.5 kW, 90 % stored
        (array([2.5]), array([2.25]))
        """
        return Batteries(np.asarray(e_kwh, float), np.asarray(p_kw, float), self.efficiency, np.asarray(soc, float),
                         soc_min, soc_max, self.charge_efficiency, self.discharge_efficiency)

    def _apply(self, charge: np.ndarray, discharge: np.ndarray, dt_h: float) -> np.ndarray:
        e_safe = np.where(self.e_kwh > 0, self.e_kwh, 1.0)
        delta = (charge * self.eta_charge - discharge / self.eta_discharge) * dt_h / e_safe
        self.soc = np.where(self.e_kwh > 0, np.clip(self.soc + delta, self.soc_min, self.soc_max), 0.0)
        return charge - discharge


def battery_efficiencies(scenario: Scenario) -> tuple[float, float]:
    """(charge, discharge) efficiency of the home batteries [0..1]: ``storage``'s own, or
    the one-way ``prosumers.battery_efficiency`` for each that is not set."""
    st = scenario.storage
    eta = scenario.prosumers.battery_efficiency
    return st.battery_charge_efficiency or eta, st.battery_discharge_efficiency or eta
