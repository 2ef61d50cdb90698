"""Who may use the officer console, and what each of them may see.

Accounts are local: a JSON file (mode 0600) under the console's state directory, never
in the repository. Passwords are hashed with scrypt from the standard library (no extra
dependency); integrators authenticate with an API key that is shown once and stored only
as its SHA-256 (a 256-bit random key needs no slow hash).

Roles and scopes
----------------
=============  ===========================================================================
role           may
=============  ===========================================================================
officer        read alerts, declarations and outcomes of its ``offices`` only; record outcomes
               for those alerts
supervisor     everything an officer may, for its ``offices`` (``*``: every office), plus the
               supervisor indicators, any operator's Vision 360 page and audit verification
integrator     publish events (control outcomes...) with its API key; read nothing
operator       the Vision 360 statistics of its own ``eori``'s flows; no alert, no score
=============  ===========================================================================

Secrets (:class:`ConsoleSecrets`): the key sealing audit entries is generated at first start
into ``secrets.json`` (mode 0600) next to the accounts.

Sessions (:class:`SessionStore`) live in the server's memory: a cookie carries a random
256-bit token, idle sessions expire after ``idle_s`` (30 min) and every session after
``absolute_s`` (12 h); a restart logs everybody out. Each session has its own CSRF token,
which every form and every state-changing API call made with the cookie must echo.

Login rate limiting (:class:`LoginRateLimiter`): after ``max_failures`` failed logins for
one account name (5) or one client address (20) within ``window_s`` (5 min), further
attempts for that name or address are refused for ``lockout_s`` (5 min), even with the
right password, and answered 429 with ``Retry-After``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import re
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

__all__ = [
    "ROLES",
    "Account",
    "AccountStore",
    "ConsoleSecrets",
    "LoginRateLimiter",
    "Principal",
    "Role",
    "Session",
    "SessionStore",
    "hash_password",
    "new_token",
    "normalise_account_name",
    "tokens_match",
    "verify_password",
    "write_private",
]

Role = Literal["officer", "supervisor", "integrator", "operator"]
ROLES: tuple[str, ...] = ("officer", "supervisor", "integrator", "operator")
ALL_OFFICES = "*"

_NAME = re.compile(r"^[a-z][a-z0-9._-]{1,31}$")
_OFFICE = re.compile(r"^[A-Z]{2}[A-Z0-9]{6}$")
_EORI = re.compile(r"^[A-Z]{2}[A-Za-z0-9]{1,15}$")
API_KEY_PREFIX = "vgk_"

# scrypt cost: N=2^15, r=8 uses 32 MiB and about 0.1 s per hash on one core, the
# interactive-login setting commonly recommended; stored with the hash so it can be raised.
SCRYPT_N = 2**15
SCRYPT_R = 8
SCRYPT_P = 1
_SCRYPT_MAXMEM = 64 * 1024 * 1024
MIN_PASSWORD_LENGTH = 10


# --------------------------------------------------------------------------------------------
# password hashing
# --------------------------------------------------------------------------------------------


def hash_password(password: str, n: int = SCRYPT_N, r: int = SCRYPT_R, p: int = SCRYPT_P) -> str:
    """``scrypt$N$r$p$salt$hash`` (salt and hash base64): what the accounts file stores.

    >>> encoded = hash_password("correct horse battery", n=2**10)
    >>> encoded.split("$")[:4], verify_password("correct horse battery", encoded), verify_password("wrong", encoded)
    (['scrypt', '1024', '8', '1'], True, False)
    """
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p, maxmem=_SCRYPT_MAXMEM, dklen=32)
    return "$".join(["scrypt", str(n), str(r), str(p), _b64(salt), _b64(digest)])


def verify_password(password: str, encoded: str) -> bool:
    """True when ``password`` matches ``encoded`` (constant-time comparison of the digests)."""
    try:
        scheme, n, r, p, salt, digest = encoded.split("$")
        if scheme != "scrypt":
            return False
        expected = base64.b64decode(digest)
        got = hashlib.scrypt(
            password.encode(),
            salt=base64.b64decode(salt),
            n=int(n),
            r=int(r),
            p=int(p),
            maxmem=_SCRYPT_MAXMEM,
            dklen=len(expected),
        )
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got, expected)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def normalise_account_name(text: str) -> str | None:
    """The account name a login form's ``text`` means (trimmed, lower-cased), or None when it
    cannot be one. Lower-casing comes before any length check: some characters grow when
    lower-cased ("İ" becomes two code points), so a name cut to length first could outgrow it.

    >>> normalise_account_name("  Ana "), normalise_account_name("İ" * 64), normalise_account_name("x")
    ('ana', None, None)
    """
    name = text[:256].strip().lower()  # bounded work on hostile input
    return name if _NAME.match(name) else None


def new_token() -> str:
    """A random URL-safe token carrying 256 bits (session ids, CSRF tokens)."""
    return secrets.token_urlsafe(32)


def tokens_match(expected: str | None, given: str | None) -> bool:
    """Constant-time equality of two tokens; False when either is missing."""
    if not expected or not given:
        return False
    return hmac.compare_digest(expected.encode(), given.encode())


# --------------------------------------------------------------------------------------------
# secrets
# --------------------------------------------------------------------------------------------


def write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically and durably, readable by the owner only (0600)."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)  # accounts and keys: owner only
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    # The rename itself is durable only once the directory is synced.
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


@dataclass(frozen=True, slots=True)
class ConsoleSecrets:
    """Keys generated at first start and kept in ``secrets.json`` (0600) under the state directory.

    ``audit_key`` seals audit entries (HMAC-SHA256): lose it and seals can no longer be
    checked (the hash chain still can); leak it and someone with write access to ClickHouse
    could rewrite the log undetectably. Back it up like a database password.
    """

    audit_key: bytes
    created_at: str

    @classmethod
    def load_or_create(cls, state_dir: Path) -> ConsoleSecrets:
        """Read ``state_dir/secrets.json``, creating it with fresh random keys when missing."""
        path = state_dir / "secrets.json"
        if not path.exists():
            data = {"audit_key": secrets.token_hex(32), "created_at": datetime.now(UTC).isoformat(timespec="seconds")}
            state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            try:
                # O_EXCL: two consoles starting together must not each write their own key.
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:
                pass
            else:
                with os.fdopen(fd, "w") as handle:
                    json.dump(data, handle)
                    handle.flush()
                    os.fsync(handle.fileno())
        data = json.loads(path.read_text())
        return cls(audit_key=bytes.fromhex(data["audit_key"]), created_at=data["created_at"])


# --------------------------------------------------------------------------------------------
# accounts
# --------------------------------------------------------------------------------------------


class Account(BaseModel):
    """One local account as the accounts file stores it."""

    model_config = ConfigDict(extra="forbid")

    name: str
    role: Role
    password_hash: str | None = None
    api_key_sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")
    offices: list[str] = Field(default_factory=list, description="Officer/supervisor scope; ['*'] = every office")
    eori: str | None = Field(default=None, description="Operator scope: the one EORI whose flows it sees")
    created_at: str = Field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    disabled: bool = False

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _NAME.match(value):
            raise ValueError("account names are 2-32 characters: lower-case letters, digits, '.', '_', '-'")
        return value

    @field_validator("offices")
    @classmethod
    def _offices(cls, value: list[str]) -> list[str]:
        for office in value:
            if office != ALL_OFFICES and not _OFFICE.match(office):
                raise ValueError(f"invalid customs office code {office!r} (e.g. FR002300, or '*' for all)")
        return sorted(set(value))

    @model_validator(mode="after")
    def _scope_fits_role(self) -> Account:
        if self.role == "officer" and (not self.offices or ALL_OFFICES in self.offices):
            raise ValueError("an officer needs at least one office, and not '*'")
        if self.role == "supervisor" and not self.offices:
            raise ValueError("a supervisor needs offices (or '*' for every office)")
        if self.role == "operator":
            if self.eori is None or not _EORI.match(self.eori):
                raise ValueError("an operator account needs its EORI")
            if self.offices:
                raise ValueError("an operator account has no offices")
        elif self.eori is not None:
            raise ValueError("only operator accounts carry an EORI")
        if self.role == "integrator" and self.offices:
            raise ValueError("an integrator account has no offices")
        return self


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller and its scope, as every route sees it."""

    name: str
    role: str
    offices: frozenset[str] = frozenset()
    eori: str | None = None
    via: Literal["session", "api_key"] = "session"

    @property
    def all_offices(self) -> bool:
        return self.role == "supervisor" and ALL_OFFICES in self.offices

    @property
    def reads_alerts(self) -> bool:
        """Officers and supervisors read alerts; integrators and operators never do."""
        return self.role in ("officer", "supervisor")

    def may_read_office(self, office: str | None) -> bool:
        """True when alerts and outcomes of ``office`` are in this principal's scope."""
        if not self.reads_alerts or office is None:
            return False
        return self.all_offices or office in self.offices

    def office_scope(self) -> frozenset[str] | None:
        """Offices whose alerts this principal reads; ``None`` means every office."""
        if self.all_offices:
            return None
        return self.offices if self.reads_alerts else frozenset()

    def may_read_operator(self, eori: str) -> bool:
        """Vision 360: an operator sees its own EORI only; supervisors see any."""
        if self.role == "operator":
            return self.eori == eori
        return self.role == "supervisor"


class AccountStore:
    """Accounts in ``path`` (JSON, mode 0600), re-read when the file changes on disk.

    ``scrypt_n`` is the cost used for *new* hashes (tests lower it); existing hashes keep
    the cost they were made with.
    """

    def __init__(self, path: Path, scrypt_n: int = SCRYPT_N) -> None:
        self.path = path
        self.scrypt_n = scrypt_n
        self._lock = threading.RLock()
        self._accounts: dict[str, Account] = {}
        self._mtime: float | None = None
        # Verified against when the account name is unknown, so that a login for a missing
        # name takes as long as one for an existing name (no account enumeration by timing).
        self._dummy_hash = hash_password(secrets.token_urlsafe(16), n=scrypt_n)
        self._reload()

    def _reload(self) -> None:
        with self._lock:
            try:
                mtime = self.path.stat().st_mtime
            except FileNotFoundError:
                self._accounts, self._mtime = {}, None
                return
            if mtime == self._mtime:
                return
            raw = json.loads(self.path.read_text())
            self._accounts = {a["name"]: Account.model_validate(a) for a in raw.get("accounts", [])}
            self._mtime = mtime

    def _save(self) -> None:
        data = {"accounts": [a.model_dump() for a in sorted(self._accounts.values(), key=lambda a: a.name)]}
        write_private(self.path, json.dumps(data, indent=2).encode())
        self._mtime = self.path.stat().st_mtime

    def __len__(self) -> int:
        self._reload()
        return len(self._accounts)

    def accounts(self) -> list[Account]:
        """Every account, by name."""
        self._reload()
        return sorted(self._accounts.values(), key=lambda a: a.name)

    def get(self, name: str) -> Account | None:
        self._reload()
        return self._accounts.get(name)

    def add_user(
        self,
        name: str,
        role: Role,
        password: str,
        offices: Iterable[str] = (),
        eori: str | None = None,
    ) -> Account:
        """Create a password account (officer, supervisor or operator)."""
        if role == "integrator":
            raise ValueError("integrators authenticate with an API key: use add_integrator")
        if len(password) < MIN_PASSWORD_LENGTH:
            raise ValueError(f"passwords need at least {MIN_PASSWORD_LENGTH} characters")
        account = Account(
            name=name,
            role=role,
            password_hash=hash_password(password, n=self.scrypt_n),
            offices=list(offices),
            eori=eori,
        )
        return self._insert(account)

    def add_integrator(self, name: str) -> tuple[Account, str]:
        """Create an integrator account; returns it and its API key (shown once, stored hashed)."""
        key = API_KEY_PREFIX + secrets.token_urlsafe(32)
        account = Account(name=name, role="integrator", api_key_sha256=_sha256(key))
        return self._insert(account), key

    def set_password(self, name: str, password: str) -> None:
        if len(password) < MIN_PASSWORD_LENGTH:
            raise ValueError(f"passwords need at least {MIN_PASSWORD_LENGTH} characters")
        with self._lock:
            self._reload()
            account = self._require(name)
            if account.role == "integrator":
                raise ValueError("integrators have API keys, not passwords")
            self._accounts[name] = account.model_copy(update={"password_hash": hash_password(password, self.scrypt_n)})
            self._save()

    def set_disabled(self, name: str, disabled: bool) -> None:
        with self._lock:
            self._reload()
            self._accounts[name] = self._require(name).model_copy(update={"disabled": disabled})
            self._save()

    def authenticate(self, name: str, password: str) -> Principal | None:
        """The principal for a correct name and password of an enabled password account, else None."""
        account = self.get(name)
        if account is None or account.password_hash is None:
            verify_password(password, self._dummy_hash)  # same work as a real check
            return None
        if not verify_password(password, account.password_hash) or account.disabled:
            return None
        return _principal(account, "session")

    def authenticate_api_key(self, key: str) -> Principal | None:
        """The integrator principal owning ``key``, else None."""
        if not key.startswith(API_KEY_PREFIX):
            return None
        digest = _sha256(key)
        for account in self.accounts():
            if account.api_key_sha256 and hmac.compare_digest(account.api_key_sha256, digest):
                return None if account.disabled else _principal(account, "api_key")
        return None

    def principal(self, name: str) -> Principal | None:
        """The current principal of account ``name`` (None when gone or disabled): sessions
        re-read it on every request so a disabled account is locked out at once."""
        account = self.get(name)
        if account is None or account.disabled:
            return None
        return _principal(account, "session")

    def _require(self, name: str) -> Account:
        account = self._accounts.get(name)
        if account is None:
            raise KeyError(f"no account {name!r}")
        return account

    def _insert(self, account: Account) -> Account:
        with self._lock:
            self._reload()
            if account.name in self._accounts:
                raise ValueError(f"account {account.name!r} already exists")
            self._accounts[account.name] = account
            self._save()
        return account


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _principal(account: Account, via: Literal["session", "api_key"]) -> Principal:
    return Principal(account.name, account.role, frozenset(account.offices), account.eori, via)


# --------------------------------------------------------------------------------------------
# sessions
# --------------------------------------------------------------------------------------------


@dataclass(slots=True)
class Session:
    """A logged-in browser. ``csrf`` must accompany every state-changing request."""

    name: str
    csrf: str
    created: float
    last_seen: float


class SessionStore:
    """Sessions in memory, keyed by the SHA-256 of the cookie token (a memory dump shows no token)."""

    def __init__(
        self, idle_s: float = 1800.0, absolute_s: float = 12 * 3600.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.idle_s = idle_s
        self.absolute_s = absolute_s
        self._clock = clock
        self._sessions: dict[str, Session] = {}
        self._lock = threading.Lock()

    def create(self, name: str) -> tuple[str, Session]:
        """A new session for account ``name``; returns the cookie token and the session."""
        token = new_token()
        now = self._clock()
        session = Session(name=name, csrf=new_token(), created=now, last_seen=now)
        with self._lock:
            self._sweep(now)
            self._sessions[_sha256(token)] = session
        return token, session

    def get(self, token: str | None) -> Session | None:
        """The live session of ``token`` (its idle timer restarts), or None."""
        if not token:
            return None
        now = self._clock()
        with self._lock:
            key = _sha256(token)
            session = self._sessions.get(key)
            if session is None:
                return None
            if now - session.last_seen > self.idle_s or now - session.created > self.absolute_s:
                del self._sessions[key]
                return None
            session.last_seen = now
            return session

    def peek(self, token: str | None) -> Session | None:
        """The live session of ``token`` without restarting its idle timer (an open live feed
        re-checks with this: a feed left on screen is not activity), or None."""
        if not token:
            return None
        now = self._clock()
        with self._lock:
            session = self._sessions.get(_sha256(token))
            if session is None or now - session.last_seen > self.idle_s or now - session.created > self.absolute_s:
                return None
            return session

    def revoke(self, token: str | None) -> None:
        if token:
            with self._lock:
                self._sessions.pop(_sha256(token), None)

    def _sweep(self, now: float) -> None:
        expired = [
            k for k, s in self._sessions.items() if now - s.last_seen > self.idle_s or now - s.created > self.absolute_s
        ]
        for key in expired:
            del self._sessions[key]


# --------------------------------------------------------------------------------------------
# login rate limiting
# --------------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Failures:
    times: deque[float] = field(default_factory=deque)
    locked_until: float = 0.0
    pending: int = 0
    """Attempts let through and not answered yet (their password is being checked)."""


class LoginRateLimiter:
    """Failed-login counting per account name and per client address.

    >>> limiter = LoginRateLimiter(max_failures_per_name=2, clock=lambda: 0.0)
    >>> limiter.record_failure("ana", "10.0.0.1"); limiter.retry_after("ana", "10.0.0.2")
    >>> limiter.record_failure("ana", "10.0.0.1"); limiter.retry_after("ana", "10.0.0.2")
    300.0
    """

    def __init__(
        self,
        max_failures_per_name: int = 5,
        max_failures_per_address: int = 20,
        window_s: float = 300.0,
        lockout_s: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limits = {"name": max_failures_per_name, "addr": max_failures_per_address}
        self.window_s = window_s
        self.lockout_s = lockout_s
        self._clock = clock
        self._failures: dict[str, _Failures] = {}
        self._lock = threading.Lock()

    def retry_after(self, name: str, address: str) -> float | None:
        """Seconds before ``name`` may try again from ``address``; None when allowed now."""
        now = self._clock()
        with self._lock:
            return self._wait_locked(name, address, now)

    def _wait_locked(self, name: str, address: str, now: float) -> float | None:
        """Seconds left of the longer lockout of ``name`` and ``address`` (None: neither); under the lock."""
        waits = [
            f.locked_until - now
            for key in (f"name:{name}", f"addr:{address}")
            if (f := self._failures.get(key)) is not None and f.locked_until > now
        ]
        return max(waits) if waits else None

    def begin_attempt(self, name: str, address: str) -> float | None:
        """Reserve one login attempt before its (slow) password check; None when let through.

        An attempt counts from here, not from its failure: failures plus attempts still
        being checked never exceed the limit, so concurrent requests cannot all slip past
        :meth:`retry_after` before the first failure is recorded. Otherwise returns the
        seconds to wait. Every attempt let through must be closed by :meth:`end_attempt`.
        """
        now = self._clock()
        with self._lock:
            wait = self._wait_locked(name, address, now)
            if wait is not None:
                return wait
            entries = []
            for kind, key in (("name", f"name:{name}"), ("addr", f"addr:{address}")):
                entry = self._failures.setdefault(key, _Failures())
                while entry.times and entry.times[0] < now - self.window_s:
                    entry.times.popleft()
                if len(entry.times) + entry.pending >= self.limits[kind]:
                    return 1.0  # the attempts in flight may reach the limit: ask again once answered
                entries.append(entry)
            for entry in entries:
                entry.pending += 1
        return None

    def end_attempt(self, name: str, address: str, success: bool) -> None:
        """Close an attempt :meth:`begin_attempt` let through, counting it as a failure or a success."""
        with self._lock:
            for key in (f"name:{name}", f"addr:{address}"):
                entry = self._failures.get(key)
                if entry is not None and entry.pending:
                    entry.pending -= 1
        if success:
            self.record_success(name)
        else:
            self.record_failure(name, address)

    def record_failure(self, name: str, address: str) -> None:
        now = self._clock()
        with self._lock:
            for kind, key in (("name", f"name:{name}"), ("addr", f"addr:{address}")):
                entry = self._failures.setdefault(key, _Failures())
                while entry.times and entry.times[0] < now - self.window_s:
                    entry.times.popleft()
                entry.times.append(now)
                if len(entry.times) >= self.limits[kind]:
                    entry.locked_until = now + self.lockout_s
                    entry.times.clear()
            if len(self._failures) > 100_000:  # bound memory under a spraying attack
                self._failures = {
                    k: f for k, f in self._failures.items() if f.locked_until > now or f.times or f.pending
                }

    def record_success(self, name: str) -> None:
        """A correct login clears the name's failure count (not the address's)."""
        with self._lock:
            entry = self._failures.get(f"name:{name}")
            if entry is not None:
                # Keep the entry while other attempts for the name are still being checked.
                entry.times.clear()
                entry.locked_until = 0.0
                if not entry.pending:
                    del self._failures[f"name:{name}"]
