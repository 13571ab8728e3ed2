"""The SentenceTransformer model: loading from a local path, counting tokens, one forward pass.

Everything here is synchronous and runs on the inference thread, except token counting, which the
request handlers call to know a request's cost before it is queued.
"""

from __future__ import annotations

import copy
import logging
import os
import re
from dataclasses import dataclass
from typing import Any

import numpy as np

log = logging.getLogger("omnirag.embedder.model")


@dataclass(frozen=True)
class TokenOutput:
    tokens: list[str]
    embeddings: np.ndarray  # (tokens, dimension) float32


def pick_device(device: str) -> str:
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def read_card_languages(model_path: str) -> list[str]:
    """The ``language:`` field of the model card's front matter (README.md), if any."""
    import yaml

    card = os.path.join(model_path, "README.md")
    try:
        with open(card, encoding="utf-8") as fh:
            text = fh.read(65536)
    except OSError:
        return []
    match = re.match(r"^---\s*\n(.*?)\n---\s*\n", text, re.S)
    if not match:
        return []
    try:
        meta = yaml.safe_load(match.group(1)) or {}
    except yaml.YAMLError:
        return []
    langs = meta.get("language") or []
    if isinstance(langs, str):
        langs = [langs]
    return [str(x) for x in langs if isinstance(x, str)]


class EmbeddingModel:
    """A loaded SentenceTransformer and what the service needs to know about it."""

    def __init__(
        self,
        path: str,
        name: str,
        device: str = "auto",
        threads: int = 0,
        languages: list[str] | None = None,
        max_chars: int = 65536,
    ) -> None:
        import torch
        from sentence_transformers import SentenceTransformer

        if not os.path.isdir(path):
            raise FileNotFoundError(f"embedding model directory not found: {path}")
        if threads > 0:
            torch.set_num_threads(threads)
        else:
            torch.set_num_threads(max(1, len(os.sched_getaffinity(0))))
        self.device = pick_device(device)
        self.name = name
        self.path = path
        self.model = SentenceTransformer(path, device=self.device, local_files_only=True)
        self.model.eval()
        self.tokenizer = self.model.tokenizer
        # A fast tokenizer keeps truncation/padding state in shared Rust objects: counting on another
        # thread while encode() tokenizes a batch corrupts that batch. Counting gets its own copy.
        self._counter = copy.deepcopy(self.tokenizer)  # used on the counting thread only
        self._inline_counter = copy.deepcopy(self.tokenizer)  # used on the event loop only
        self.max_seq_length = int(self.model.max_seq_length or 512)
        self.dimension = int(self.model.get_embedding_dimension() or 0)
        self.prompts: dict[str, str] = {k: v or "" for k, v in (self.model.prompts or {}).items()}
        self.default_prompt_name: str | None = self.model.default_prompt_name
        self.normalized = any(type(m).__name__ == "Normalize" for m in self.model)
        self.languages = languages if languages is not None else read_card_languages(path)
        self.max_chars = max_chars
        log.info(
            "model loaded",
            extra={
                "model": name,
                "device": self.device,
                "dimension": self.dimension,
                "max_seq_length": self.max_seq_length,
            },
        )

    def calibrate_pass_overhead(self, repeats: int = 5) -> float:
        """What one forward pass costs before its first token, in tokens of work: the batcher's
        price for cutting one more pass. Measured (passes of 1 and of 8 short texts) because it
        differs by orders of magnitude between a CPU, where Python dispatch dominates small passes,
        and a GPU, where a pass is nearly free until it is big."""
        import time

        text = "calibration sentence for the batching cost model " * 2
        tokens = self.count_tokens([text], inline=True)[0]

        def timed(n: int) -> float:
            times = []
            for _ in range(repeats):
                started = time.perf_counter()
                self.encode([text] * n)
                times.append(time.perf_counter() - started)
            return sorted(times)[len(times) // 2]

        self.encode([text])  # warm-up: first-call allocations are not the steady cost
        one, eight = timed(1), timed(8)
        per_text = max((eight - one) / 7, 1e-9)
        fixed = max(one - per_text, 0.0)
        overhead = fixed / (per_text / tokens)
        return float(min(max(overhead, 4.0), 1024.0))

    def clip(self, text: str) -> str:
        return text if len(text) <= self.max_chars else text[: self.max_chars]

    def count_tokens(self, texts: list[str], prompt: str | None = None, *, inline: bool = False) -> list[int]:
        """Tokens each text costs as the model sees it: prompt and special tokens in, truncated.

        Each tokenizer copy must be used by one thread only: ``inline`` on the event loop, the
        other on the service's counting thread."""
        if prompt:
            texts = [prompt + t for t in texts]
        tokenizer = self._inline_counter if inline else self._counter
        enc = tokenizer(
            texts,
            add_special_tokens=True,
            truncation=True,
            max_length=self.max_seq_length,
            return_attention_mask=False,
            return_token_type_ids=False,
        )
        return [len(ids) for ids in enc["input_ids"]]

    def encode(self, texts: list[str], prompt: str | None = None) -> np.ndarray:
        """One forward pass over ``texts`` (the caller sized the batch): float32 (n, dimension)."""
        out = self.model.encode(
            texts, prompt=prompt, batch_size=len(texts), convert_to_numpy=True, show_progress_bar=False
        )
        return np.asarray(out, dtype=np.float32)

    def encode_tokens(self, texts: list[str], prompt: str | None = None) -> list[TokenOutput]:
        outs: Any = self.model.encode(
            texts,
            prompt=prompt,
            batch_size=len(texts),
            output_value="token_embeddings",
            show_progress_bar=False,
        )
        full = [(prompt or "") + t for t in texts]
        ids = self.tokenizer(full, add_special_tokens=True, truncation=True, max_length=self.max_seq_length)[
            "input_ids"
        ]
        result = []
        for tok_ids, emb in zip(ids, outs, strict=True):
            arr = emb.float().cpu().numpy() if hasattr(emb, "cpu") else np.asarray(emb, np.float32)
            tokens = self.tokenizer.convert_ids_to_tokens(tok_ids)
            n = min(len(tokens), arr.shape[0])
            result.append(TokenOutput(tokens=list(tokens[:n]), embeddings=arr[:n]))
        return result
