"""The embedder's additions to the shared embedding schemas: int8 / uint8 ranges.

``ranges`` is sentence-transformers' own argument (``quantize_embeddings(..., ranges=...)``): a
(2, dimension) array of per-dimension minimum and maximum. These classes extend the shared ones in
omnirag.core.schemas.embeddings, so every existing caller's requests and parsers keep working.
"""

from __future__ import annotations

import math
from typing import Annotated

from pydantic import BaseModel, Field, field_validator

from omnirag.core.schemas.embeddings import EmbedderInfo, EmbedRequest, EmbedResponse

# Bounds the request before the model is consulted: no served model is wider than this.
MAX_RANGES_DIMENSION = 16384

RangeRow = Annotated[list[float], Field(min_length=1, max_length=MAX_RANGES_DIMENSION)]


class EmbedRequestWithRanges(EmbedRequest):
    ranges: list[RangeRow] | None = Field(
        None,
        min_length=2,
        max_length=2,
        description="int8 / uint8 only: [[min per dimension], [max per dimension]], as "
        "sentence-transformers' quantize_embeddings(ranges=...), applied in float32. Each row has the "
        "output dimension (truncate_dim, else the model's), or the model's full dimension, which is then "
        "truncated like the vectors. Values outside go to the end buckets; a dimension with max == min is "
        "quantized with a step of 1, as the library does. Unset: the ranges "
        "calibrated at start-up (see /v1/info), so a text's bytes never depend on the rest of its request.",
    )

    @field_validator("ranges")
    @classmethod
    def _check_ranges(cls, value: list[list[float]] | None) -> list[list[float]] | None:
        if value is None:
            return value
        low, high = value
        if len(low) != len(high):
            raise ValueError(f"ranges must be 2 rows of one length; got {len(low)} and {len(high)} values")
        for row_name, row in (("min", low), ("max", high)):
            bad = next((i for i, x in enumerate(row) if not math.isfinite(x)), None)
            if bad is not None:
                raise ValueError(f"ranges {row_name}[{bad}] is not a finite number")
        bad = next((i for i, (lo, hi) in enumerate(zip(low, high, strict=True)) if hi < lo), None)
        if bad is not None:
            raise ValueError(f"ranges max[{bad}]={high[bad]} is below min[{bad}]={low[bad]}")
        return value


class EmbedResponseWithRanges(EmbedResponse):
    ranges: list[list[float]] | None = Field(
        None,
        description="int8 / uint8: the [[min], [max]] the vectors were quantized with (send them back as "
        "`ranges` to quantize later texts the same way, whichever server answers).",
    )


class QuantizationInfo(BaseModel):
    method: str = Field(description="fixed-calibration: ranges are computed once per model at start-up.")
    calibration_texts: int = Field(description="Texts in the calibration set that ships with the embedder.")
    calibration_sha256: str = Field(description="sha256 of the calibration texts.")
    ranges: list[list[float]] = Field(
        description="[[min], [max]] per dimension of the vectors as the model gives them (normalize false)."
    )
    normalized_ranges: list[list[float]] = Field(
        description="The same for normalize true. With truncate_dim, ranges come from the calibration "
        "vectors truncated (and normalized) the same way; /v1/embed returns the ranges it used."
    )


class EmbedderInfoWithQuantization(EmbedderInfo):
    quantization: QuantizationInfo | None = None
