"""``create_app(settings)``: the UI's FastAPI app, with the Gradio page mounted at ``/``.

The service shell (``/healthz``, ``/readyz``, ``/metrics``, request ids, body limits) is the same as
every other service's; ``/readyz`` is ready when the gateway answers its ``/healthz``. Everything
else is behind the login (omnirag.ui.login); ``create_app`` raises ``LoginConfigError`` when the
login settings cannot work (no login configured on an address beyond loopback).
"""

from __future__ import annotations

import os

# Before gradio is imported: no telemetry from a service that may run on a private network.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import gradio as gr
from fastapi import FastAPI

from omnirag.core.app import create_service_app
from omnirag.ui.config import UiSettings
from omnirag.ui.gateway import GatewayClient
from omnirag.ui.login import auth_dependency, install
from omnirag.ui.metrics import UiMetrics
from omnirag.ui.page import CSS, build


def create_app(settings: UiSettings | None = None) -> FastAPI:
    settings = settings or UiSettings()
    client = GatewayClient(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await client.open()
        app.state.gateway = client
        app.state.readiness.add_probe("gateway", client.reachable)
        try:
            yield
        finally:
            await client.close()

    app = create_service_app(
        "ui",
        settings,
        lifespan=lifespan,
        title="omnirag ui",
        description="A multimodal chat over the gateway's public API.",
    )
    # Before Gradio is mounted: its page and API sit behind the login gate.
    login = install(app, settings)
    blocks, i18n = build(settings, client, UiMetrics(app.state.metrics))
    return gr.mount_gradio_app(
        app,
        blocks,
        path="/",
        i18n=i18n,
        css=CSS,
        theme=gr.themes.Soft(),
        footer_links=[],
        run_history=False,
        show_error=False,  # handlers turn gateway errors into sentences; nothing else reaches the page
        max_file_size=max(settings.max_upload_bytes, settings.max_image_bytes),
        ssr_mode=False,
        mcp_server=False,
        # Who is logged in, for every handler (gr.Request.username) and for Gradio's own checks.
        auth_dependency=auth_dependency(settings.session_max_age) if login.required else None,
    )
