"""Preferences and pair slots of the multi-bilateral market: the product-differentiation
costs c[i, j] and the partners each participant gets a trade variable with."""

from __future__ import annotations

import numpy as np

from cosim.markets.base import (
    Participants,
)
from cosim.markets.bilateral.options import BilateralOptions


# -- preferences and pair slots ---------------------------------------------------------
def preference_costs(participants: Participants, options: BilateralOptions) -> np.ndarray:
    """[n x n] preference cost c[i, j] of a kWh from seller i to buyer j [currency/kWh].

    Unreachable pairs (infinite line distance) and i == j are +inf.

    >>> p = Participants(["a", "b", "c"], np.array([1, 2, 3]), np.array([0, 0, 1]),
    ...                  np.array([True, False, True]), np.array([[0, 1, 2], [1, 0, 3], [2, 3, 0.0]]))
    >>> opts = BilateralOptions(distance_rate_per_kwh_km=0.01, green_premium_per_kwh=0.02,
    ...                         same_feeder_premium_per_kwh=0.005)
    >>> preference_costs(p, opts).round(3).tolist()
    [[inf, 0.01, 0.025], [0.03, inf, 0.055], [0.025, 0.035, inf]]
    """
    n = len(participants)
    cost = np.zeros((n, n))
    if participants.distance_km is not None:
        dist = np.asarray(participants.distance_km, dtype=float)
        cost += options.distance_rate_per_kwh_km * np.where(np.isfinite(dist), dist, 0.0)
        cost[~np.isfinite(dist)] = np.inf
    cost += options.green_premium_per_kwh * ~np.asarray(participants.has_pv, dtype=bool)[:, None]
    feeder = np.asarray(participants.feeder)
    cost += options.same_feeder_premium_per_kwh * (feeder[:, None] != feeder[None, :])
    if options.preferred_partner_premium_per_kwh > 0:
        preferred = preferred_matrix(participants.ids, options.preferred_pairs)
        cost += options.preferred_partner_premium_per_kwh * ~preferred
    np.fill_diagonal(cost, np.inf)
    return cost


def preferred_matrix(ids: list[str], pairs: tuple[tuple[str, str], ...]) -> np.ndarray:
    """[n x n] True where the two participants form a preferred pair (symmetric)."""
    pos = {p: k for k, p in enumerate(ids)}
    unknown = sorted({p for pair in pairs for p in pair if p not in pos})
    if unknown:
        raise ValueError(f"preferred_pairs: expected participant ids, found unknown {unknown}")
    mat = np.zeros((len(ids), len(ids)), dtype=bool)
    for a, b in pairs:
        mat[pos[a], pos[b]] = mat[pos[b], pos[a]] = True
    return mat


def partner_slots(cost: np.ndarray, max_partners: int, preferred: np.ndarray | None = None
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Directed pair slots (seller, buyer): each participant's cheapest partners, both ways.

    Partners are ranked by ``(c[a, b] + c[b, a]) / 2`` (ties by index); every preferred
    pair is added; unreachable pairs are left out. Returns at most ``2 n max_partners``
    (plus two per preferred pair) slots, sorted by buyer then seller.

    >>> c = np.array([[np.inf, 1, 2, 3], [1, np.inf, 1, 2], [2, 1, np.inf, 1], [3, 2, 1, np.inf]])
    >>> s, b = partner_slots(c, 1)
    >>> sorted(zip(s.tolist(), b.tolist()))
    [(0, 1), (1, 0), (1, 2), (2, 1), (2, 3), (3, 2)]
    """
    n = cost.shape[0]
    closeness = 0.5 * (cost + cost.T)
    k = min(max_partners, n - 1)
    if k <= 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    nearest = np.argsort(closeness, axis=1, kind="stable")[:, :k]
    a = np.repeat(np.arange(n), k)
    b = nearest.ravel()
    keep = np.isfinite(closeness[a, b]) & (a != b)
    a, b = a[keep], b[keep]
    if preferred is not None:
        pa, pb = np.nonzero(np.triu(preferred, 1) & np.isfinite(closeness))
        a, b = np.r_[a, pa], np.r_[b, pb]
    lo, hi = np.minimum(a, b), np.maximum(a, b)
    key = np.unique(lo.astype(np.int64) * n + hi)
    lo, hi = key // n, key % n
    seller, buyer = np.r_[lo, hi], np.r_[hi, lo]
    order = np.lexsort((seller, buyer))
    return seller[order], buyer[order]
