"""The portal's database: accounts, settings, runs, studies, login attempts and the audit log.

SQLAlchemy 2 on an embedded SQLite file by default (``results/portal/portal.db``); any
SQLAlchemy URL works (``postgresql+psycopg://user@host/cosim`` with its driver
installed). SQLite runs in WAL mode with a busy timeout, so that concurrent requests and
the run monitors wait for each other instead of failing.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from sqlalchemy import (
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    create_engine,
    event,
    select,
)
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker

#: Seconds a SQLite writer waits for another one before giving up [s].
SQLITE_BUSY_TIMEOUT_S = 30.0

#: Run states; a run leaves ``queued``/``running`` for exactly one of the three last.
RUN_STATES = ("queued", "running", "finished", "failed", "cancelled")
ACTIVE_STATES = ("queued", "running")


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)


class Base(DeclarativeBase):
    pass


class User(Base):
    """An operator or a prosumer. A prosumer is ``pending`` until an operator admits it
    (``admitted``, with a network and a bus) or rejects it."""

    __tablename__ = "users"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    email: Mapped[str] = mapped_column(String(254), unique=True, index=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    role: Mapped[str] = mapped_column(String(16))  # operator | prosumer
    status: Mapped[str] = mapped_column(String(16), default="pending")  # pending | admitted | rejected | active
    name: Mapped[str] = mapped_column(String(200), default="")
    pv_kwp: Mapped[float] = mapped_column(Float, default=0.0)
    battery_kwh: Mapped[float] = mapped_column(Float, default=0.0)
    battery_kw: Mapped[float] = mapped_column(Float, default=0.0)
    has_ev: Mapped[bool] = mapped_column(Boolean, default=False)
    network: Mapped[str | None] = mapped_column(String(200), nullable=True)
    bus: Mapped[int | None] = mapped_column(Integer, nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)


class Setting(Base):
    """One operator setting (or the portal's own secret), by key; values are JSON text."""

    __tablename__ = "settings"
    key: Mapped[str] = mapped_column(String(100), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


class Run(Base):
    """A run launched from the portal: a `cosim run` process writing ``out_dir``."""

    __tablename__ = "runs"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    network: Mapped[str] = mapped_column(String(200), default="")
    status: Mapped[str] = mapped_column(String(16), default="queued")
    progress: Mapped[float] = mapped_column(Float, default=0.0)  # [0..1]
    progress_text: Mapped[str] = mapped_column(String(200), default="")
    scenario_yaml: Mapped[str] = mapped_column(Text)
    out_dir: Mapped[str] = mapped_column(String(1000), default="")
    pid: Mapped[int | None] = mapped_column(Integer, nullable=True)
    message: Mapped[str] = mapped_column(Text, default="")
    figures: Mapped[str] = mapped_column(Text, default="{}")  # JSON: key figures of summary.json
    ledger_ok: Mapped[bool | None] = mapped_column(Boolean, nullable=True)
    ledger_message: Mapped[str] = mapped_column(Text, default="")
    created_by: Mapped[int | None] = mapped_column(ForeignKey("users.id"), nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    finished_at: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)


class Study(Base):
    """A study launched from the portal: a `cosim study` process writing ``out_dir``."""

    __tablename__ = "studies"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    study_file: Mapped[str] = mapped_column(String(300))  # its file name in the portal's studies folder
    status: Mapped[str] = mapped_column(String(16), default="queued")
    progress: Mapped[float] = mapped_column(Float, default=0.0)  # [0..1]
    progress_text: Mapped[str] = mapped_column(String(200), default="")
    study_yaml: Mapped[str] = mapped_column(Text)
    out_dir: Mapped[str] = mapped_column(String(1000), default="")
    pid: Mapped[int | None] = mapped_column(Integer, nullable=True)
    message: Mapped[str] = mapped_column(Text, default="")
    figures: Mapped[str] = mapped_column(Text, default="{}")  # JSON: study.json (runs, failed, workers, wall_s)
    created_by: Mapped[int | None] = mapped_column(ForeignKey("users.id"), nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    finished_at: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)


class Audit(Base):
    """One operator action: who, what, when, the old and the new value."""

    __tablename__ = "audit"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    actor: Mapped[str] = mapped_column(String(254))
    action: Mapped[str] = mapped_column(String(100))
    target: Mapped[str] = mapped_column(String(300), default="")
    old_value: Mapped[str] = mapped_column(Text, default="")
    new_value: Mapped[str] = mapped_column(Text, default="")


class LoginAttempt(Base):
    """A failed login, kept for the rate limit (by client address and by e-mail)."""

    __tablename__ = "login_attempts"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow, index=True)
    client: Mapped[str] = mapped_column(String(100), index=True)
    email: Mapped[str] = mapped_column(String(254), index=True)


def default_url(results: str | Path = "results") -> str:
    """The embedded SQLite database under ``<results>/portal/``."""
    folder = Path(results) / "portal"
    folder.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{(folder / 'portal.db').resolve()}"


def make_engine(url: str) -> Engine:
    """An engine for `url`, tables created; SQLite in WAL mode with a busy timeout."""
    sqlite = url.startswith("sqlite")
    kwargs = {"connect_args": {"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_S}} if sqlite else {}
    engine = create_engine(url, **kwargs)
    if sqlite:
        @event.listens_for(engine, "connect")
        def _pragmas(conn, record):  # noqa: ARG001 - SQLAlchemy's listener signature
            cur = conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute(f"PRAGMA busy_timeout={int(SQLITE_BUSY_TIMEOUT_S * 1000)}")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()
    Base.metadata.create_all(engine)
    return engine


def make_sessions(engine: Engine) -> sessionmaker:
    return sessionmaker(engine, expire_on_commit=False)


def get_setting(db, key: str, default: str | None = None) -> str | None:
    row = db.get(Setting, key)
    return row.value if row is not None else default


def put_setting(db, key: str, value: str) -> None:
    row = db.get(Setting, key)
    if row is None:
        db.add(Setting(key=key, value=value))
    else:
        row.value = value


def user_by_email(db, email: str) -> User | None:
    return db.scalars(select(User).where(User.email == email)).first()


def audit(db, actor: str, action: str, target: str = "", old: str = "", new: str = "") -> None:
    """Record an operator action (committed with the caller's transaction)."""
    db.add(Audit(actor=actor, action=action, target=target, old_value=old, new_value=new))
