"""An execution's tokens by scope and by element, kept beside `state.tokens`
by the interpreter (its _new_token and _remove go through it), so that what a
trigger costs grows with the tokens it touches rather than with all of them: a
multi-instance body of 1,000 instances no longer makes each instance's
completion scan the 2,000 tokens around it.

The index follows the order of `state.tokens` (a sequence number per token),
so whatever iterates it sees the tokens in the order a scan of `state.tokens`
would. It is built when first asked about an execution of SMALL tokens or
more (below that a scan costs less than keeping it), and built again if
`state.tokens` changed behind its back (another dictionary, or a size it does
not expect).
"""

from __future__ import annotations

from collections.abc import Iterable

from services.workflows.state import ExecutionState, Token

# How a completed multi-instance instance's marker token arrived (`=3`).
MARKER = "="
# Below this many tokens, and until it is built, questions scan state.tokens.
SMALL = 64


class TokenIndex:
    def __init__(self, state: ExecutionState) -> None:
        self._state = state
        self._source: dict[int, Token] | None = None  # None: not built
        self._size = 0
        self._seq = 0
        # Token numbers (to their sequence number, in state.tokens order) by scope and by element.
        self._scopes: dict[int | None, dict[int, int]] = {}
        self._elements: dict[str, dict[int, int]] = {}
        # Marker tokens by scope (the multi-instance body they are in).
        self._markers: dict[int | None, int] = {}

    # ------------------------------------------------------------ changes

    def add(self, token: Token) -> None:
        """Puts a new token in the execution's state."""
        tokens = self._state.tokens
        tokens[token.no] = token
        if self._source is tokens and len(tokens) == self._size + 1:
            self._put(token)
        else:
            self._source = None

    def pop(self, no: int) -> Token:
        """Takes a token out of the execution's state."""
        tokens = self._state.tokens
        token = tokens.pop(no)
        if self._source is tokens and len(tokens) == self._size - 1:
            self._drop(token)
        else:
            self._source = None
        return token

    # ------------------------------------------------------------ questions

    def children(self, scope: int | None) -> list[int]:
        """The tokens in `scope`, in state.tokens order (a copy)."""
        if self._scan():
            return [t.no for t in self._state.tokens.values() if t.scope == scope]
        return list(self._built()._scopes.get(scope, ()))

    def has_children(self, scope: int | None) -> bool:
        if self._scan():
            return any(t.scope == scope for t in self._state.tokens.values())
        return bool(self._built()._scopes.get(scope))

    def at(self, element: str) -> list[Token]:
        """The tokens at `element`, in state.tokens order."""
        tokens = self._state.tokens
        if self._scan():
            return [t for t in tokens.values() if t.element == element]
        return [tokens[no] for no in self._built()._elements.get(element, ())]

    def at_any(self, elements: Iterable[str]) -> list[Token]:
        """The tokens at any of `elements`, in state.tokens order."""
        tokens = self._state.tokens
        if self._scan():
            wanted = set(elements)
            return [t for t in tokens.values() if t.element in wanted]
        found: list[tuple[int, int]] = []
        for element in elements:
            found.extend((seq, no) for no, seq in self._built()._elements.get(element, {}).items())
        return [tokens[no] for _, no in sorted(found)]

    def markers(self, scope: int) -> int:
        """How many marker tokens (completed instances) are in `scope`."""
        if self._scan():
            tokens = self._state.tokens.values()
            return sum(1 for t in tokens if t.scope == scope and (t.via or "").startswith(MARKER))
        return self._built()._markers.get(scope, 0)

    # ------------------------------------------------------------ upkeep

    def _scan(self) -> bool:
        """Whether to answer by a scan: a small execution, the index not built."""
        return self._source is None and len(self._state.tokens) < SMALL

    def _built(self) -> TokenIndex:
        tokens = self._state.tokens
        if self._source is not tokens or len(tokens) != self._size:
            self._source, self._size, self._seq = tokens, 0, 0
            self._scopes, self._elements, self._markers = {}, {}, {}
            for token in tokens.values():
                self._put(token)
        return self

    def _put(self, token: Token) -> None:
        self._seq += 1
        self._size += 1
        self._scopes.setdefault(token.scope, {})[token.no] = self._seq
        self._elements.setdefault(token.element, {})[token.no] = self._seq
        if (token.via or "").startswith(MARKER):
            self._markers[token.scope] = self._markers.get(token.scope, 0) + 1

    def _drop(self, token: Token) -> None:
        self._size -= 1
        siblings = self._scopes[token.scope]
        del siblings[token.no]
        if not siblings:
            del self._scopes[token.scope]
        same = self._elements[token.element]
        del same[token.no]
        if not same:
            del self._elements[token.element]
        if (token.via or "").startswith(MARKER):
            self._markers[token.scope] -= 1
