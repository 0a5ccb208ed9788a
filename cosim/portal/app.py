"""The portal's web application: `create_app` wires the database, the sessions, the run
jobs, the templates and the routes (log-in and registration here; the operator's pages in
`cosim.portal.operator`, the prosumer's in `cosim.portal.prosumer`).

Pages are rendered on the server (Jinja2, autoescaped); the live parts (a run's progress,
the run list) are HTMX fragments polled by the page. HTMX is served from the package
(``static/htmx.min.js``), never from the network.
"""

from __future__ import annotations

import logging
import secrets
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import PlainTextResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.sessions import SessionMiddleware

from cosim.config.errors import InputError
from cosim.portal import auth, operator, prosumer, security, studies
from cosim.portal import db as dbm
from cosim.portal.jobs import Jobs, StudyJobs
from cosim.portal.web import HERE, NeedLogin, Refused, render

REPO_SCENARIOS = HERE.parents[1] / "scenarios"
#: Session cookie lifetime [s]: a working day.
SESSION_MAX_AGE_S = 12 * 3600

log = logging.getLogger("cosim.portal")


def create_app(db_url: str | None = None, results: str | Path = "results",
               scenarios: str | Path | None = None, https_only: bool = False) -> FastAPI:
    """The portal on database `db_url` (default SQLite under ``<results>/portal/``),
    writing runs under ``<results>/portal/runs/`` and offering the scenario files of
    `scenarios` (default ``scenarios/`` of the working directory, else of the repository)
    as base scenarios and the study files of its ``studies/`` folder as studies (studies
    write under ``<results>/portal/studies/``)."""
    results = Path(results)
    engine = dbm.make_engine(db_url or dbm.default_url(results))
    sessions = dbm.make_sessions(engine)
    with sessions.begin() as db:
        secret = dbm.get_setting(db, "secret_key")
        if secret is None:
            secret = secrets.token_urlsafe(48)
            dbm.put_setting(db, "secret_key", secret)
    jobs, study_jobs = Jobs(sessions, results), StudyJobs(sessions, results)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        for each in (jobs, study_jobs):
            n = each.recover()
            if n:
                log.warning("marked %d %s(s) left running by a stopped portal as failed", n, each.kind)
        yield
        jobs.stop_all()
        study_jobs.stop_all()

    app = FastAPI(title="cosim portal", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.sessions, app.state.jobs, app.state.results = sessions, jobs, results
    if scenarios is None:  # the working directory's scenarios/ (make portal), else the repository's
        scenarios = Path("scenarios") if Path("scenarios").is_dir() else REPO_SCENARIOS
    app.state.scenarios = Path(scenarios).resolve()
    app.state.studies, app.state.study_jobs = app.state.scenarios / "studies", study_jobs
    app.state.templates = Jinja2Templates(directory=str(HERE / "templates"))
    app.state.bus_cache = {}
    app.add_middleware(SessionMiddleware, secret_key=secret, session_cookie="cosim_portal",
                       max_age=SESSION_MAX_AGE_S, same_site="strict", https_only=https_only)
    app.add_middleware(security.BodyLimit)
    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")
    _handlers(app)

    app.include_router(auth.router)
    app.include_router(operator.router)
    app.include_router(studies.router)
    app.include_router(prosumer.router)
    return app


def _handlers(app: FastAPI) -> None:
    @app.exception_handler(NeedLogin)
    async def _need_login(request: Request, exc: NeedLogin) -> Response:
        if request.method == "GET" and "hx-request" not in request.headers:
            return RedirectResponse("/login", status_code=303)
        return PlainTextResponse("not logged in", status_code=401)

    @app.exception_handler(Refused)
    async def _refused(request: Request, exc: Refused) -> Response:
        if request.method != "GET" or "hx-request" in request.headers:
            return PlainTextResponse(exc.message, status_code=exc.status)
        return render(request, "message.html", status=exc.status, title=f"Error {exc.status}", message=exc.message)

    @app.exception_handler(InputError)
    async def _bad_scenario(request: Request, exc: InputError) -> Response:
        return await _refused(request, Refused(400, exc.format()))

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> Response:
        where = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
        return PlainTextResponse(f"invalid request: {where}", status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        return PlainTextResponse(str(exc.detail), status_code=exc.status_code)
