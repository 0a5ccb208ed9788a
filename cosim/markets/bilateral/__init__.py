"""Multi-bilateral peer-to-peer trading with product differentiation (full P2P).

Source: Sorin, Bobo and Pinson, 2019, "Consensus-based approach to peer-to-peer
electricity markets with product differentiation", IEEE Trans. Power Systems 34(2):994-1004
-- the multi-bilateral economic dispatch: one trade variable per pair of agents, a
reciprocity constraint per pair whose dual is that pair's price, and a product
differentiation price c_ij on each trade that encodes the agents' preferences for whom
they trade with. Sorin et al. solve it with their relaxed consensus+innovation algorithm;
the decentralised mode here uses the consensus ADMM on the same pair structure (each
agent proposes its trades, each pair's price moves by rho/2 times the pair's mismatch:
Baroche, Pinson, Le Goff Latimier and Ben Ahmed, 2019, "Exogenous cost allocation in
peer-to-peer electricity markets", IEEE Trans. Power Systems 34(4); general form consensus
ADMM: Boyd, Parikh, Chu, Peleato and Eckstein, 2011, "Distributed optimization and
statistical learning via the alternating direction method of multipliers", Found. Trends
Mach. Learn. 3(1), sec. 7.2).

Pair slots. A directed slot s = (i -> j) carries energy from seller i to buyer j. Slots
are made once per run, never per round: each participant's `max_partners` cheapest
partners (by the preference cost below, so by distance when distances are known), in
both directions, plus every preferred pair. At most ``2 n max_partners`` slots (plus two
per preferred pair), never n^2. A slot is active in a round when i sells and j buys; an
inactive slot's trade is bounded to 0.

Preference (product differentiation) cost of slot s = (i -> j) [currency/kWh]:

    c_ij = distance_rate * distance_km[i, j]
         + green_premium          if seller i has no PV
         + same_feeder_premium    if i and j are on different LV feeders
         + partner_premium        if {i, j} is not a preferred pair

A premium is written as the discount a buyer demands for the less preferred product, so
every c_ij >= 0 and a bid is the buyer's price for its most preferred product. c_ij is
the buyer's valuation, not a payment: nobody collects it.

Clearing (quantities per round [kWh]; eff_bid = bid - charge_buy, eff_ask = ask + charge_sell,
with bids above the retail tariff counted as the tariff while the outside party can sell,
and asks below the feed-in tariff counted as the tariff while it can buy):

    maximise  sum_s (eff_bid[j] - c_s - eff_ask[i]) t_s - voll sum shed - curtail_cost sum curtailed
              - epsilon sum (imported + exported)
    sum_{s -> j} t_s + imported[j] + shed[j]      = demand[j]   (buyer balance)
    sum_{i -> s} t_s + exported[i] + curtailed[i] = supply[i]   (seller balance)
    sum imported <= import_cap, sum exported <= export_cap       (outside party)
    injection[n] = supply[n] - demand[n] - curtailed[n] + shed[n]
                 (= sold + exported - bought - imported, by the balances)
    sum_n cut_coef[k, n] injection[n] <= cut_rhs[k]             (network cuts)
    t_s >= 0, t_s = 0 for an inactive slot

as in the pool model (`cosim.markets.pool`), the outside party is the participants'
fallback at the tariffs, chosen only where no P2P trade adds welfare (epsilon breaks ties).

Prices. Writing each trade twice, as the seller's sale x_s and the buyer's purchase y_s,
with the reciprocity constraint x_s = y_s, the trade's price lambda_s is that
constraint's dual. In the central LP above (one variable per trade) it is read off the
seller's balance: ``lambda_s = eff_ask[i] + nu_i``, nu_i the dual of seller i's balance
(its rent per kWh); equivalently ``eff_bid[j] - c_s - mu_j``, mu_j the buyer's rent.
The buyer pays lambda_s per kWh (plus its charge), the seller receives lambda_s (minus
its charge): every trade is budget-balanced (``price_per_kwh == seller_price_per_kwh``),
and individually rational -- ``lambda_s + charge_buy[j] + c_s <= bid[j]`` and
``lambda_s - charge_sell[i] >= ask[i]``, so also ``lambda_s + charge_buy[j] <= retail`` and
``lambda_s - charge_sell[i] >= feed_in`` while the outside party trades -- whenever the
outside party's caps or the network cuts do not force a trade at a loss. A seller gets
one price from all its buyers; a buyer pays less for energy it values less (farther, not
green). Where the equilibrium prices are not unique (a trade's surplus is not pinned down
by a competing order) the central mode returns the solver's vertex and the ADMM the point
it converged to; welfare is the same, and so are the quantities where the optimum is
unique (on a radial feeder, with distances that add up through the transformer, it often
is not: several trade patterns then reach the same welfare).

Decentralised mode (``solve: admm``). Each prosumer solves its own small problem (its
balances, its proposals for its active slots, its outside, shed and curtail options)
with a proximal term (rho/2)(x - z)^2 on each proposal, z being the average of the two
sides' last proposals, and only proposals and prices are exchanged:

    x, y  <- each seller's / buyer's best response to lambda and z   (in parallel)
    z_s   <- (x_s + y_s) / 2
    lambda_s <- lambda_s + rho/2 (y_s - x_s)

Two more peers hold the round's shared limits: the outside party (when its caps are
finite and positive) keeps its own copy of each participant's import and export and
projects them onto its caps; the DSO (when there are network cuts) keeps its own copy of
each participant's curtailment and shedding -- the only terms of the injection not fixed
by the orders -- and projects them onto the cuts. Neither sees bids, asks or trades.
Each prosumer's problem is solved either in closed form, vectorised over all prosumers
(a separable quadratic over one balance: water-filling, `waterfill`), or as its own
persistent Pyomo model solved by HiGHS (``admm_local_solver: pyomo``, the same problem,
much slower; the tests check that both give the same steps).

Stopping rule: every pair's two proposals (and both copies of a shared option) agree to
within ``admm_tolerance_kwh`` (primal residual, max over pairs) and no price moved by more
than ``admm_price_tolerance_per_kwh`` in the last iteration (dual residual). rho is
balanced between the two residuals, each scaled by its tolerance, every 10 iterations
during the first 1,000 (Boyd et al. 2011, sec. 3.4.1); then it stays fixed, so the
ADMM's convergence guarantee holds. A negotiation that reaches
``admm_max_iterations`` without agreement is a failed clearing (status ``admm: no
agreement ...``; the loop then trades everyone with the outside party, as for a solver
failure). The result's trades are ``min(x_s, y_s)``; what a participant proposed beyond
that goes to the outside party while its caps allow, else it is curtailed or shed, so
balances and outside caps hold exactly; network cuts hold to within the tolerance.

How close to the central optimum: the allocation differs from the agents' own proposals
by at most the primal residual per slot, which costs at most that much times the dearest
option it falls back to (VOLL where the outside party is capped); the audit
(``admm_audit``, on by default) clears the same round centrally and reports the welfare gap
in ``info["admm_gap"]`` [currency] with ``info["admm_iterations"]``. The tests bound the gap
on random books by ``(active slots + 2 n) * admm_tolerance_kwh * max(voll, 1) +
(total quantity) * admm_price_tolerance_per_kwh``, and check the trades against the
central ones wherever the central optimum is unique. On the benchmark's books
(`cosim.bench.bilateral`, default tolerances) the relative welfare gap stayed below
3e-4 from 100 to 1,000 prosumers.
"""

from cosim.markets.bilateral.admm import (
    AdmmNegotiation,
    ProsumerModels,
    Side,
    vectorised_best_response,
    waterfill,
)
from cosim.markets.bilateral.central import CentralModel, RoundData
from cosim.markets.bilateral.mechanism import MECHANISMS, MultiBilateral
from cosim.markets.bilateral.options import BilateralOptions
from cosim.markets.bilateral.partners import partner_slots, preference_costs, preferred_matrix

__all__ = [
    "MECHANISMS",
    "AdmmNegotiation",
    "BilateralOptions",
    "CentralModel",
    "MultiBilateral",
    "ProsumerModels",
    "RoundData",
    "Side",
    "partner_slots",
    "preference_costs",
    "preferred_matrix",
    "vectorised_best_response",
    "waterfill",
]
