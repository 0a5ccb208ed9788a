"""``cosim portal``: serve the portal with uvicorn, or create an operator account.

Nothing else needs to be started: the database is an embedded SQLite file by default,
runs are processes the portal starts itself.
"""

from __future__ import annotations

import getpass
import sys
from pathlib import Path

from cosim.config.errors import InputError
from cosim.portal import db as dbm
from cosim.portal import security
from cosim.portal.web import MAX_EMAIL_CHARS


def serve(host: str = "127.0.0.1", port: int = 8000, db_url: str | None = None, results: str | Path = "results",
          scenarios: str | Path | None = None) -> None:
    import uvicorn

    from cosim.portal.app import create_app

    if scenarios is not None and not list(Path(scenarios).glob("*.yaml")):
        raise InputError(scenarios, ["--scenarios: expected a folder of scenario files (*.yaml), found none"])
    app = create_app(db_url, results, scenarios)
    print(f"cosim portal on http://{host}:{port}/ (database {db_url or dbm.default_url(results)})", flush=True)
    uvicorn.run(app, host=host, port=port, log_level="info")


def create_operator(email: str, password: str | None = None, db_url: str | None = None,
                    results: str | Path = "results") -> str:
    """Create an operator account (or reset an existing operator's password); returns a
    line saying which. The password is read from a prompt unless given."""
    email = email.strip().lower()
    if not (3 <= len(email) <= MAX_EMAIL_CHARS and "@" in email and " " not in email):
        raise InputError("EMAIL", [f"email: expected an e-mail address, found {email[:60]!r}"])
    if password is None:
        password = getpass.getpass("password for the operator: ")
        if password != getpass.getpass("again: "):
            raise InputError("password", ["password: the two entries differ"])
    if not security.MIN_PASSWORD_CHARS <= len(password) <= security.MAX_PASSWORD_CHARS:
        raise InputError("password", [f"password: expected {security.MIN_PASSWORD_CHARS} to "
                                      f"{security.MAX_PASSWORD_CHARS} characters, found {len(password)}"])
    sessions = dbm.make_sessions(dbm.make_engine(db_url or dbm.default_url(results)))
    with sessions.begin() as db:
        user = dbm.user_by_email(db, email)
        if user is not None and user.role != "operator":
            raise InputError("EMAIL", [f"email: {email} is a prosumer's account, not an operator's"])
        if user is None:
            db.add(dbm.User(email=email, role="operator", status="active", password_hash=security.hash_password(password)))
            dbm.audit(db, "command line", "create operator", email, "", "operator")
            return f"operator {email} created"
        user.password_hash = security.hash_password(password)
        dbm.audit(db, "command line", "reset operator password", email, "", "")
        return f"operator {email}: password reset"


def read_password_stdin() -> str:
    """The password on standard input (one line, its line break removed)."""
    return sys.stdin.readline().rstrip("\r\n")
