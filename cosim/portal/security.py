"""Passwords, sessions, CSRF tokens, the login rate limit and the request size limit.

- Passwords are hashed with Argon2id (argon2-cffi's defaults, RFC 9106); the clear text
  is never stored nor logged.
- The session is Starlette's signed cookie (itsdangerous), HTTP-only and SameSite=strict;
  it holds the user's id and the session's CSRF token.
- Every POST carries the CSRF token (a form field ``csrf_token`` or the header
  ``X-CSRF-Token``, which HTMX sends); a missing or wrong token is refused with 403.
- Failed logins are counted in the database by client address and by e-mail; over
  `MAX_FAILED_LOGINS` in `LOGIN_WINDOW` the login is refused with 429.
"""

from __future__ import annotations

import datetime as dt
import secrets

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import delete, func, or_, select
from starlette.requests import Request
from starlette.responses import PlainTextResponse

from cosim.portal.db import LoginAttempt, utcnow

#: Failed logins allowed per client address and per e-mail within `LOGIN_WINDOW`.
MAX_FAILED_LOGINS = 5
LOGIN_WINDOW = dt.timedelta(minutes=5)
#: Largest request body the portal reads [bytes]; forms are far smaller.
MAX_BODY_BYTES = 64 * 1024
#: Longest password accepted [characters] (Argon2 hashes any length; this bounds the work).
MAX_PASSWORD_CHARS = 1024
MIN_PASSWORD_CHARS = 8

_hasher = PasswordHasher()


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def check_password(hashed: str, password: str) -> bool:
    try:
        return _hasher.verify(hashed, password)
    except (VerificationError, InvalidHashError):
        return False


def csrf_token(request: Request) -> str:
    """The session's CSRF token, made on first use."""
    token = request.session.get("csrf")
    if not token:
        token = secrets.token_urlsafe(32)
        request.session["csrf"] = token
    return token


def csrf_ok(request: Request, submitted: str | None) -> bool:
    expected = request.session.get("csrf")
    submitted = submitted or request.headers.get("x-csrf-token")
    return bool(expected) and bool(submitted) and secrets.compare_digest(str(expected), str(submitted))


def client_address(request: Request) -> str:
    return request.client.host if request.client is not None else "unknown"


def login_blocked(db, client: str, email: str) -> bool:
    """True when the client or the e-mail had too many failed logins lately."""
    since = utcnow() - LOGIN_WINDOW
    db.execute(delete(LoginAttempt).where(LoginAttempt.at < since))
    by_client = db.scalar(select(func.count()).select_from(LoginAttempt).where(LoginAttempt.client == client))
    by_email = db.scalar(select(func.count()).select_from(LoginAttempt).where(LoginAttempt.email == email))
    return by_client >= MAX_FAILED_LOGINS or by_email >= MAX_FAILED_LOGINS


def record_failed_login(db, client: str, email: str) -> None:
    db.add(LoginAttempt(client=client, email=email))


def forget_failed_logins(db, client: str, email: str) -> None:
    db.execute(delete(LoginAttempt).where(or_(LoginAttempt.client == client, LoginAttempt.email == email)))


class BodyLimit:
    """ASGI middleware: a request body over `limit` bytes gets 413 with a message."""

    def __init__(self, app, limit: int = MAX_BODY_BYTES):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        too_big = PlainTextResponse(f"request body too large: at most {self.limit} bytes", status_code=413)
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            return await too_big(scope, receive, send)
        seen = 0

        async def limited():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise _TooBig
            return message

        try:
            return await self.app(scope, limited, send)
        except _TooBig:
            return await too_big(scope, receive, send)


class _TooBig(Exception):
    pass
