"""Actor chains (runtime.identity) in SQL.

A chain is stored as `text[]`. A batched statement takes one chain per row,
and a column of chains of different lengths is no PostgreSQL array (an array
of arrays is rectangular): each row's chain travels as a jsonb array (a
`jsonb[]` parameter, tuples encoded by the pool's JSON codec) and `stored`
turns it into the `text[]` kept.
"""

from __future__ import annotations

Chain = tuple[str, ...]


def stored(jsonb: str) -> str:
    """SQL of the text[] chain the jsonb array `jsonb` holds."""
    return f"ARRAY(SELECT jsonb_array_elements_text({jsonb}))"
