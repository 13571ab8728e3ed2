"""Clients of omnirag's services, for the other services and for anyone's code."""

from __future__ import annotations

from omnirag.core.logging import REQUEST_ID_HEADER, request_id_var


def request_id_headers() -> dict[str, str]:
    """The request being served's id, so that the service called logs under the same id."""
    rid = request_id_var.get()
    return {REQUEST_ID_HEADER: rid} if rid else {}
