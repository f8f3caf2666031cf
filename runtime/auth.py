"""Who is calling, checked, and what they may do.

Authentication is on when a JWKS is configured (`LIFECYCLE_AUTH_JWKS_FILE` or
`LIFECYCLE_AUTH_JWKS_URL`):

- a client sends `authorization: Bearer <JWT>`, verified with PyJWT against
  the JWKS (RS256, ES256 or EdDSA; `iss`, `aud`, `exp` and `nbf` with a small
  leeway); its `permissions` claim (a list) or `scope` (space-separated)
  says what it may do. A token is verified once, then its caller is kept
  until it expires;
- a service of the suite is known by its client certificate under mutual
  TLS (runtime.tls.peer_service), or else by a short-lived token it mints
  for itself with its own key (`sub` and `kid` both `service:<name>`).

Every RPC declares who may call it in its .proto (lifecycle.common.v1.Access):
a client needs the RPC's permission (`<service>:*` and `*` grant a service or
everything); an RPC that exists for the services themselves names the
services that may call it, and no client may, whatever it holds. A service
may call every other RPC.

Without a JWKS nothing is checked, as before: a call's caller is the service
its `lifecycle-service` metadata names (so that changes stay attributed) or
else anonymous.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import jwt
from google.protobuf.descriptor import ServiceDescriptor

from lifecycle.common.v1 import access_pb2
from runtime.errors import PermissionDenied, Unauthenticated
from runtime.identity import ANONYMOUS, ON_BEHALF_OF, SERVICE_PREFIX, Caller, current_caller

ALGORITHMS = ("RS256", "ES256", "EdDSA")
# A call's TLS peer (grpc's auth context), and the service a peer certificate names.
AuthContext = Callable[[], Mapping[str, Sequence[bytes]]]
PeerService = Callable[[Mapping[str, Sequence[bytes]]], str | None]
# Metadata a service names itself by; believed only while authentication is off.
SERVICE_NAME = "lifecycle-service"
AUTHORIZATION = "authorization"
# Actors a chain keeps at most (the original caller and the latest ones).
MAX_CHAIN = 16
# Verified tokens kept, and how often a JWKS may be fetched again for an unknown key.
CACHED_TOKENS = 4096
REFETCH_SECONDS = 10.0
# A service's own token lives this long, and is minted again this long before it ends.
SERVICE_TOKEN_SECONDS = 300
SERVICE_TOKEN_MARGIN_SECONDS = 60


@dataclass(frozen=True)
class AuthConfig:
    jwks_file: Path | None = None
    jwks_url: str | None = None
    issuer: str = ""
    audience: str = ""
    leeway_seconds: float = 30.0
    # This service's private key (PEM), to sign its own token where no client
    # certificate identifies it.
    service_key_file: Path | None = None

    @property
    def enabled(self) -> bool:
        return self.jwks_file is not None or self.jwks_url is not None


def grants(permissions: frozenset[str], needed: str) -> bool:
    """Whether `permissions` include `needed` ("users:read"), itself or by a wildcard."""
    service = needed.split(":", 1)[0]
    return bool({needed, f"{service}:*", "*"} & permissions)


def access_of(service: ServiceDescriptor) -> dict[str, access_pb2.Access]:
    """Each RPC's declared access, by its full method path."""
    return {
        f"/{service.full_name}/{method.name}": method.GetOptions().Extensions[access_pb2.access]
        for method in service.methods
    }


# ------------------------------------------------------------ keys


class _KeySet:
    """The JWKS the tokens are verified against: read from a file again when it
    changes, fetched from a URL again when a token names a key not seen yet (at
    most every REFETCH_SECONDS, so random key ids cost nothing)."""

    def __init__(self, config: AuthConfig) -> None:
        self._file = config.jwks_file
        self._client = jwt.PyJWKClient(config.jwks_url) if config.jwks_url else None
        self._keys: dict[str, jwt.PyJWK] = {}
        self._stamp: tuple[float, int] | None = None
        self._fetched = 0.0

    async def key(self, kid: str) -> jwt.PyJWK | None:
        if kid not in self._keys or self._file_changed():
            await self._refresh()
        return self._keys.get(kid)

    def _file_changed(self) -> bool:
        if self._file is None:
            return False
        stat = self._file.stat()
        return (stat.st_mtime, stat.st_size) != self._stamp

    async def _refresh(self) -> None:
        if self._file is not None:
            stat = self._file.stat()
            self._stamp = (stat.st_mtime, stat.st_size)
            self._keys = _keys_of(json.loads(self._file.read_text()))
            return
        if self._client is None or time.monotonic() - self._fetched < REFETCH_SECONDS:
            return
        self._fetched = time.monotonic()
        fetched = await asyncio.to_thread(self._client.get_jwk_set, refresh=True)
        self._keys = {key.key_id: key for key in fetched.keys if key.key_id}


def _keys_of(jwks: dict[str, Any]) -> dict[str, jwt.PyJWK]:
    return {key.key_id: key for key in jwt.PyJWKSet.from_dict(jwks).keys if key.key_id}


# ------------------------------------------------------------ verification


_FAILURES: tuple[tuple[type[Exception], str], ...] = (
    (jwt.ExpiredSignatureError, "the token has expired"),
    (jwt.ImmatureSignatureError, "the token is not valid yet (nbf)"),
    (jwt.InvalidAudienceError, "the token is for another audience"),
    (jwt.InvalidIssuerError, "the token is from another issuer"),
    (jwt.InvalidSignatureError, "the token's signature does not verify"),
    (jwt.InvalidAlgorithmError, "the token's algorithm is not accepted"),
)


def _why(error: jwt.PyJWTError) -> str:
    """Which check failed, never the token itself."""
    if isinstance(error, jwt.MissingRequiredClaimError):
        return f"the token lacks the {error.claim!r} claim"
    return next(
        (reason for kind, reason in _FAILURES if isinstance(error, kind)),
        "the bearer token is not a valid JWT",
    )


def _permissions(claims: Mapping[str, Any]) -> frozenset[str]:
    listed = claims.get("permissions")
    if isinstance(listed, list):
        return frozenset(item for item in listed if isinstance(item, str))
    scope = claims.get("scope")
    return frozenset(scope.split()) if isinstance(scope, str) else frozenset()


class Authenticator:
    """The caller of each call, from its certificate, its token, or (with
    authentication off) what it says of itself."""

    def __init__(self, config: AuthConfig, peer_service: PeerService | None = None) -> None:
        self._config = config
        self._keys = _KeySet(config) if config.enabled else None
        self._peer_service = peer_service
        self._verified: OrderedDict[str, tuple[Caller, float]] = OrderedDict()

    @property
    def enabled(self) -> bool:
        return self._keys is not None

    async def caller(self, metadata: Mapping[str, str], auth_context: AuthContext) -> Caller:
        """`auth_context` gives the call's TLS peer, read only under TLS."""
        chain = parse_chain(metadata.get(ON_BEHALF_OF, ""))
        peer = self._peer_service(auth_context()) if self._peer_service else None
        if peer is not None:
            return Caller(peer, peer, frozenset(), chain)
        if self._keys is None:
            named = metadata.get(SERVICE_NAME)
            return Caller(named, named, frozenset(), chain) if named else ANONYMOUS
        header = metadata.get(AUTHORIZATION, "")
        scheme, _, token = header.partition(" ")
        if not header:
            raise Unauthenticated(
                "the call carries no credentials: send authorization: Bearer <JWT>"
                " (or, for a service, a client certificate)",
                reason="CREDENTIALS_MISSING",
            )
        if scheme.lower() != "bearer" or not token:
            raise Unauthenticated(
                "the authorization metadata must be 'Bearer <JWT>'", reason="CREDENTIALS_INVALID"
            )
        caller = await self._verify(token.strip())
        if caller.service is None:
            # Only a service acts for others: a client names no one but itself.
            return caller
        return Caller(caller.subject, caller.service, caller.permissions, chain)

    async def _verify(self, token: str) -> Caller:
        known = self._verified.get(token)
        if known is not None and known[1] > time.time() - self._config.leeway_seconds:
            self._verified.move_to_end(token)
            return known[0]
        caller, expires = await self._decode(token)
        self._verified[token] = (caller, expires)
        if len(self._verified) > CACHED_TOKENS:
            self._verified.popitem(last=False)
        return caller

    async def _decode(self, token: str) -> tuple[Caller, float]:
        assert self._keys is not None
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as error:
            raise _unauthenticated(_why(error)) from error
        algorithm, kid = header.get("alg"), header.get("kid")
        if algorithm not in ALGORITHMS:
            raise _unauthenticated(f"the token's algorithm must be one of {', '.join(ALGORITHMS)}")
        if not isinstance(kid, str):
            raise _unauthenticated("the token names no key (kid)")
        key = await self._keys.key(kid)
        if key is None:
            raise _unauthenticated("the token's key (kid) is not among the trusted keys")
        config = self._config
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[algorithm],
                audience=config.audience,
                issuer=config.issuer,
                leeway=config.leeway_seconds,
                options={"require": ["exp", "iss", "aud", "sub"]},
            )
        except jwt.PyJWTError as error:
            raise _unauthenticated(_why(error)) from error
        return _caller_of(claims, kid), float(claims["exp"])


def _caller_of(claims: Mapping[str, Any], kid: str) -> Caller:
    """A service when its own key signed a token naming it (the key's id is
    `service:<name>`, or `service:<name>#<version>` while keys rotate); a
    client otherwise."""
    subject = str(claims["sub"])
    if subject.startswith(SERVICE_PREFIX) and kid.split("#", 1)[0] == subject:
        service = subject.removeprefix(SERVICE_PREFIX)
        return Caller(service, service, frozenset())
    return Caller(subject, None, _permissions(claims))


def _unauthenticated(why: str) -> Unauthenticated:
    return Unauthenticated(f"the bearer token was refused: {why}", reason="TOKEN_INVALID")


def parse_chain(text: str) -> tuple[str, ...]:
    """The actors a service acts for, from its metadata (a JSON list). A loop of
    triggers and workflows lengthens it each turn: past MAX_CHAIN the original
    caller and the latest actors are kept."""
    try:
        chain = json.loads(text) if text else []
    except ValueError:
        return ()
    if not isinstance(chain, list):
        return ()
    actors = tuple(str(actor) for actor in chain)
    if len(actors) <= MAX_CHAIN:
        return actors
    return (actors[0], *actors[len(actors) - MAX_CHAIN + 1 :])


# ------------------------------------------------------------ authorization


class Gate:
    """Authenticates each call of one service and checks it against the RPC's
    declared access."""

    def __init__(self, authenticator: Authenticator, access: Mapping[str, access_pb2.Access]):
        self._authenticator = authenticator
        self._access = access

    async def admit(
        self, method: str, metadata: Mapping[str, str], auth_context: AuthContext
    ) -> Caller:
        access = self._access.get(method)
        if access is None:
            # Health and reflection: open, as probes and tools need them.
            return ANONYMOUS
        caller = await self._authenticator.caller(metadata, auth_context)
        if self._authenticator.enabled:
            _check(caller, access, method)
        return caller


def _check(caller: Caller, access: access_pb2.Access, method: str) -> None:
    name = method.rsplit("/", 1)[-1]
    if access.services:
        if caller.service not in access.services:
            raise PermissionDenied(
                f"{name} is for the services of the suite ({', '.join(access.services)})",
                reason="SERVICES_ONLY",
                metadata={"services": ",".join(access.services)},
            )
    elif caller.service is None and not grants(caller.permissions, access.permission):
        raise PermissionDenied(
            f"{name} needs the permission {access.permission!r}",
            reason="PERMISSION_MISSING",
            metadata={"permission": access.permission},
        )


# ------------------------------------------------------------ a service's own token


class ServiceToken:
    """The token a service sends as its identity where no client certificate
    carries it: signed with its own key, kept until shortly before it ends."""

    def __init__(self, config: AuthConfig, service: str) -> None:
        self._config = config
        self._service = service
        self._key = (
            jwt.PyJWK.from_dict(_private_jwk(config.service_key_file))
            if config.service_key_file
            else None
        )
        self._token = ""
        self._renew_at = 0.0

    def header(self) -> str | None:
        """`Bearer <token>`, or None for a service given no key."""
        if self._key is None:
            return None
        now = time.time()
        if now >= self._renew_at:
            subject = f"{SERVICE_PREFIX}{self._service}"
            self._token = mint(
                self._key,
                subject,
                self._config,
                SERVICE_TOKEN_SECONDS,
                kid=self._key.key_id or subject,
            )
            self._renew_at = now + SERVICE_TOKEN_SECONDS - SERVICE_TOKEN_MARGIN_SECONDS
        return f"Bearer {self._token}"


def _private_jwk(path: Path) -> dict[str, Any]:
    """A private key file: a JWK (JSON) as `lifecycle up --auth` writes them."""
    jwk: dict[str, Any] = json.loads(path.read_text())
    return jwk


def mint(
    key: jwt.PyJWK,
    subject: str,
    config: AuthConfig,
    seconds: float,
    *,
    kid: str,
    permissions: Sequence[str] | None = None,
) -> str:
    """A token for `subject`, signed with `key`, valid `seconds` from now."""
    now = int(time.time())
    claims: dict[str, Any] = {
        "sub": subject,
        "iss": config.issuer,
        "aud": config.audience,
        "iat": now,
        "nbf": now,
        "exp": now + int(seconds),
    }
    if permissions is not None:
        claims["permissions"] = list(permissions)
    return jwt.encode(claims, key.key, algorithm=key.algorithm_name, headers={"kid": kid})


# ------------------------------------------------------------ a service's calls


def chain_for_calls(service: str) -> tuple[str, ...]:
    """The actors a call `service` makes now acts for: its own caller's chain
    while it serves a call, the chain it stored when it works for someone
    later (runtime.identity.acting_for), nobody when it works on its own."""
    caller = current_caller()
    if caller is ANONYMOUS:
        return ()
    return caller.on_behalf_of if caller.service == service else caller.actors


class CallingService(
    grpc.aio.UnaryUnaryClientInterceptor,  # type: ignore[type-arg]
    grpc.aio.UnaryStreamClientInterceptor,  # type: ignore[type-arg]
):
    """What each call of a service carries: its name, whom it acts for, and,
    where no certificate identifies it, its own token."""

    def __init__(self, service: str, token: ServiceToken) -> None:
        self._service = service
        self._token = token

    def _details(self, details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        metadata = grpc.aio.Metadata(*(details.metadata or ()))
        metadata.add(SERVICE_NAME, self._service)
        chain = chain_for_calls(self._service)
        if chain:
            metadata.add(ON_BEHALF_OF, json.dumps(chain))
        header = self._token.header()
        if header is not None:
            metadata.add(AUTHORIZATION, header)
        return grpc.aio.ClientCallDetails(
            details.method,
            details.timeout,
            metadata,
            details.credentials,
            details.wait_for_ready,
        )

    async def intercept_unary_unary(
        self, continuation: Any, client_call_details: grpc.aio.ClientCallDetails, request: Any
    ) -> Any:
        return await continuation(self._details(client_call_details), request)

    async def intercept_unary_stream(
        self, continuation: Any, client_call_details: grpc.aio.ClientCallDetails, request: Any
    ) -> Any:
        return await continuation(self._details(client_call_details), request)
