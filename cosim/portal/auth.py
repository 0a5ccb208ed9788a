"""Log-in, log-out and a prosumer's registration (pending until an operator admits it)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse

from cosim.portal import db as dbm
from cosim.portal import security
from cosim.portal.web import MAX_EMAIL_CHARS, MAX_NAME_CHARS, checked_form, current_user, render

router = APIRouter()

@router.get("/")
def home(request: Request):
    with request.app.state.sessions() as db:
        user = current_user(request, db)
    return RedirectResponse("/operator" if user.role == "operator" else "/me", status_code=303)

@router.get("/login")
def login_page(request: Request):
    return render(request, "login.html")

@router.post("/login")
async def login(request: Request):
    form = await checked_form(request)
    email, password = form.get("email", "").strip().lower()[:MAX_EMAIL_CHARS], form.get("password", "")
    client = security.client_address(request)
    with request.app.state.sessions.begin() as db:
        if security.login_blocked(db, client, email):
            return render(request, "login.html", status=429, email=email,
                          error="too many failed log-ins: wait five minutes and try again")
        user = dbm.user_by_email(db, email)
        good = (user is not None and len(password) <= security.MAX_PASSWORD_CHARS
                and security.check_password(user.password_hash, password))
        if not good or user.status == "rejected":
            security.record_failed_login(db, client, email)
            return render(request, "login.html", status=401, email=email, error="wrong e-mail or password")
        security.forget_failed_logins(db, client, email)
        uid = user.id
    request.session.clear()
    request.session["uid"] = uid
    security.csrf_token(request)  # a fresh token for the new session
    return RedirectResponse("/", status_code=303)

@router.post("/logout")
async def logout(request: Request):
    await checked_form(request)
    request.session.clear()
    return RedirectResponse("/login", status_code=303)

@router.get("/register")
def register_page(request: Request):
    return render(request, "register.html", values={}, errors={})

@router.post("/register")
async def register(request: Request):
    form = await checked_form(request)
    values, errors = registration(form)
    with request.app.state.sessions.begin() as db:
        if not errors and dbm.user_by_email(db, values["email"]) is not None:
            errors["email"] = "email: this e-mail is already registered"
        if errors:
            shown = {k: v for k, v in form.items() if k not in ("password", "csrf_token")}
            return render(request, "register.html", status=400, values=shown, errors=errors)
        password = values.pop("password")
        db.add(dbm.User(role="prosumer", status="pending", password_hash=security.hash_password(password),
                        **values))
    return render(request, "message.html", title="Registration received",
                  message="An operator will admit you to a bus of the network; then you can log in.")


def _number(form: dict, key: str, errors: dict, unit: str, most: float) -> float:
    text = form.get(key, "").strip() or "0"
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0.0 <= value <= most:  # also NaN
        errors[key] = f"{key}: expected a number from 0 to {most:g} [{unit}], found {text[:40]!r}"
        return 0.0
    return value


def registration(form: dict[str, str]) -> tuple[dict, dict[str, str]]:
    """A prosumer's registration form checked: (values, problems by field)."""
    errors: dict[str, str] = {}
    email = form.get("email", "").strip().lower()
    if not (3 <= len(email) <= MAX_EMAIL_CHARS and "@" in email and " " not in email):
        errors["email"] = f"email: expected an e-mail address of at most {MAX_EMAIL_CHARS} characters, found {email[:60]!r}"
    password = form.get("password", "")
    if not security.MIN_PASSWORD_CHARS <= len(password) <= security.MAX_PASSWORD_CHARS:
        errors["password"] = (f"password: expected {security.MIN_PASSWORD_CHARS} to {security.MAX_PASSWORD_CHARS} "
                              f"characters, found {len(password)}")
    name = form.get("name", "").strip()
    if len(name) > MAX_NAME_CHARS:
        errors["name"] = f"name: expected at most {MAX_NAME_CHARS} characters, found {len(name)}"
    values = {
        "email": email, "password": password, "name": name,
        "pv_kwp": _number(form, "pv_kwp", errors, "kWp", 1000.0),
        "battery_kwh": _number(form, "battery_kwh", errors, "kWh", 1000.0),
        "battery_kw": _number(form, "battery_kw", errors, "kW", 1000.0),
        "has_ev": form.get("has_ev", "") in ("on", "yes", "true", "1"),
    }
    if "battery_kwh" not in errors and "battery_kw" not in errors and \
            (values["battery_kwh"] > 0.0) != (values["battery_kw"] > 0.0):
        errors["battery_kw"] = (f"battery_kw: expected battery_kwh and battery_kw both > 0 (a battery) or both 0 "
                                f"(none), found {values['battery_kwh']:g} kWh and {values['battery_kw']:g} kW")
    return values, errors
