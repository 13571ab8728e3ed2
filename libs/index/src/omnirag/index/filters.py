"""Metadata filters: equality, ``$in``, ``$ne`` (and ``$eq``, ``$nin``), compiled to SQL over the
docstore's JSON metadata so that the search itself can be restricted to the matching ids.

    {"source": "guide.md"}                      equality
    {"kb": {"$in": ["docs", "faq"]}}            one of
    {"lang": {"$ne": "zh"}}                     not equal (documents without the field match)
Several fields are combined with AND.
"""

from __future__ import annotations

import re
from typing import Any

from omnirag.core.errors import InvalidInput

_FIELD = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]{0,63}$")
MAX_FIELDS = 16
# Metadata fields the docstore also keeps in an indexed column of their own.
INDEXED_COLUMNS = frozenset({"source"})
MAX_VALUES = 1024
Scalar = str | int | float | bool


class FilterError(InvalidInput):
    code = "invalid_filter"


def _scalar(value: Any, where: str) -> Scalar:
    if isinstance(value, bool):
        return int(value)  # json_extract gives 1/0 for true/false
    if isinstance(value, (str, int, float)):
        if isinstance(value, str) and len(value) > 4096:
            raise FilterError(f"{where}: value longer than 4096 characters")
        return value
    raise FilterError(f"{where}: values must be strings, numbers or booleans, not {type(value).__name__}")


def compile_filter(spec: dict[str, Any] | None) -> tuple[str, list[Scalar]]:
    """SQL condition and parameters for ``spec`` (``"1"`` when there is no filter)."""
    if not spec:
        return "1", []
    if not isinstance(spec, dict):
        raise FilterError("filter must be an object of field: condition")
    if len(spec) > MAX_FIELDS:
        raise FilterError(f"filter has {len(spec)} fields; at most {MAX_FIELDS}")
    clauses: list[str] = []
    params: list[Scalar] = []
    for field, cond in spec.items():
        if not isinstance(field, str) or not _FIELD.match(field):
            raise FilterError(f"filter field {field!r} is not a plain metadata name")
        if field in INDEXED_COLUMNS:
            # A real, indexed column: a 1% filter on 100k documents is an index lookup, not a scan.
            expr, arg = field, []
        else:
            expr, arg = "json_extract(metadata, ?)", [f'$."{field}"']
        if isinstance(cond, dict):
            if len(cond) != 1:
                raise FilterError(f"filter.{field}: give exactly one operator ($eq, $ne, $in, $nin)")
            ((op, value),) = cond.items()
            if op in ("$eq", "$ne"):
                v = _scalar(value, f"filter.{field}.{op}")
                if op == "$eq":
                    clauses.append(f"{expr} = ?")
                    params.extend([*arg, v])
                else:
                    clauses.append(f"({expr} IS NULL OR {expr} != ?)")
                    params.extend([*arg, *arg, v])
            elif op in ("$in", "$nin"):
                if not isinstance(value, list) or not value:
                    raise FilterError(f"filter.{field}.{op} must be a non-empty list")
                if len(value) > MAX_VALUES:
                    raise FilterError(f"filter.{field}.{op} has more than {MAX_VALUES} values")
                values = [_scalar(v, f"filter.{field}.{op}") for v in value]
                marks = ",".join("?" * len(values))
                if op == "$in":
                    clauses.append(f"{expr} IN ({marks})")
                    params.extend([*arg, *values])
                else:
                    clauses.append(f"({expr} IS NULL OR {expr} NOT IN ({marks}))")
                    params.extend([*arg, *arg, *values])
            else:
                raise FilterError(f"filter.{field}: unknown operator {op!r}; use $eq, $ne, $in or $nin")
        else:
            clauses.append(f"{expr} = ?")
            params.extend([*arg, _scalar(cond, f"filter.{field}")])
    return " AND ".join(clauses), params
