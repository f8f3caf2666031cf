"""Page sizes and opaque page tokens (AIP-158).

A token is the keyset cursor of the last row served, encrypted and
authenticated with AES-GCM. The request's other parameters are bound in as
associated data, so a token used with different filters is refused.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import uuid
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import Any, Protocol, TypeVar

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from runtime.errors import InvalidArgument

T = TypeVar("T")
C = TypeVar("C")

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000
_NONCE_BYTES = 12


def page_size(requested: int, field: str = "page_size") -> int:
    """0 means the default; above the maximum is coerced down; negative is refused."""
    if requested < 0:
        raise InvalidArgument.field(field, "must not be negative")
    if requested == 0:
        return DEFAULT_PAGE_SIZE
    return min(requested, MAX_PAGE_SIZE)


class PagedRequest(Protocol):
    """A List request (AIP-158)."""

    @property
    def page_size(self) -> int: ...

    @property
    def page_token(self) -> str: ...


class PageTokens:
    def __init__(self, secret: str) -> None:
        self._aead = AESGCM(hashlib.sha256(secret.encode()).digest())

    def encode(self, cursor: Sequence[Any], query: Sequence[Any]) -> str:
        nonce = os.urandom(_NONCE_BYTES)
        sealed = self._aead.encrypt(nonce, json.dumps(list(cursor)).encode(), _bind(query))
        return base64.urlsafe_b64encode(nonce + sealed).decode().rstrip("=")

    def cursor(self, token: str, query: Sequence[Any], parse: Callable[[list[Any]], C]) -> C | None:
        """The keyset cursor a request's page_token holds, parsed; None on the first page.
        A token that is ours but does not hold what this list's cursor is made of
        (one forged with a leaked secret, or from an older release) is refused."""
        if not token:
            return None
        cursor = self.decode(token, query)
        try:
            return parse(cursor)
        except (ValueError, TypeError, LookupError, OverflowError) as error:
            raise InvalidArgument.field("page_token", "is malformed") from error

    async def read_page(
        self,
        request: PagedRequest,
        query: Sequence[Any],
        read: Callable[[C | None, int], Awaitable[list[T]]],
        cursor_of: Callable[[T], Sequence[Any]],
        parse: Callable[[list[Any]], C],
    ) -> tuple[list[T], str]:
        """One page of a List RPC: `read(cursor, limit)` reads up to `limit` rows
        after the cursor of the request's token (None on the first page), one more
        than the page so that the last page has no next token. `query` is what
        the token is bound to: the request's filters. Returns the page and the
        next page's token."""
        limit = page_size(request.page_size)
        cursor = self.cursor(request.page_token, query, parse)
        return self.page(await read(cursor, limit + 1), limit, query, cursor_of)

    def page(
        self,
        rows: list[T],
        limit: int,
        query: Sequence[Any],
        cursor_of: Callable[[T], Sequence[Any]],
    ) -> tuple[list[T], str]:
        """Rows read with `limit + 1`: the page, and the next page's token ("" after the last)."""
        if len(rows) <= limit:
            return rows, ""
        page = rows[:limit]
        return page, self.encode(cursor_of(page[-1]), query)

    def decode(self, token: str, query: Sequence[Any], field: str = "page_token") -> list[Any]:
        """The cursor inside `token`; INVALID_ARGUMENT if it is not ours or the query changed."""
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
            cursor = json.loads(
                self._aead.decrypt(raw[:_NONCE_BYTES], raw[_NONCE_BYTES:], _bind(query))
            )
        except (ValueError, InvalidTag) as error:
            raise InvalidArgument.field(
                field, "is not a token returned by this list with these same parameters"
            ) from error
        if not isinstance(cursor, list):
            raise InvalidArgument.field(field, "is malformed")
        return cursor


def time_and_id(at: datetime, identifier: object) -> list[Any]:
    """The most common keyset cursor: a timestamp and the row's id."""
    return [at.isoformat(), str(identifier)]


def parse_time_and_id(values: list[Any]) -> tuple[datetime, uuid.UUID]:
    return _moment(values[0]), uuid.UUID(values[1])


def parse_time_and_text(values: list[Any]) -> tuple[datetime, str]:
    return _moment(values[0]), str(values[1])


def parse_time_and_number(values: list[Any]) -> tuple[datetime, int]:
    number = int(values[1])
    if not -(2**63) <= number < 2**63:
        raise ValueError("the number of a cursor is a bigint")
    return _moment(values[0]), number


def _moment(text: str) -> datetime:
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        raise ValueError("the time of a cursor has a zone")
    return moment


def _bind(query: Sequence[Any]) -> bytes:
    return json.dumps(list(query), default=str, sort_keys=True).encode()
