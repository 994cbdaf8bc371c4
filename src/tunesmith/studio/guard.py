"""The studio's defences against the other pages in the user's browser and against names it was not bound to.

One middleware (`install`) checks every request, static files included, before any route runs:

1. **Host.** The `Host` header must name the address the studio listens on: 127.0.0.1, localhost or [::1]
   with its port, or `--host` (and `--allow-host` names). A page whose DNS name was re-pointed at 127.0.0.1
   (DNS rebinding) reaches the studio under its own name and gets 421, so it can read nothing.
2. **Access token** (with `--token`): a cookie, `Authorization: Bearer` or `?token=` once; constant-time compare.
3. **State changes** (every method but GET/HEAD/OPTIONS; no GET route changes anything): when the browser says
   where the request comes from (`Origin`, `Sec-Fetch-Site`), that must be the studio's own origin; and the
   request must carry the session's CSRF token (form field `csrf_token` or header `X-CSRF-Token`). The token is
   an HMAC of the session cookie under a secret drawn at start-up, so a page elsewhere can neither read it nor
   forge one for a cookie it planted. Refusals are 403, a page for a form and JSON for a JSON request.

Cookies ignore ports, so a page on another port of 127.0.0.1 is "same-site" and gets SameSite cookies: the
Origin check and the token are what stop it, not the cookie's SameSite flag.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import re
import secrets
import socket
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "x-csrf-token"
TOKEN_COOKIE = "tunesmith_studio_token"
WILDCARD_BINDS = frozenset({"0.0.0.0", "::", ""})
_HOST = re.compile(r"^(\[[0-9a-f:.]+\]|[^:\[\]/@\s]+)(?::(\d{1,5}))?$")
_SESSION = re.compile(r"^[A-Za-z0-9_-]{32,64}$")


class Refused(Exception):
    """A request the studio will not serve: `status` (401, 403, 421) and a sentence saying why."""

    def __init__(self, status: int, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.status, self.message, self.hint = status, message, hint


def _bracketed(host: str) -> str:
    """`host` as it appears in a Host header: IPv6 literals in brackets, lower case."""
    host = host.strip().lower()
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def is_loopback(host: str) -> bool:
    """Whether `host` (a name or an address, IPv6 with or without brackets) is this machine's loopback."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name.strip("[]"))
    except ValueError:
        return False
    return True


@dataclass
class Guard:
    """The studio's address (`host`, `port`), access token, and the secret its CSRF tokens are made with."""

    host: str
    port: int
    token: str | None = None
    allow_hosts: list[str] = field(default_factory=list)
    secret: bytes = field(default_factory=lambda: secrets.token_bytes(32))

    def __post_init__(self) -> None:
        names = {"127.0.0.1", "localhost", "[::1]", _bracketed(self.host), *(_bracketed(h) for h in self.allow_hosts)}
        self.wildcard = self.host.strip() in WILDCARD_BINDS
        if self.wildcard:  # listening on every address: the machine's own names too (IP literals: see host_ok)
            names |= {socket.gethostname().lower(), socket.getfqdn().lower()}
        self.names = frozenset(names - {""})
        self.session_cookie = f"tunesmith_studio_session_{self.port}"  # cookies ignore ports: one per studio

    def host_ok(self, header: str) -> bool:
        """Whether a Host header names this studio (its names, with its port; an IP literal when bound to all)."""
        m = _HOST.match(header.strip().lower())
        if m is None:
            return False
        name, port = m.group(1), int(m.group(2)) if m.group(2) else 80
        if port != self.port:
            return False
        # An IP literal cannot be re-pointed by DNS; a wildcard bind answers on all of the machine's addresses.
        return name in self.names or (self.wildcard and _is_ip(name))

    def csrf_token(self, session: str) -> str:
        return hmac.new(self.secret, session.encode(), hashlib.sha256).hexdigest()

    def bearer_ok(self, request: Request) -> bool:
        given = request.headers.get("authorization", "")
        return bool(self.token) and given.startswith("Bearer ") and _same(given.removeprefix("Bearer "), self.token or "")

    def check_access(self, request: Request) -> None:
        """401 without the access token (when the studio has one)."""
        if not self.token or request.url.path.startswith("/static"):
            return
        given = request.query_params.get("token") or request.cookies.get(TOKEN_COOKIE) or ""
        if not (_same(given, self.token) or self.bearer_ok(request)):
            raise Refused(401, "This studio needs its access token.", "Open it with the address it printed (…/?token=…).")

    def check_origin(self, request: Request) -> None:
        """403 unless the browser's own account of where a state change comes from is this studio (when it gives one)."""
        site = request.headers.get("sec-fetch-site")
        if site is not None and site not in ("same-origin", "none"):
            raise Refused(403, f"Refused a request sent by another site (Sec-Fetch-Site: {site}).", _RELOAD)
        origin = request.headers.get("origin")
        own = f"{request.url.scheme}://{request.headers.get('host', '')}".lower()
        if origin is not None and origin.lower() != own:
            raise Refused(403, f"Refused a request sent from {origin}, not from this studio's own pages ({own}).", _RELOAD)

    async def check_token(self, request: Request) -> None:
        """403 unless the request carries the CSRF token of its session (header, or the form field)."""
        if self.bearer_ok(request):  # a browser never adds an Authorization header to a cross-site request
            return
        session = request.cookies.get(self.session_cookie, "")
        given = request.headers.get(CSRF_HEADER) or await _form_token(request)
        if not _SESSION.match(session) or not given or not _same(given, self.csrf_token(session)):
            raise Refused(403, "Refused a change that did not come with this studio page's security token.", _RELOAD)


_RELOAD = "If you sent it from the studio, reload the page (the studio may have restarted) and try again."


def _same(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode(), expected.encode())


async def _form_token(request: Request) -> str:
    """The `csrf_token` field of a form body; the body stays readable for the route."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind == "application/x-www-form-urlencoded":
        body = await request.body()  # cached by the middleware and replayed to the route
        return (parse_qs(body.decode("latin-1")).get(CSRF_FIELD) or [""])[0]
    if kind == "multipart/form-data":
        await request.body()
        value = (await request.form()).get(CSRF_FIELD)
        return value if isinstance(value, str) else ""
    return ""


def wants_json(request: Request) -> bool:
    kind = request.headers.get("content-type", "")
    return "json" in kind or "application/json" in request.headers.get("accept", "")


def refusal(request: Request, exc: Refused) -> Response:
    """The answer to a refused request: JSON for a JSON client, else a short page (no studio data in either)."""
    if wants_json(request):
        return JSONResponse({"error": {"message": exc.message, "hint": exc.hint, "status": exc.status}}, exc.status)
    from markupsafe import escape

    hint = f"<p>{escape(exc.hint)}</p>" if exc.hint else ""
    body = f"<!doctype html><title>{exc.status}</title><h1>Refused ({exc.status})</h1><p>{escape(exc.message)}</p>{hint}"
    return HTMLResponse(body, exc.status)


def install(app: FastAPI, guard: Guard) -> None:
    """Put the checks in front of every route of `app` and give each page its session's CSRF token."""
    app.state.guard = guard

    @app.middleware("http")
    async def guarded(request: Request, call_next: Any) -> Response:
        if not guard.host_ok(request.headers.get("host", "")):
            return refusal(request, Refused(421, "This studio does not answer to that host name.", ""))
        session = request.cookies.get(guard.session_cookie, "")
        new_session = not _SESSION.match(session)
        if new_session:
            session = secrets.token_urlsafe(32)
        request.state.csrf_token = guard.csrf_token(session)
        try:
            guard.check_access(request)
            if request.method not in SAFE_METHODS:
                guard.check_origin(request)
                await guard.check_token(request)
        except Refused as exc:
            return refusal(request, exc)
        response: Response = await call_next(request)
        if guard.token and request.query_params.get("token"):
            response.set_cookie(TOKEN_COOKIE, guard.token, httponly=True, samesite="strict")
        if new_session and not request.url.path.startswith("/static"):
            response.set_cookie(guard.session_cookie, session, httponly=True, samesite="strict")
        return response
