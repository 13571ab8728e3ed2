"""Login: who is using the UI, so that the gateway can scope and limit each person.

Three modes (``UI_AUTH``):

- ``oidc``: the operator's identity provider, with the authorization code flow, PKCE (S256), state
  and nonce (authlib keeps them in the session cookie between the redirect and the callback and
  checks them there), as Grafana and Open WebUI do. Optional allow-lists of groups and emails.
- ``local``: one user and a password (``UI_LOCAL_PASSWORD``), for ``make run``; a login link that
  carries the password (printed by ``make run``) logs in with one click.
- ``none``: no login, every visitor acts as the UI's key; refused unless the UI listens on loopback.

The login lives in a signed cookie (Starlette's session middleware: itsdangerous, HttpOnly,
SameSite=Lax, Secure behind HTTPS) that also records when the user logged in, so a login ends after
``session_max_age`` however often the cookie is re-sent. ``LoginGate`` sends a browser without one to
the login page and answers every other request 401; the Gradio handlers see the user as
``gr.Request.username`` (through ``auth_dependency``) and the gateway client names it in the
``X-OmniRAG-User`` header, with the UI's own key.
"""

from __future__ import annotations

import hashlib
import hmac
import html
import ipaddress
import logging
import re
import secrets
import time
from dataclasses import dataclass
from typing import Annotated, Any, Literal
from urllib.parse import quote, urlsplit

from fastapi import APIRouter, FastAPI, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from starlette.middleware.sessions import SessionMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send

from omnirag.core.app import SecurityHeadersMiddleware
from omnirag.core.errors import error_body
from omnirag.core.responses import JSONResponse
from omnirag.ui.config import UiSettings
from omnirag.ui.texts import lang_of, t

log = logging.getLogger("omnirag.ui.login")

Mode = Literal["oidc", "local", "none"]
COOKIE = "omnirag_ui_session"
# Reachable without a login: probes, metrics and the login itself.
OPEN_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
AUTH_PREFIX = "/auth/"
# What the gateway accepts in X-OmniRAG-User (omnirag.gateway.auth.USER_ID), minus the '~' that
# separates the issuer's tag from the user.
_SAFE = re.compile(r"^[A-Za-z0-9._@+=-]{1,100}$")
_MAX_FORM_BYTES = 4096


class LoginConfigError(ValueError):
    """The login settings cannot work; the message says which setting to give."""


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def resolve_mode(settings: UiSettings) -> Mode:
    """The login mode the settings ask for, or a ``LoginConfigError`` that says what is missing."""
    mode = settings.auth
    if mode == "auto":
        if settings.oidc_issuer or settings.oidc_discovery_url:
            mode = "oidc"
        elif settings.local_password is not None:
            mode = "local"
        elif _loopback(settings.host):
            mode = "none"
        else:
            raise LoginConfigError(
                f"the UI listens on {settings.host}, beyond loopback, and no login is configured: set "
                "UI_OIDC_ISSUER and UI_OIDC_CLIENT_ID (the identity provider), or UI_LOCAL_PASSWORD "
                "(one local user); UI_AUTH=none only behind an authenticating proxy of your own"
            )
    if mode == "oidc" and not (settings.oidc_issuer or settings.oidc_discovery_url):
        raise LoginConfigError("UI_AUTH=oidc needs UI_OIDC_ISSUER (or UI_OIDC_DISCOVERY_URL)")
    if mode == "oidc" and not settings.oidc_client_id:
        raise LoginConfigError("UI_AUTH=oidc needs UI_OIDC_CLIENT_ID")
    if mode == "local" and not (settings.local_password and settings.local_password.get_secret_value()):
        raise LoginConfigError("UI_AUTH=local needs UI_LOCAL_PASSWORD (make run writes one to .env)")
    if mode == "none" and not _loopback(settings.host) and settings.auth != "none":
        raise LoginConfigError("no login beyond loopback must be asked for explicitly: UI_AUTH=none")
    return mode


def user_id(issuer: str, value: str) -> str:
    """The name the gateway knows a user by: a short tag of the issuer (two providers may both have a
    user "42"), '~', and the claim's value when it is short and plain, else its digest."""
    tag = hashlib.sha256(issuer.encode("utf-8")).hexdigest()[:8]
    if not _SAFE.fullmatch(value):
        value = "h" + hashlib.sha256(value.encode("utf-8")).hexdigest()[:40]
    return f"{tag}~{value}"


def display_name(uid: str) -> str:
    return uid.partition("~")[2] or uid


@dataclass(frozen=True)
class Login:
    """The app's login: its mode and what the gateway client needs to know about it."""

    mode: Mode

    @property
    def required(self) -> bool:
        return self.mode != "none"


def session_user(session: Any, max_age: int) -> str | None:
    """The logged-in user's id, or None when there is none or the login is older than max_age."""
    user = session.get("user") if isinstance(session, dict) else None
    if not isinstance(user, dict):
        return None
    uid, at = user.get("id"), user.get("at")
    if not isinstance(uid, str) or not isinstance(at, int | float) or time.time() - at > max_age:
        return None
    return uid


def _safe_next(value: str | None) -> str:
    """A local path to go back to after the login; anything else (another site) becomes '/'."""
    if not value or not value.startswith("/") or value.startswith(("//", "/\\")):
        return "/"
    parts = urlsplit(value)
    if parts.scheme or parts.netloc:
        return "/"
    return value[:2000]


class LoginGate:
    """Everything but probes, metrics and ``/auth/`` needs a login: a browser opening a page is sent
    to the login page, every other request (the page's API calls) gets 401."""

    def __init__(self, app: ASGIApp, *, max_age: int) -> None:
        self.app = app
        self.max_age = max_age

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        if path in OPEN_PATHS or path.startswith(AUTH_PREFIX):
            await self.app(scope, receive, send)
            return
        if session_user(scope.get("session"), self.max_age) is not None:
            await self.app(scope, receive, send)
            return
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 4401})
            return
        headers = dict(scope.get("headers") or [])
        accept = headers.get(b"accept", b"").decode("latin-1")
        response: Response
        if scope.get("method") == "GET" and "text/html" in accept:
            query = scope.get("query_string", b"").decode("latin-1")
            target = path + ("?" + query if query else "")
            response = RedirectResponse("/auth/login?next=" + quote(target, safe=""), status_code=302)
        else:
            response = JSONResponse(
                error_body("login_required", "log in to the UI first: open /auth/login"), status_code=401
            )
        await response(scope, receive, send)


def _page(lang: str, title: str, body: str, status: int = 200) -> HTMLResponse:
    # A plain page of our own (no Gradio assets: they are behind the login).
    return HTMLResponse(
        f"""<!doctype html><html lang="{lang}"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1"><title>{html.escape(title)}</title>
<style>body{{font-family:system-ui,sans-serif;max-width:26rem;margin:12vh auto;padding:0 1rem}}
input,button{{font-size:1rem;padding:.5rem .8rem;margin:.3rem 0}}
input{{width:100%;box-sizing:border-box}}
.error{{color:#8a1c12;background:#fdecea;border:1px solid #f5b7b1;padding:.5rem;border-radius:6px}}</style>
</head><body><h1>{html.escape(title)}</h1>{body}</body></html>""",
        status_code=status,
        headers={"Cache-Control": "no-store"},
    )


def _lang(request: Request) -> str:
    return lang_of(request.headers.get("accept-language"))


def install(app: FastAPI, settings: UiSettings) -> Login:
    """Add the login to ``app``: its routes, the gate and the signed session cookie."""
    mode = resolve_mode(settings)
    login = Login(mode)
    if mode == "none":
        log.warning("no login: every visitor acts with the UI's gateway key (UI_AUTH=none on loopback)")
        return login

    secret = settings.session_secret.get_secret_value() if settings.session_secret else ""
    if not secret:
        secret = secrets.token_urlsafe(32)
        log.warning(
            "UI_SESSION_SECRET is not set: a random one signs logins, so a restart logs everyone out "
            "and replicas do not share logins"
        )
    public = (settings.public_url or "").rstrip("/")
    max_age = settings.session_max_age
    router = APIRouter(prefix="/auth", tags=["login"], include_in_schema=False)
    oauth_client: Any = None
    issuer = settings.oidc_issuer or settings.oidc_discovery_url or ""

    if mode == "oidc":
        from authlib.integrations.starlette_client import OAuth

        oauth = OAuth()
        discovery = settings.oidc_discovery_url or (issuer.rstrip("/") + "/.well-known/openid-configuration")
        oauth_client = oauth.register(
            name="oidc",
            server_metadata_url=discovery,
            client_id=settings.oidc_client_id,
            client_secret=(
                settings.oidc_client_secret.get_secret_value() if settings.oidc_client_secret else None
            ),
            client_kwargs={
                "scope": settings.oidc_scopes,
                "code_challenge_method": "S256",
                "timeout": settings.request_timeout,
            },
        )

    def log_in(request: Request, uid: str) -> None:
        # A fresh session: nothing from before the login (authlib's state) is carried over.
        request.session.clear()
        request.session["user"] = {"id": uid, "at": int(time.time())}

    def callback_url(request: Request) -> str:
        return public + "/auth/callback" if public else str(request.url_for("auth_callback"))

    def local_form(lang: str, next_path: str, error: str = "", status: int = 200) -> HTMLResponse:
        problem = f'<p class="error" role="alert">{html.escape(error)}</p>' if error else ""
        body = (
            f"{problem}<form method=post action=/auth/local>"
            f'<input type=hidden name=next value="{html.escape(next_path)}">'
            f"<label>{html.escape(t(lang, 'login_password'))}"
            "<input type=password name=password autocomplete=current-password autofocus required>"
            f"</label><button type=submit>{html.escape(t(lang, 'login_button'))}</button></form>"
        )
        return _page(lang, t(lang, "login_title"), body, status)

    def refused(lang: str, reason: str, status: int = 403) -> HTMLResponse:
        body = (
            f'<p class="error" role="alert">{html.escape(reason)}</p>'
            f'<p><a href="/auth/login">{html.escape(t(lang, "login_again"))}</a></p>'
        )
        return _page(lang, t(lang, "login_title"), body, status)

    @router.get("/login", name="auth_login")
    async def login_page(
        request: Request, next_path: Annotated[str | None, Query(alias="next", max_length=2000)] = None
    ) -> Response:
        target = _safe_next(next_path)
        lang = _lang(request)
        if session_user(request.session, max_age) is not None:
            return RedirectResponse(target, status_code=302)
        if mode == "local":
            return local_form(lang, target)
        request.session.clear()
        request.session["next"] = target
        try:
            response: Response = await oauth_client.authorize_redirect(request, callback_url(request))
        except Exception as exc:  # discovery failed: the provider is down or misnamed
            log.warning("identity provider unreachable", extra={"error": f"{type(exc).__name__}"})
            return refused(lang, t(lang, "login_provider_down"), 503)
        return response

    @router.get("/callback", name="auth_callback")
    async def callback(request: Request) -> Response:
        from authlib.integrations.starlette_client import OAuthError

        lang = _lang(request)
        target = _safe_next(request.session.get("next"))
        try:
            token = await oauth_client.authorize_access_token(request)
        except OAuthError as exc:
            # A wrong state or nonce, a refused consent, a code used twice: the flow starts again.
            log.info("login refused by the provider or the checks", extra={"error": exc.error})
            return refused(lang, t(lang, "login_failed_oidc", error=exc.error or "error"), 401)
        except Exception as exc:
            log.warning("login failed", extra={"error": f"{type(exc).__name__}"})
            return refused(lang, t(lang, "login_provider_down"), 503)
        claims: dict[str, Any] = dict(token.get("userinfo") or {})
        wanted = [settings.oidc_user_claim]
        if settings.oidc_allowed_groups:
            wanted.append(settings.oidc_groups_claim)
        if settings.oidc_allowed_emails:
            wanted.append("email")
        if any(c not in claims for c in wanted):
            # Some providers put groups or email only in the userinfo answer, not the ID token.
            try:
                extra = await oauth_client.userinfo(token=token)
                claims = dict(extra) | claims  # the signed ID token's claims win
            except Exception as exc:
                log.info("userinfo unavailable", extra={"error": f"{type(exc).__name__}"})
        reason = _not_allowed(settings, claims)
        value = claims.get(settings.oidc_user_claim)
        if reason is None and (not isinstance(value, str | int) or not str(value)):
            reason = f"the identity provider gave no {settings.oidc_user_claim!r} claim"
        if reason is not None:
            request.session.clear()
            log.info("login refused", extra={"reason": reason})
            return refused(lang, t(lang, "login_forbidden", reason=reason))
        iss = str(claims.get("iss") or issuer)
        log_in(request, user_id(iss, str(value)))
        return RedirectResponse(target, status_code=302)

    def password_ok(given: str) -> bool:
        expected = settings.local_password.get_secret_value() if settings.local_password else ""
        return bool(expected) and hmac.compare_digest(given.encode("utf-8"), expected.encode("utf-8"))

    @router.post("/local")
    async def local_login(request: Request) -> Response:
        lang = _lang(request)
        if mode != "local":
            return refused(lang, t(lang, "login_not_local"), 404)
        length = request.headers.get("content-length", "")
        if not length.isdigit() or int(length) > _MAX_FORM_BYTES:
            return local_form(lang, "/", t(lang, "login_wrong_password"), 400)
        form = await request.form(max_files=0, max_fields=4)
        target = _safe_next(str(form.get("next") or "/"))
        if not password_ok(str(form.get("password") or "")):
            log.info("local login refused: wrong password")
            return local_form(lang, target, t(lang, "login_wrong_password"), 401)
        log_in(request, "local~" + settings.local_user)
        return RedirectResponse(target, status_code=303)

    @router.get("/local")
    async def local_link(request: Request, token: Annotated[str, Query(max_length=1000)] = "") -> Response:
        """The login link make run prints: the password in the URL, then straight to the chat (the
        redirect drops it from the address bar)."""
        lang = _lang(request)
        if mode != "local":
            return refused(lang, t(lang, "login_not_local"), 404)
        if not password_ok(token):
            log.info("local login link refused")
            return local_form(lang, "/", t(lang, "login_wrong_password"), 401)
        log_in(request, "local~" + settings.local_user)
        return RedirectResponse("/", status_code=302)

    @router.api_route("/logout", methods=["GET", "POST"])
    async def logout(request: Request) -> Response:
        request.session.clear()
        lang = _lang(request)
        body = (
            f"<p>{html.escape(t(lang, 'logged_out'))}</p>"
            f'<p><a href="/auth/login">{html.escape(t(lang, "login_again"))}</a></p>'
        )
        return _page(lang, t(lang, "login_title"), body)

    @router.get("/me")
    async def me(request: Request) -> JSONResponse:
        uid = session_user(request.session, max_age)
        if uid is None:
            return JSONResponse(error_body("login_required", "not logged in"), status_code=401)
        return JSONResponse({"user": uid, "name": display_name(uid), "mode": mode})

    app.include_router(router)
    app.add_middleware(LoginGate, max_age=max_age)
    https = public.startswith("https://")
    app.add_middleware(
        SessionMiddleware,
        secret_key=secret,
        session_cookie=COOKIE,
        max_age=max_age,
        same_site="lax",
        https_only=https,
    )
    # Outermost again, so the gate's redirects and 401s carry the headers too (idempotent).
    app.add_middleware(SecurityHeadersMiddleware)
    return login


def _not_allowed(settings: UiSettings, claims: dict[str, Any]) -> str | None:
    """Why these claims may not log in, or None."""
    if settings.oidc_allowed_groups:
        groups = claims.get(settings.oidc_groups_claim) or []
        if isinstance(groups, str):
            groups = [groups]
        if not set(map(str, groups)) & set(settings.oidc_allowed_groups):
            return "not a member of an allowed group"
    if settings.oidc_allowed_emails:
        email = str(claims.get("email") or "").lower()
        if not email or claims.get("email_verified") is False:
            return "no verified email"
        allowed = {e.lower() for e in settings.oidc_allowed_emails}
        if email not in allowed and "@" + email.rpartition("@")[2] not in allowed:
            return "this email may not log in"
    return None


def auth_dependency(max_age: int) -> Any:
    """For ``gr.mount_gradio_app``: the user Gradio hands to every handler as ``request.username``."""

    def current(request: Request) -> str | None:
        return session_user(request.scope.get("session"), max_age)

    return current
