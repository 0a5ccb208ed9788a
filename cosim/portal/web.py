"""What every page of the portal uses: the session's user and role, the CSRF-checked
form, rendering a template, and the refusals (`NeedLogin`, `Refused`)."""

from __future__ import annotations

from pathlib import Path

from fastapi import Request
from fastapi.responses import HTMLResponse

from cosim.portal import db as dbm
from cosim.portal import security

HERE = Path(__file__).resolve().parent
#: The base scenario a new portal starts from.
DEFAULT_BASE = "smoke"
MAX_EMAIL_CHARS, MAX_NAME_CHARS = 254, 200


class NeedLogin(Exception):
    """No valid session: pages redirect to the log-in page, other requests get 401."""


class Refused(Exception):
    """A request the portal refuses with a message (status 400, 403, 404, ...)."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


def render(request: Request, template: str, status: int = 200, **context) -> HTMLResponse:
    context.setdefault("user", getattr(request.state, "user", None))
    context["csrf"] = security.csrf_token(request)
    return request.app.state.templates.TemplateResponse(request, template, context, status_code=status)


def current_user(request: Request, db) -> dbm.User:
    """The logged-in user, or `NeedLogin`."""
    uid = request.session.get("uid")
    user = db.get(dbm.User, uid) if isinstance(uid, int) else None
    if user is None or user.status == "rejected":
        raise NeedLogin
    request.state.user = user
    return user


def operator_user(request: Request, db) -> dbm.User:
    user = current_user(request, db)
    if user.role != "operator":
        raise Refused(403, "this page is for operators only")
    return user


async def checked_form(request: Request) -> dict[str, str]:
    """The POSTed form as text fields, after its CSRF token was checked (403 if not)."""
    try:
        form = await request.form(max_files=0, max_fields=100)
    except Exception as err:  # noqa: BLE001 - any malformed body is the client's error
        raise Refused(400, f"malformed form data: {err}") from None
    values = {k: v for k, v in form.multi_items() if isinstance(v, str)}
    if not security.csrf_ok(request, values.get("csrf_token")):
        raise Refused(403, "missing or invalid CSRF token: reload the page and submit the form again")
    return values
