"""The chat request's handler: the request checked, the model chosen, then a RAG or a pass-through
turn."""

from __future__ import annotations

from typing import TYPE_CHECKING

from omnirag.core.errors import BadRequest, InvalidInput
from omnirag.gateway.auth import ApiKey
from omnirag.gateway.chat.passthrough import PassThroughTurn
from omnirag.gateway.chat.rag_turn import RagTurn
from omnirag.gateway.chat.request import ROLES, ChatRequest
from omnirag.gateway.chat.turn import Answer, TurnSteps
from omnirag.gateway.memory import check_session_id
from omnirag.gateway.messages import content_parts

if TYPE_CHECKING:
    from omnirag.gateway.state import GatewayState


class ChatHandler:
    """One per app (``GatewayState.chat``)."""

    def __init__(self, gw: GatewayState) -> None:
        self.gw = gw
        self.s = gw.settings
        steps = TurnSteps(gw)
        self.rag = RagTurn(gw, steps)
        self.passthrough = PassThroughTurn(gw, steps)

    def _validate(self, req: ChatRequest) -> None:
        if len(req.messages) > self.s.max_messages:
            raise InvalidInput(
                f"{len(req.messages)} messages; the limit is {self.s.max_messages}", code="too_many_messages"
            )
        for i, m in enumerate(req.messages):
            if m.get("role") not in ROLES:
                raise InvalidInput(
                    f"messages[{i}].role must be one of {sorted(ROLES)}", code="invalid_message"
                )

    async def handle(self, key: ApiKey, req: ChatRequest) -> Answer:
        self._validate(req)
        if req.session_id is not None:
            check_session_id(req.session_id)
        rag = req.rag if req.rag is not None else not req.tools
        # What goes to the model: RAG sends the last message (earlier turns as text), pass-through all.
        parts = content_parts(req.messages[-1:] if rag else req.messages)
        spec = self.gw.registry.choose(req.model, parts, key)
        if req.tools and not spec.takes("tools"):
            raise BadRequest(f"the model {spec.name!r} cannot take tools", code="tools_unsupported")
        if rag and req.tools:
            raise BadRequest(
                "tools are passed through only with rag off ('rag': false)", code="tools_need_rag_off"
            )
        if rag:
            return await self.rag.answer(key, req, spec)
        return await self.passthrough.answer(key, req, spec)
