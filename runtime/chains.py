"""Actor chains (runtime.identity) in SQL.

A chain is stored as `text[]`. A batched statement takes one chain per row,
and a column of chains of different lengths is no PostgreSQL array (an array
of arrays is rectangular): each row's chain travels as a jsonb array (a
`jsonb[]` parameter, tuples encoded by the pool's JSON codec, or a `text[]`
one made by `as_json`) and `stored` turns it into the `text[]` kept.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

Chain = tuple[str, ...]


def as_json(chains: Iterable[Chain]) -> list[str]:
    """Each chain as the JSON text of its array, for a `text[]` parameter: the
    rows of a batch share a few chains, and each is encoded once."""
    encoded: dict[Chain, str] = {}
    return [encoded.get(chain) or encoded.setdefault(chain, json.dumps(chain)) for chain in chains]


def stored(jsonb: str) -> str:
    """SQL of the text[] chain the jsonb array `jsonb` holds."""
    return f"ARRAY(SELECT jsonb_array_elements_text({jsonb}))"
