"""The operator's pages: admit prosumers to buses, edit the market and network settings,
launch, watch and cancel runs, open their reports, read the audit log."""

from __future__ import annotations

import json
import mimetypes
import secrets
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, RedirectResponse
from sqlalchemy import select

from cosim.portal import db as dbm
from cosim.portal import settings as st
from cosim.portal.web import DEFAULT_BASE, Refused, checked_form, operator_user, render

router = APIRouter(prefix="/operator")
#: Files of a run folder the portal serves: the report and its figures.
SERVED_SUFFIXES = (".html", ".png", ".svg")


# ---------------------------------------------------------------- settings, stored in the database

def current_settings(request: Request, db) -> tuple[str, dict[str, str]]:
    """The base scenario's name and the operator's field values (the base's own values
    until the operator saves some)."""
    base = dbm.get_setting(db, "base_scenario", DEFAULT_BASE)
    stored = dbm.get_setting(db, "scenario_fields")
    if stored is not None:
        return base, json.loads(stored)
    return base, st.defaults_from(base_file(request, base))


def base_file(request: Request, base: str) -> Path:
    if base not in st.base_scenarios(request.app.state.scenarios):
        raise Refused(400, f"base_scenario: expected one of {st.base_scenarios(request.app.state.scenarios)}, "
                           f"found {base[:80]!r}")
    return request.app.state.scenarios / f"{base}.yaml"


def scratch(request: Request) -> Path:
    return request.app.state.results / "portal" / "scenarios"


def network_buses(request: Request, db) -> tuple[str, list[int]]:
    """The network of the current settings and its buses with a household, for admission."""
    from cosim.config.load import load_scenario
    from cosim.config.network_file import find_network_file, load_network_spec

    base, values = current_settings(request, db)
    path = st.write_scenario(base_file(request, base), values, scratch(request), f"network-{secrets.token_hex(8)}")
    try:
        scenario = load_scenario(path)
        cache = request.app.state.bus_cache
        if scenario.network not in cache:
            from cosim.physical.networks import build_net

            net = build_net(load_network_spec(find_network_file(scenario.network, path)))
            cache[scenario.network] = sorted({int(b) for b in net.load.bus})
        return scenario.network, cache[scenario.network]
    finally:
        path.unlink(missing_ok=True)


# ---------------------------------------------------------------- pages

@router.get("")
def dashboard(request: Request):
    with request.app.state.sessions() as db:
        operator_user(request, db)
        pending = db.scalars(select(dbm.User).where(dbm.User.role == "prosumer", dbm.User.status == "pending")).all()
        runs = db.scalars(select(dbm.Run).order_by(dbm.Run.id.desc()).limit(5)).all()
    return render(request, "operator_home.html", pending=pending, runs=runs)


@router.get("/prosumers")
def prosumers(request: Request):
    with request.app.state.sessions() as db:
        operator_user(request, db)
        people = db.scalars(select(dbm.User).where(dbm.User.role == "prosumer").order_by(dbm.User.id)).all()
        network, buses = network_buses(request, db)
    return render(request, "prosumers.html", people=people, network=network, buses=buses)


@router.post("/prosumers/{uid}/admit")
async def admit(request: Request, uid: int):
    form = await checked_form(request)
    with request.app.state.sessions.begin() as db:
        op = operator_user(request, db)
        person = db.get(dbm.User, uid)
        if person is None or person.role != "prosumer":
            raise Refused(404, f"no prosumer {uid}")
        network, buses = network_buses(request, db)
        text = form.get("bus", "").strip()
        if not text.isdigit() or int(text) not in buses:
            raise Refused(400, f"bus: expected one of the buses with a household of network {network} "
                               f"{buses}, found {text[:40]!r}")
        taken = db.scalars(select(dbm.User).where(dbm.User.network == network, dbm.User.bus == int(text),
                                                  dbm.User.status == "admitted", dbm.User.id != uid)).first()
        if taken is not None:
            raise Refused(400, f"bus: bus {text} of network {network} is already assigned to {taken.email}")
        old = f"{person.status} {person.network or ''} {person.bus if person.bus is not None else ''}".strip()
        person.status, person.network, person.bus = "admitted", network, int(text)
        dbm.audit(db, op.email, "admit prosumer", person.email, old, f"admitted {network} bus {text}")
    return RedirectResponse("/operator/prosumers", status_code=303)


@router.post("/prosumers/{uid}/reject")
async def reject(request: Request, uid: int):
    await checked_form(request)
    with request.app.state.sessions.begin() as db:
        op = operator_user(request, db)
        person = db.get(dbm.User, uid)
        if person is None or person.role != "prosumer":
            raise Refused(404, f"no prosumer {uid}")
        dbm.audit(db, op.email, "reject prosumer", person.email, person.status, "rejected")
        person.status, person.network, person.bus = "rejected", None, None
    return RedirectResponse("/operator/prosumers", status_code=303)


@router.get("/settings")
def settings_page(request: Request):
    with request.app.state.sessions() as db:
        operator_user(request, db)
        base, values = current_settings(request, db)
    return _settings_form(request, base, values, {})


def _settings_form(request: Request, base: str, values: dict, errors: dict, status: int = 200, saved: bool = False):
    return render(request, "settings.html", status=status, base=base, values=values, errors=errors, saved=saved,
                  fields=st.FIELDS, mechanisms=st.mechanisms(), bases=st.base_scenarios(request.app.state.scenarios))


@router.post("/settings")
async def save_settings(request: Request):
    form = await checked_form(request)
    base = form.get("base_scenario", DEFAULT_BASE)
    values = {path: form.get(path, "") for path in st.FIELD_PATHS}
    with request.app.state.sessions.begin() as db:
        op = operator_user(request, db)
        old_base, old = current_settings(request, db)
        if base != old_base and form.get("reload_base"):  # start over from the new base's own values
            values = st.defaults_from(base_file(request, base))
        errors = st.validate(base_file(request, base), values, scratch(request))
        if errors:
            return _settings_form(request, base, values, errors, status=400)
        if base != old_base:
            dbm.audit(db, op.email, "set base scenario", "base_scenario", old_base, base)
        for path in st.FIELD_PATHS:
            if values[path] != old.get(path, ""):
                dbm.audit(db, op.email, "change setting", path, old.get(path, ""), values[path])
        dbm.put_setting(db, "base_scenario", base)
        dbm.put_setting(db, "scenario_fields", st.dumps(values))
    return _settings_form(request, base, values, {}, saved=True)


@router.get("/runs")
def runs_page(request: Request):
    with request.app.state.sessions() as db:
        operator_user(request, db)
        runs = db.scalars(select(dbm.Run).order_by(dbm.Run.id.desc())).all()
    return render(request, "runs.html", runs=runs, figures=_figures(runs))


@router.get("/runs/table")
def runs_table(request: Request):
    """The run list as an HTMX fragment (the page polls it while a run is active)."""
    with request.app.state.sessions() as db:
        operator_user(request, db)
        runs = db.scalars(select(dbm.Run).order_by(dbm.Run.id.desc())).all()
    return render(request, "_runs_table.html", runs=runs, figures=_figures(runs))


def _figures(runs) -> dict[int, dict]:
    return {r.id: json.loads(r.figures or "{}") for r in runs}


@router.post("/runs")
async def launch(request: Request):
    """Launch a run of the current settings as a background `cosim run` process."""
    from cosim.config.errors import InputError
    from cosim.config.load import load_scenario
    from cosim.sim.loop import variants_for

    await checked_form(request)
    sessions = request.app.state.sessions
    with sessions.begin() as db:
        op = operator_user(request, db)
        base, values = current_settings(request, db)
        bfile = base_file(request, base)
        errors = st.validate(bfile, values, scratch(request))
        if errors:
            raise Refused(400, "the settings are invalid; fix them first: "
                               + "; ".join(p for ps in errors.values() for p in ps))
        run = dbm.Run(name=base, scenario_yaml="", created_by=op.id)
        db.add(run)
        db.flush()
        run_id = run.id
        path = st.write_scenario(bfile, values, scratch(request), f"run-{run_id}")
        network = load_scenario(path).network
        people = db.scalars(select(dbm.User).where(dbm.User.role == "prosumer", dbm.User.status == "admitted",
                                                   dbm.User.network == network).order_by(dbm.User.bus)).all()
        declared = [{"bus": p.bus, "pv_kwp": p.pv_kwp, "battery_kwh": p.battery_kwh, "battery_kw": p.battery_kw,
                     "ev": bool(p.has_ev)} for p in people]
        path = st.write_scenario(bfile, values, scratch(request), f"run-{run_id}", declared)
        try:
            scenario = load_scenario(path)
        except InputError as err:  # e.g. the base scenario already declares an admitted prosumer's bus
            raise Refused(400, f"the run's scenario is invalid: {err.format()}") from None
        run.name, run.network, run.scenario_yaml = scenario.name, scenario.network, path.read_text()
        dbm.audit(db, op.email, "launch run", f"run {run_id}", "",
                  f"{scenario.name}, {scenario.n_rounds} rounds, {len(declared)} admitted prosumer(s)")
    request.app.state.jobs.launch(run_id, path, [v.name for v in variants_for(scenario)])
    if "hx-request" in request.headers:
        return runs_table(request)
    return RedirectResponse(f"/operator/runs/{run_id}", status_code=303)


def _run(db, run_id: int) -> dbm.Run:
    run = db.get(dbm.Run, run_id)
    if run is None:
        raise Refused(404, f"no run {run_id}")
    return run


@router.get("/runs/{run_id}")
def run_page(request: Request, run_id: int):
    with request.app.state.sessions() as db:
        operator_user(request, db)
        run = _run(db, run_id)
    return render(request, "run.html", run=run, figures=json.loads(run.figures or "{}"))


@router.get("/runs/{run_id}/progress")
def run_progress(request: Request, run_id: int):
    with request.app.state.sessions() as db:
        operator_user(request, db)
        run = _run(db, run_id)
    return render(request, "_progress.html", run=run, figures=json.loads(run.figures or "{}"))


@router.post("/runs/{run_id}/cancel")
async def cancel(request: Request, run_id: int):
    await checked_form(request)
    with request.app.state.sessions.begin() as db:
        op = operator_user(request, db)
        run = _run(db, run_id)
        if not request.app.state.jobs.cancel(run_id):
            raise Refused(409, f"run {run_id} is {run.status}, not running: nothing to cancel")
        dbm.audit(db, op.email, "cancel run", f"run {run_id}", run.status, "cancelling")
    if "hx-request" in request.headers:
        return run_progress(request, run_id)
    return RedirectResponse(f"/operator/runs/{run_id}", status_code=303)


@router.get("/runs/{run_id}/files/{name:path}")
def run_file(request: Request, run_id: int, name: str):
    """A report or figure file of a finished run, only from inside its results folder."""
    with request.app.state.sessions() as db:
        operator_user(request, db)
        run = _run(db, run_id)
    return served_file(request, run, name, f"run {run_id}")


def served_file(request: Request, job, name: str, what: str) -> FileResponse:
    """A report or figure file `name` of a finished run or study `job`, only from inside
    its results folder (itself inside the portal's results folder)."""
    root = request.app.state.results.resolve()
    folder = Path(job.out_dir).resolve() if job.out_dir else None
    target = (folder / name).resolve() if folder is not None and "\0" not in name else None
    if (target is None or job.status != "finished" or not target.is_relative_to(folder)
            or not folder.is_relative_to(root) or target.suffix not in SERVED_SUFFIXES or not target.is_file()):
        raise Refused(404, f"no report file {name[:100]!r} in {what}")
    return FileResponse(target, media_type=mimetypes.guess_type(target.name)[0])


@router.get("/audit")
def audit_page(request: Request):
    with request.app.state.sessions() as db:
        operator_user(request, db)
        rows = db.scalars(select(dbm.Audit).order_by(dbm.Audit.id.desc()).limit(500)).all()
    return render(request, "audit.html", rows=rows)
