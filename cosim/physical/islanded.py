"""The islanded feeder's grid-forming unit: a battery inverter that is the slack, within
its kW and kVA ratings and its state-of-charge bounds."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class GridFormingUnit:
    """The islanded slack: a battery inverter within its kW and kWh limits."""

    p_kw: float
    e_kwh: float
    soc: float
    soc_min: float
    soc_max: float
    efficiency: float
    s_kva: float | None = None
    """Apparent power rating [kVA]; None: ``p_kw``."""
    q_kvar: float = 0.0
    """Reactive power it supplied in the last power flow [kvar]."""

    def p_limit_kw(self, q_kvar: float | None = None) -> float:
        """Most active power it can give or take with `q_kvar` of reactive power
        (default: the last round's) within its kW and kVA ratings [kW]."""
        q = self.q_kvar if q_kvar is None else q_kvar
        s = self.p_kw if self.s_kva is None else self.s_kva
        return min(self.p_kw, float(np.sqrt(max(s * s - q * q, 0.0))))

    def caps_kwh(self, dt_h: float, p_kw: float | None = None) -> tuple[float, float]:
        """(most it can deliver, most it can absorb) this round [kWh], within its power
        rating (or `p_kw`) and its state-of-charge bounds."""
        p = self.p_limit_kw() if p_kw is None else p_kw
        deliver = min(p * dt_h, max(self.soc - self.soc_min, 0.0) * self.e_kwh * self.efficiency)
        absorb = min(p * dt_h, max(self.soc_max - self.soc, 0.0) * self.e_kwh / self.efficiency)
        return deliver, absorb

    def step(self, p_kw: float, dt_h: float) -> None:
        """Apply the slack's output (positive = discharging) for one round."""
        if p_kw >= 0:
            self.soc -= p_kw * dt_h / (self.efficiency * self.e_kwh)
        else:
            self.soc -= p_kw * dt_h * self.efficiency / self.e_kwh
        self.soc = float(np.clip(self.soc, 0.0, 1.0))
