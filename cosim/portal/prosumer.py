"""The prosumer's pages: their own trades, bills, savings against the baseline and
curtailment, per finished run on their network, and their own rows as CSV.

Whose rows are shown is decided by the session alone: a prosumer is the household at the
bus an operator admitted them to (``prosumers.parquet`` of the run maps buses to the
run's party ids). An id in a URL only ever narrows that down; another prosumer's id
gets 404, never their rows.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pandas as pd
from fastapi import APIRouter, Request
from fastapi.responses import Response
from sqlalchemy import select

from cosim.portal import db as dbm
from cosim.portal.web import Refused, current_user, render

router = APIRouter()
#: Tables a prosumer may download, and the column that names the party in each.
TABLES = {"settlement": ("party",), "trades": ("buyer", "seller")}


def party_of(user: dbm.User, run: dbm.Run) -> str | None:
    """The user's party id in `run`, or None if the run is not on their network and bus."""
    if user.status != "admitted" or user.bus is None or run.status != "finished" or run.network != user.network:
        return None
    table = pd.read_parquet(Path(run.out_dir) / "prosumers.parquet", columns=["id", "bus"])
    ids = table.loc[table.bus == user.bus, "id"].sort_values()
    return str(ids.iloc[0]) if len(ids) else None


def own_rows(run: dbm.Run, party: str, table: str) -> pd.DataFrame:
    """The rows of a result table that are the party's own."""
    frame = pd.read_parquet(Path(run.out_dir) / f"{table}.parquet")
    mask = False
    for column in TABLES[table]:
        mask = mask | (frame[column] == party)
    return frame[mask].reset_index(drop=True)


def run_view(run: dbm.Run, party: str) -> dict:
    """What the prosumer's run page shows: bills by variant, savings, curtailment, trades."""
    summary = json.loads((Path(run.out_dir) / "summary.json").read_text())
    bills = summary["prosumer_bills"].get(party, {})
    assets = pd.read_parquet(Path(run.out_dir) / "prosumers.parquet").set_index("id").loc[party]
    settlement = own_rows(run, party, "settlement")
    trades = own_rows(run, party, "trades")
    return {
        "currency": summary["currency"],
        "bill_market": bills.get("market"),
        "bill_baseline": bills.get("baseline"),
        "savings": (bills["baseline"] - bills["market"]) if "market" in bills and "baseline" in bills else None,
        "pv_kwp": float(assets.pv_kwp), "battery_kwh": float(assets.battery_kwh),
        "battery_kw": float(assets.battery_kw), "bus": int(assets.bus),
        "curtailed_kwh": float(settlement.curtailed_kwh.sum()),
        **{column: float(settlement[column].sum())
           for column in ("bought_kwh", "sold_kwh", "grid_import_kwh", "grid_export_kwh")},
        "settlement": settlement,
        "trades": trades,
    }


def _my_runs(db, user: dbm.User) -> list[dbm.Run]:
    if user.status != "admitted":
        return []
    return db.scalars(select(dbm.Run).where(dbm.Run.status == "finished", dbm.Run.network == user.network)
                      .order_by(dbm.Run.id.desc())).all()


@router.get("/me")
def me(request: Request):
    with request.app.state.sessions() as db:
        user = current_user(request, db)
        if user.role == "operator":
            raise Refused(403, "this page is for prosumers; operators use /operator")
        runs = _my_runs(db, user)
    return render(request, "me.html", runs=runs)


def _owned(request: Request, db, run_id: int, uid: int | None = None) -> tuple[dbm.User, dbm.Run, str]:
    """The user whose rows are asked for, the run and the party; 404 unless the session
    may see them (its own rows, or any prosumer's for an operator)."""
    user = current_user(request, db)
    subject = user
    if uid is not None and uid != user.id:
        subject = db.get(dbm.User, uid) if user.role == "operator" else None
    if subject is None or subject.role != "prosumer":
        raise Refused(404, "no such rows")
    run = db.get(dbm.Run, run_id)
    party = party_of(subject, run) if run is not None else None
    if party is None:
        raise Refused(404, f"no rows of yours in run {run_id}")
    return subject, run, party


@router.get("/me/runs/{run_id}")
def my_run(request: Request, run_id: int):
    with request.app.state.sessions() as db:
        subject, run, party = _owned(request, db, run_id)
    view = run_view(run, party)
    return render(request, "me_run.html", run=run, party=party, subject=subject, view=view)


@router.get("/prosumers/{uid}/runs/{run_id}/{table}.csv")
def rows_csv(request: Request, uid: int, run_id: int, table: str):
    """A prosumer's own rows of a run's settlement or trades table, as CSV."""
    if table not in TABLES:
        raise Refused(404, f"no table {table[:40]!r}: expected one of {sorted(TABLES)}")
    with request.app.state.sessions() as db:
        subject, run, party = _owned(request, db, run_id, uid)
    buf = io.StringIO()
    own_rows(run, party, table).to_csv(buf, index=False, float_format="%.6g")
    name = f"run-{run_id}-{party}-{table}.csv"
    return Response(buf.getvalue(), media_type="text/csv",
                    headers={"Content-Disposition": f'attachment; filename="{name}"'})
