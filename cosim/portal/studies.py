"""The operator's study pages: launch a study file of the portal's studies folder
(``scenarios/studies/``) as a background ``cosim study`` process, watch its progress,
cancel it, open its report. Launches and cancels go to the audit log."""

from __future__ import annotations

import json
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse
from sqlalchemy import select

from cosim.portal import db as dbm
from cosim.portal.operator import served_file
from cosim.portal.web import Refused, checked_form, operator_user, render

router = APIRouter(prefix="/operator/studies")


def study_files(request: Request) -> list[str]:
    """The study files the operator may launch: the ``*.yaml`` files of the studies folder."""
    folder = request.app.state.studies
    return sorted(p.name for p in folder.glob("*.yaml")) if folder.is_dir() else []


def _studies(db) -> list[dbm.Study]:
    return db.scalars(select(dbm.Study).order_by(dbm.Study.id.desc())).all()


def _figures(studies) -> dict[int, dict]:
    return {s.id: json.loads(s.figures or "{}") for s in studies}


@router.get("")
def studies_page(request: Request):
    with request.app.state.sessions() as db:
        operator_user(request, db)
        studies = _studies(db)
    return render(request, "studies.html", studies=studies, figures=_figures(studies), files=study_files(request))


@router.get("/table")
def studies_table(request: Request):
    """The study list as an HTMX fragment (the page polls it while a study is active)."""
    with request.app.state.sessions() as db:
        operator_user(request, db)
        studies = _studies(db)
    return render(request, "_studies_table.html", studies=studies, figures=_figures(studies))


@router.post("")
async def launch(request: Request):
    """Launch the chosen study file as a background `cosim study` process."""
    from cosim.study.spec import load_study

    form = await checked_form(request)
    name = form.get("study", "")
    files = study_files(request)
    with request.app.state.sessions.begin() as db:
        op = operator_user(request, db)
        if name not in files:
            raise Refused(400, f"study: expected one of the study files {files}, found {name[:80]!r}")
        path: Path = request.app.state.studies / name
        study = load_study(path)  # a bad study file: 400 naming the file and the field
        row = dbm.Study(name=study.name, study_file=name, study_yaml=path.read_text(), created_by=op.id)
        db.add(row)
        db.flush()
        study_id = row.id
        dbm.audit(db, op.email, "launch study", f"study {study_id}", "", f"{study.name} ({name})")
    request.app.state.study_jobs.launch_study(study_id, path)
    return RedirectResponse(f"/operator/studies/{study_id}", status_code=303)


def _study(db, study_id: int) -> dbm.Study:
    row = db.get(dbm.Study, study_id)
    if row is None:
        raise Refused(404, f"no study {study_id}")
    return row


@router.get("/{study_id}")
def study_page(request: Request, study_id: int):
    with request.app.state.sessions() as db:
        operator_user(request, db)
        row = _study(db, study_id)
    return render(request, "study.html", study=row, figures=json.loads(row.figures or "{}"))


@router.get("/{study_id}/progress")
def study_progress(request: Request, study_id: int):
    with request.app.state.sessions() as db:
        operator_user(request, db)
        row = _study(db, study_id)
    return render(request, "_study_progress.html", study=row, figures=json.loads(row.figures or "{}"))


@router.post("/{study_id}/cancel")
async def cancel(request: Request, study_id: int):
    await checked_form(request)
    with request.app.state.sessions.begin() as db:
        op = operator_user(request, db)
        row = _study(db, study_id)
        if not request.app.state.study_jobs.cancel(study_id):
            raise Refused(409, f"study {study_id} is {row.status}, not running: nothing to cancel")
        dbm.audit(db, op.email, "cancel study", f"study {study_id}", row.status, "cancelling")
    if "hx-request" in request.headers:
        return study_progress(request, study_id)
    return RedirectResponse(f"/operator/studies/{study_id}", status_code=303)


@router.get("/{study_id}/files/{name:path}")
def study_file(request: Request, study_id: int, name: str):
    """The report (or a figure) of a finished study, only from inside its results folder."""
    with request.app.state.sessions() as db:
        operator_user(request, db)
        row = _study(db, study_id)
    return served_file(request, row, name, f"study {study_id}")
