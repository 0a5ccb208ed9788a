"""Network charges on what each prosumer physically injects or withdraws at its bus.

One principle for every mechanism and every counterparty: a network charge follows the
energy at the prosumer's connection point, never the trade that sold or bought it. So the
same kWh pays the same charge whether it went to a peer, to a community manager (a party
at no bus, whose internal netting never crosses the network as such), to the grid or to
an islanded grid-forming unit, and a prosumer's charge depends only on the round's
physics, not on the mechanism that cleared it (issue 19).

- ``sensitivity``: nodal loss pricing (Schweppe, Caramanis, Tabors and Bohn, *Spot
  Pricing of Electricity*, 1988, ch. 3 and app. D; the loss component of a locational
  marginal price). A prosumer injecting ``e`` kWh at bus ``i`` pays ``rate lambda_i e``,
  ``lambda_i = d losses / d injection_i`` [kW/kW] at the round's own operating point, the
  slack (the transformer, or the grid-forming unit) being the reference with
  ``lambda = 0``. A withdrawal (``e < 0``) at a bus where injecting raises the losses
  therefore earns a credit: it relieves the network. A trade from i to j thus carries
  ``rate (lambda_i - lambda_j)`` per kWh, as before, but so does now an export to the grid
  (``rate lambda_i``) and a member's sale to a community manager.
- ``flat``: a local use-of-system charge (UTS Institute for Sustainable Futures, *Local
  Network Credits and Local Electricity Trading*, 2016, §2.3): the energy that is
  generated and used on the feeder crosses its LV network, so each prosumer pays
  ``rate`` per kWh of its net withdrawal that the feeder's own net injections supplied,
  pro rata: ``rate w_i min(1, I / W)`` with ``w_i`` its net withdrawal, ``W`` the sum of
  the withdrawals and ``I`` that of the injections. What comes from upstream pays the
  network charges inside the retail tariff, not this one.

The DSO receives every charge (`cosim.sim.settlement`). Mechanisms clear without network
charges: since a charge does not depend on the counterparty it cannot change which trade
is better. It steers the prosumers' flexibility instead: the charge per kWh withdrawn
(`NetworkTariff.rates_per_kwh`) is what a kWh drawn at each bus costs on top of the energy
price, and the ``price``
storage strategy compares the two together with its threshold.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

METHODS = ("none", "flat", "sensitivity")


@dataclass(frozen=True)
class NetworkTariff:
    """The round's network tariff, per prosumer.

    Parameters
    ----------
    method : ``none``, ``flat`` or ``sensitivity``
    rate_per_kwh : flat: charge per kWh of locally supplied withdrawal; sensitivity: price
        of a kWh of network losses [currency/kWh]
    loss_factor : marginal loss factor at each prosumer's bus [kW/kW] (sensitivity only)
    """

    method: str
    rate_per_kwh: float
    loss_factor: np.ndarray

    @classmethod
    def of(cls, method: str, rate_per_kwh: float, loss_factors: np.ndarray | None,
           participant_pos: np.ndarray) -> NetworkTariff:
        """The tariff from per-bus `loss_factors` [kW/kW] (None: not known yet, no
        sensitivity charge) and each prosumer's bus position."""
        if method not in METHODS:
            raise ValueError(f"network charge method: expected one of {METHODS}, found {method!r}")
        n = len(participant_pos)
        lam = np.zeros(n) if loss_factors is None else np.asarray(loss_factors, float)[participant_pos]
        return cls(method, float(rate_per_kwh), lam)

    @property
    def active(self) -> bool:
        return self.method != "none" and self.rate_per_kwh != 0.0

    def local_share(self, injection_kwh: np.ndarray) -> float:
        """Share of the prosumers' net withdrawals that their own net injections supplied [0..1]."""
        supplied = float(np.maximum(injection_kwh, 0.0).sum())
        withdrawn = float(np.maximum(-injection_kwh, 0.0).sum())
        return min(1.0, supplied / withdrawn) if withdrawn > 0.0 else 0.0

    def charges(self, injection_kwh: np.ndarray) -> np.ndarray:
        """Each prosumer's network charge for its net `injection_kwh` [currency]
        (positive = pays; negative withdrawals, positive injections [kWh]).

        >>> t = NetworkTariff("flat", 0.1, np.zeros(3))
        >>> t.charges(np.array([2.0, -1.0, -3.0]))  # 2 kWh of 4 withdrawn came from the feeder
        array([0.  , 0.05, 0.15])
        >>> NetworkTariff("sensitivity", 0.5, np.array([0.1, 0.02, 0.0])).charges(np.array([2.0, -1.0, 0.0]))
        array([ 0.1 , -0.01,  0.  ])
        """
        inj = np.asarray(injection_kwh, float)
        return charges_at_rates(inj, *self.rates_per_kwh(inj))

    def rates_per_kwh(self, injection_kwh: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(charge per kWh injected, charge per kWh withdrawn) at each prosumer's bus in a
        round with these injections [currency/kWh]: what `charges` takes per kWh, for
        showing on each trade's ends."""
        n = len(injection_kwh)
        if not self.active:
            return np.zeros(n), np.zeros(n)
        if self.method == "sensitivity":
            per_kwh = self.rate_per_kwh * self.loss_factor
            return per_kwh, -per_kwh
        return np.zeros(n), np.full(n, self.rate_per_kwh * self.local_share(injection_kwh))


def charges_at_rates(injection_kwh: np.ndarray, inject: np.ndarray, withdraw: np.ndarray) -> np.ndarray:
    """Each prosumer's charge [currency] for its net `injection_kwh` at the per-kWh rates
    of `NetworkTariff.rates_per_kwh` (the injected kWh at `inject`, the withdrawn at `withdraw`)."""
    return inject * np.maximum(injection_kwh, 0.0) + withdraw * np.maximum(-injection_kwh, 0.0)


def trade_charges_per_kwh(trades_seller: np.ndarray, trades_buyer: np.ndarray, inject: np.ndarray,
                          withdraw: np.ndarray) -> np.ndarray:
    """Per-kWh charges at the two ends of each trade: the seller's injection rate plus the
    buyer's withdrawal rate, where each end is a prosumer position (-1 for a party at no bus
    or at the slack: the grid, a community manager, the grid-forming unit) [currency/kWh]."""
    s = np.asarray(trades_seller)
    b = np.asarray(trades_buyer)
    return np.where(s >= 0, inject[np.maximum(s, 0)], 0.0) + np.where(b >= 0, withdraw[np.maximum(b, 0)], 0.0)
