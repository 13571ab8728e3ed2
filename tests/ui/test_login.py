"""The UI's login over the running stack: without a login nothing but the probes answers (a browser
is sent to the login page, API calls get 401); the local single-user mode logs in by password or by
the link make run prints; the signed cookie is HttpOnly and SameSite=Lax and ends at logout; each
user's chat is stored in the gateway under the UI's key and that user, out of other users' reach;
OIDC logins are checked against the allowed groups; every response forbids framing and sniffing."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

import httpx
import pytest
from gradio_client import Client
from omnirag_harness.ui_stack import AUTH, UiFactory

from omnirag.ui.config import UiSettings
from omnirag.ui.login import LoginConfigError, _safe_next, resolve_mode, user_id

PASSWORD = "local-test-password-0123"
EMPTY: dict[str, Any] = {"current": None, "conversations": [], "meta": {}}
SECURITY = {
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "content-security-policy": "frame-ancestors 'none'",
}


def secured(r: httpx.Response) -> bool:
    return all(r.headers.get(k) == v for k, v in SECURITY.items())


# ---- settings ------------------------------------------------------------------------------------


def settings(**kw: Any) -> UiSettings:
    return UiSettings(_env_file=None, **kw)


def test_no_login_is_refused_beyond_loopback_unless_asked_for() -> None:
    with pytest.raises(LoginConfigError) as err:
        resolve_mode(settings(host="0.0.0.0"))
    assert "UI_OIDC_ISSUER" in str(err.value) and "UI_LOCAL_PASSWORD" in str(err.value)
    assert resolve_mode(settings(host="127.0.0.1")) == "none"
    assert resolve_mode(settings(host="::1")) == "none"
    assert resolve_mode(settings(host="0.0.0.0", auth="none")) == "none"  # said explicitly
    assert resolve_mode(settings(host="0.0.0.0", local_password=PASSWORD)) == "local"
    oidc = settings(host="0.0.0.0", oidc_issuer="https://idp.example", oidc_client_id="ui")
    assert resolve_mode(oidc) == "oidc"
    with pytest.raises(LoginConfigError, match="UI_OIDC_CLIENT_ID"):
        resolve_mode(settings(host="0.0.0.0", oidc_issuer="https://idp.example"))
    with pytest.raises(LoginConfigError, match="UI_LOCAL_PASSWORD"):
        resolve_mode(settings(auth="local"))


def test_user_ids_are_issuer_scoped_and_safe_for_the_gateway() -> None:
    a, b = user_id("https://idp-a.example", "42"), user_id("https://idp-b.example", "42")
    assert a != b and a.endswith("~42")
    odd = user_id("https://idp-a.example", "CN=Bob Smith:ou/x")
    assert odd.partition("~")[2].startswith("h") and ":" not in odd and "/" not in odd
    assert len(user_id("https://idp.example", "x" * 300)) <= 128


def test_after_login_only_local_paths() -> None:
    assert _safe_next("/?a=1") == "/?a=1"
    for evil in ["https://evil.example/", "//evil.example", "/\\evil.example", "", None, "javascript:x"]:
        assert _safe_next(evil) == "/"


def test_the_conversation_list_remembers_whose_it_is() -> None:
    from omnirag.ui.conversations import Store

    raw = {"current": "ui-1", "conversations": [{"id": "ui-1", "title": "hello"}], "owner": "abc~alice"}
    assert Store.parse(raw, 10).owner == "abc~alice" and Store.parse(raw, 10).dump()["owner"] == "abc~alice"
    for bad in [None, 42, "", "x" * 129]:
        assert Store.parse(raw | {"owner": bad}, 10).owner is None


# ---- the local single-user mode over HTTP --------------------------------------------------------


@pytest.fixture(scope="module")
def local_ui(ui_factory: UiFactory) -> Iterator[str]:
    with ui_factory(auth="local", local_password=PASSWORD, local_user="tester") as base:
        yield base


def login(base: str, password: str = PASSWORD) -> httpx.Client:
    c = httpx.Client(base_url=base, timeout=30)
    r = c.post("/auth/local", data={"password": password, "next": "/"})
    assert r.status_code == 303 and r.headers["location"] == "/", r.text
    return c


def test_without_a_login_only_the_probes_answer(local_ui: str) -> None:
    page = httpx.get(local_ui + "/", headers={"Accept": "text/html"})
    assert page.status_code == 302 and page.headers["location"] == "/auth/login?next=%2F"
    assert secured(page)
    for path in ["/config", "/gradio_api/info", "/gradio_api/queue/join", "/upload"]:
        r = httpx.get(local_ui + path)
        assert r.status_code == 401 and r.json()["error"]["code"] == "login_required", path
        assert secured(r)
    r = httpx.post(local_ui + "/gradio_api/queue/join", json={"data": [], "fn_index": 0})
    assert r.status_code == 401
    assert httpx.get(local_ui + "/healthz").status_code == 200
    assert httpx.get(local_ui + "/readyz").status_code == 200
    form = httpx.get(local_ui + "/auth/login?next=%2F")
    assert form.status_code == 200 and "type=password" in form.text and secured(form)
    # A script driving the page (gradio_client) gets no further than a browser.
    with pytest.raises(Exception):  # noqa: B017 - gradio_client's own error for a 401 config
        Client(local_ui + "/", verbose=False, download_files=False, analytics_enabled=False)


def test_local_login_by_password_and_by_link_then_logout(local_ui: str) -> None:
    bad = httpx.post(local_ui + "/auth/local", data={"password": "wrong", "next": "/"})
    assert bad.status_code == 401 and "set-cookie" not in bad.headers

    c = httpx.Client(base_url=local_ui, timeout=30)
    r = c.post("/auth/local", data={"password": PASSWORD, "next": "/"})
    assert r.status_code == 303 and r.headers["location"] == "/"
    cookie = r.headers["set-cookie"].lower()
    assert cookie.startswith("omnirag_ui_session=") and "; httponly" in cookie and "; samesite=lax" in cookie
    assert c.get("/auth/me").json() == {"user": "local~tester", "name": "tester", "mode": "local"}
    page = c.get("/", headers={"Accept": "text/html"})
    assert page.status_code == 200 and secured(page)
    c.get("/auth/logout")
    assert c.get("/auth/me").status_code == 401
    assert c.get("/", headers={"Accept": "text/html"}).status_code == 302
    c.close()

    # The link make run prints: the password as a token, then straight to the chat.
    with httpx.Client(base_url=local_ui) as c:
        r = c.get("/auth/local", params={"token": PASSWORD})
        assert r.status_code == 302 and r.headers["location"] == "/"
        assert c.get("/auth/me").json()["user"] == "local~tester"
        assert c.get("/auth/local", params={"token": "nope"}).status_code == 401


def test_a_forged_cookie_is_no_login(local_ui: str) -> None:
    with httpx.Client(base_url=local_ui) as c:
        c.cookies.set("omnirag_ui_session", "eyJ1c2VyIjogeyJpZCI6ICJsb2NhbH5ldmUiLCAiYXQiOiAxfX0=.x.y")
        assert c.get("/auth/me").status_code == 401
        assert c.get("/config").status_code == 401


def test_the_gateway_stores_the_logged_in_users_chat_under_that_user(local_ui: str, gateway_url: str) -> None:
    c = login(local_ui)
    cookie = "; ".join(f"{k}={v}" for k, v in c.cookies.items())
    g = Client(
        local_ui + "/",
        verbose=False,
        download_files=False,
        analytics_enabled=False,
        headers={"Cookie": cookie},
    )
    try:
        _, _, _, _, _, store = g.predict(EMPTY, api_name="/load")
        question = {"text": "Which port does the gateway listen on?", "files": []}
        *_rest, store = g.submit(question, "docs", store, api_name="/ask").result()
    finally:
        g.close()
    session = store["current"]
    as_tester = AUTH | {"X-OmniRAG-User": "local~tester"}
    stored = httpx.get(f"{gateway_url}/v1/sessions/{session}", headers=as_tester)
    assert stored.status_code == 200, stored.text
    assert stored.json()["messages"][0]["content"] == "Which port does the gateway listen on?"
    # Not under the key alone, nor under another user of the same key.
    assert httpx.get(f"{gateway_url}/v1/sessions/{session}", headers=AUTH).status_code == 404
    other = AUTH | {"X-OmniRAG-User": "local~someone-else"}
    assert httpx.get(f"{gateway_url}/v1/sessions/{session}", headers=other).status_code == 404
    c.close()


# ---- OpenID Connect against a real provider, driven over HTTP ------------------------------------

CLIENT = {"oidc_client_id": "omnirag-ui", "oidc_client_secret": "omnirag-ui-client-secret"}


@pytest.fixture(scope="module")
def oidc_ui(ui_factory: UiFactory, oidc_issuer: str) -> Iterator[str]:
    with ui_factory(oidc_issuer=oidc_issuer, oidc_allowed_groups=["staff"], **CLIENT) as base:
        yield base


def oidc_login(ui: str, issuer: str, sub: str, claims: dict[str, Any]) -> tuple[httpx.Client, httpx.Response]:
    """The browser's part of the code flow, step by step: the UI sends us to the provider, the
    provider's form is answered as ``sub``, the provider sends us back with a code."""
    assert httpx.put(f"{issuer}/users/{quote(sub)}", json=claims).status_code == 204
    c = httpx.Client(base_url=ui, timeout=30)
    start = c.get("/auth/login", params={"next": "/?tab=1"})
    assert start.status_code == 302, start.text
    authorize = start.headers["location"]
    assert authorize.startswith(issuer + "/oauth2/authorize")
    query = parse_qs(urlsplit(authorize).query)
    # PKCE with S256, a state and a nonce, on the code flow.
    assert query["response_type"] == ["code"] and query["code_challenge_method"] == ["S256"]
    assert query["code_challenge"][0] and query["state"][0] and query["nonce"][0]
    assert query["redirect_uri"] == [ui + "/auth/callback"]
    answered = httpx.post(authorize, data={"sub": sub})
    assert answered.status_code == 302, answered.text
    back = answered.headers["location"]
    assert back.startswith(ui + "/auth/callback?")
    return c, c.get(back)


def test_oidc_login_checks_the_allowed_groups(oidc_ui: str, oidc_issuer: str) -> None:
    c, done = oidc_login(oidc_ui, oidc_issuer, "carol", {"groups": ["staff"], "email": "carol@example.com"})
    assert done.status_code == 302 and done.headers["location"] == "/?tab=1", done.text
    assert c.get("/auth/me").json()["user"] == user_id(oidc_issuer, "carol")
    assert c.get("/", headers={"Accept": "text/html"}).status_code == 200
    # The code and state were used once: the same callback again is no login.
    again = httpx.get(str(done.request.url), cookies=c.cookies)
    assert again.status_code == 401
    c.close()

    c, done = oidc_login(oidc_ui, oidc_issuer, "mallory", {"groups": ["guests"]})
    assert done.status_code == 403 and "allowed group" in done.text and secured(done)
    assert c.get("/auth/me").status_code == 401
    c.close()


def test_a_forged_state_is_refused(oidc_ui: str) -> None:
    with httpx.Client(base_url=oidc_ui) as c:
        assert c.get("/auth/login").status_code == 302
        r = c.get("/auth/callback", params={"code": "stolen-code", "state": "not-the-state"})
        assert r.status_code == 401 and c.get("/auth/me").status_code == 401


def test_a_user_cannot_read_another_users_conversation(oidc_ui: str, oidc_issuer: str) -> None:
    def page_client(c: httpx.Client) -> Client:
        cookie = "; ".join(f"{k}={v}" for k, v in c.cookies.items())
        return Client(
            oidc_ui + "/",
            verbose=False,
            download_files=False,
            analytics_enabled=False,
            headers={"Cookie": cookie},
        )

    bob_id = user_id(oidc_issuer, "bob")
    alice, _ = oidc_login(oidc_ui, oidc_issuer, "alice", {"groups": ["staff"]})
    bob, _ = oidc_login(oidc_ui, oidc_issuer, "bob", {"groups": ["staff"]})
    g = page_client(alice)
    try:
        _, _, _, _, _, store = g.predict(EMPTY, api_name="/load")
        question = {"text": "Which port does the gateway listen on?", "files": []}
        *_rest, store = g.submit(question, "docs", store, api_name="/ask").result()
        _, _, _, chat, _, _ = g.predict(store, api_name="/load")
        assert len(chat) == 2  # alice sees her conversation again
    finally:
        g.close()
    g = page_client(bob)
    try:
        # Bob on the browser alice used: her list (its titles are her questions) is not shown.
        _, _, conversations, chat, _, mine = g.predict(store, api_name="/load")
        assert chat == [] and len(conversations["choices"]) == 1 and mine["owner"] == bob_id
        assert store["current"] not in json.dumps(conversations)
        # Even a list forged to be his, holding her conversation's id, reads nothing: the gateway
        # keeps her session under her name.
        _, _, _, chat, notice, _ = g.predict(store | {"owner": bob_id}, api_name="/load")
        assert chat == [] and notice == ""
    finally:
        g.close()
    alice.close()
    bob.close()
