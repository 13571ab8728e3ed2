"""``POST /v1/chat/completions`` behind the route (``omnirag.gateway.api.chat``): RAG answers and
pass-through, streamed or not.

``handler`` checks the request and picks the model and the kind of turn: ``rag_turn`` answers from
a collection, ``passthrough`` hands the conversation to the model; ``turn`` holds what both share
(history, token counts, how a stream ends), ``request`` the request's schema and ``sse`` the events
a streamed answer is written as.
"""
