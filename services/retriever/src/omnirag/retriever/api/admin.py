"""``POST /v1/admin/reload``: check every CURRENT now instead of at the next poll."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends

from omnirag.retriever.deps import get_registry
from omnirag.retriever.registry import Registry

router = APIRouter(prefix="/v1/admin", tags=["admin"])


@router.post("/reload")
async def reload(registry: Annotated[Registry, Depends(get_registry)]) -> dict[str, list[str]]:
    return await registry.refresh()
