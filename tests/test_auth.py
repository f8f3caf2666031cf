"""Authentication and authorization with real tokens, signed by keys the tests
make, against the five services on loopback with authentication on: every
refusal says which check failed (never the token), a permission on every RPC,
the services' own RPCs closed to clients, and the services calling each other
with their own tokens."""

from __future__ import annotations

import asyncio
import http.server
import json
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from google.protobuf import descriptor_pool, message_factory
from grpc_health.v1 import health_pb2, health_pb2_grpc
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

from lifecycle.common.v1 import stage_pb2
from lifecycle.metrics.v1 import metrics_pb2, metrics_pb2_grpc
from lifecycle.segments.v1 import segments_pb2, segments_pb2_grpc
from lifecycle.triggers.v1 import triggers_pb2, triggers_pb2_grpc
from lifecycle.users.v1 import users_pb2, users_pb2_grpc
from lifecycle.workflows.v1 import workflows_pb2, workflows_pb2_grpc
from runtime import auth as auth_module
from runtime.auth import MAX_CHAIN, access_of, parse_chain
from runtime.clients import GRPC_SERVICES
from runtime.config import ConfigError, load_service_config
from runtime.structs import dict_to_struct
from suite.certificates import CLIENT, local_certificates
from suite.keys import AUDIENCE, ISSUER, LocalAuth, local_auth
from suite.registry import DEFINITIONS
from tests.support import (
    ScratchDatabase,
    channel_to,
    error_info,
    eventually,
    free_port,
    rpc_error,
    running,
    service_env,
    whole_suite,
)
from tests.workflows.bpmn_docs import end, linear, service, signal_event, start, with_signal

UNAUTHENTICATED = grpc.StatusCode.UNAUTHENTICATED
DENIED = grpc.StatusCode.PERMISSION_DENIED


@dataclass
class Secured:
    auth: LocalAuth
    channels: dict[str, grpc.aio.Channel]

    def token(self, *permissions: str, subject: str = "alice") -> str:
        return self.auth.token(subject, list(permissions), 600)

    def users(self) -> Any:
        return users_pb2_grpc.UserServiceStub(self.channels["users"])

    def stub(self, service: str) -> Any:
        stubs = {
            "users": users_pb2_grpc.UserServiceStub,
            "workflows": workflows_pb2_grpc.WorkflowServiceStub,
            "segments": segments_pb2_grpc.SegmentServiceStub,
            "triggers": triggers_pb2_grpc.TriggerServiceStub,
            "metrics": metrics_pb2_grpc.MetricsServiceStub,
        }
        return stubs[service](self.channels[service])


def bearer(token: str) -> tuple[tuple[str, str]]:
    return (("authorization", f"Bearer {token}"),)


def no_settings(service: str) -> dict[str, str]:
    return {}


@pytest.fixture(scope="module", params=["service tokens", "mutual tls"])
async def secured(
    request: pytest.FixtureRequest, own_database: ScratchDatabase, tmp_path_factory: Any
) -> AsyncIterator[Secured]:
    """The five services with authentication on, in two ways: plaintext, the
    services calling each other with their own tokens; and under mutual TLS,
    the services known by their certificates alone (they hold no key), the
    client presenting the local client certificate besides its token."""
    folder = tmp_path_factory.mktemp("data")
    auth = local_auth(folder)
    settings = auth.environment()
    own: Callable[[str], dict[str, str]] = no_settings
    client: dict[str, str] = {}
    if request.param == "mutual tls":
        settings = {k: v for k, v in settings.items() if not k.endswith("_AUTH_KEY_FILE")}
        certificates = local_certificates(folder / "tls")
        own, client = certificates.environment, certificates.environment(CLIENT)
    env = service_env(
        own_database,
        {name: free_port() for name in DEFINITIONS},
        LIFECYCLE_LOG_LEVEL="ERROR",
        LIFECYCLE_WORKFLOWS_POLL_SECONDS="0.2",
        LIFECYCLE_METRICS_ROLLUP_INTERVAL_SECONDS="0",
        **settings,
    )
    async with whole_suite(env, own, client) as channels:
        yield Secured(auth, channels)


def signed(key: Any, kid: str, algorithm: str = "ES256", **claims: Any) -> str:
    now = int(time.time())
    body = {"sub": "mallory", "iss": ISSUER, "aud": AUDIENCE, "exp": now + 600, **claims}
    return jwt.encode(body, key, algorithm=algorithm, headers={"kid": kid})


def people_key(auth: LocalAuth) -> Any:
    return jwt.PyJWK.from_dict(json.loads(auth.key_file("people").read_text())).key


def get_user(secured: Secured, token: str | None) -> Awaitable[Any]:
    metadata = bearer(token) if token is not None else ()
    request = users_pb2.GetUserRequest(user_id=str(uuid.uuid4()))
    reply: Awaitable[Any] = secured.users().GetUser(request, metadata=metadata)
    return reply


# ------------------------------------------------------------ who is calling


async def test_a_call_without_credentials_is_unauthenticated(secured: Secured) -> None:
    error = await rpc_error(get_user(secured, None))
    assert error.code() == UNAUTHENTICATED
    assert error_info(error).reason == "CREDENTIALS_MISSING"
    assert "authorization: Bearer" in (error.details() or "")


async def test_health_needs_no_credentials(secured: Secured) -> None:
    reply = await health_pb2_grpc.HealthStub(secured.channels["users"]).Check(
        health_pb2.HealthCheckRequest(service="")
    )
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


def refusals(auth: LocalAuth) -> list[tuple[str, str, str]]:
    """(case, token, what the refusal says): each fails one check."""
    key = people_key(auth)
    now = int(time.time())
    stranger = ec.generate_private_key(ec.SECP256R1())
    return [
        ("not a JWT", "not-a-token", "not a valid JWT"),
        ("expired", signed(key, "people", exp=now - 3600), "has expired"),
        ("not yet valid", signed(key, "people", nbf=now + 3600), "not valid yet"),
        ("other audience", signed(key, "people", aud="someone-else"), "another audience"),
        ("other issuer", signed(key, "people", iss="https://evil.example"), "another issuer"),
        (
            "no subject",
            jwt.encode(
                {"iss": ISSUER, "aud": AUDIENCE, "exp": now + 60},
                key,
                algorithm="ES256",
                headers={"kid": "people"},
            ),
            "'sub' claim",
        ),
        ("unknown key", signed(stranger, "stranger"), "not among the trusted keys"),
        ("forged with a trusted kid", signed(stranger, "people"), "signature does not verify"),
        (
            "symmetric",
            jwt.encode(
                {"sub": "x"},
                "a-symmetric-secret-of-32-bytes!!",
                algorithm="HS256",
                headers={"kid": "people"},
            ),
            "algorithm must be one of",
        ),
    ]


async def test_every_failed_check_is_unauthenticated_and_never_echoes_the_token(
    secured: Secured,
) -> None:
    for case, token, said in refusals(secured.auth):
        error = await rpc_error(get_user(secured, token))
        details = error.details() or ""
        assert error.code() == UNAUTHENTICATED, case
        assert said in details, (case, details)
        assert token not in details and token[-20:] not in details, case


async def test_a_malformed_authorization_header_is_unauthenticated(secured: Secured) -> None:
    request = users_pb2.GetUserRequest(user_id=str(uuid.uuid4()))
    error = await rpc_error(
        secured.users().GetUser(request, metadata=(("authorization", "Basic dXNlcg=="),))
    )
    assert error.code() == UNAUTHENTICATED
    assert error_info(error).reason == "CREDENTIALS_INVALID"


async def test_keys_added_to_the_jwks_file_are_trusted_without_a_restart(
    secured: Secured,
) -> None:
    jwks = json.loads(secured.auth.jwks_file.read_text())
    rotated = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public = RSAAlgorithm.to_jwk(rotated.public_key(), as_dict=True)
    jwks["keys"].append({**public, "kid": "rotated", "alg": "RS256", "use": "sig"})
    secured.auth.jwks_file.write_text(json.dumps(jwks))
    token = signed(rotated, "rotated", "RS256", permissions=["users:read"])
    error = await rpc_error(get_user(secured, token))
    assert error.code() == grpc.StatusCode.NOT_FOUND, "authenticated, and the user is unknown"


# ------------------------------------------------------------ what each caller may do


async def test_a_permission_missing_is_named_and_says_nothing_of_the_resource(
    secured: Secured,
) -> None:
    writer = secured.token("users:write")
    created = await secured.users().CreateUser(
        users_pb2.CreateUserRequest(user=users_pb2.User(email=f"{uuid.uuid4().hex}@example.com")),
        metadata=bearer(writer),
    )
    tracker = secured.token("events:track")
    answers = []
    for user_id in (created.user.id, str(uuid.uuid4())):
        error = await rpc_error(
            secured.users().GetUser(
                users_pb2.GetUserRequest(user_id=user_id), metadata=bearer(tracker)
            )
        )
        answers.append((error.code(), error.details(), dict(error_info(error).metadata)))
    assert answers[0] == answers[1], "an existing user and a missing one look alike"
    assert answers[0][0] == DENIED
    assert answers[0][2] == {"permission": "users:read"}


@pytest.mark.parametrize(
    "grant", [["users:read"], ["users:*"], ["*"]], ids=["exact", "service wildcard", "all"]
)
async def test_a_permission_is_granted_exactly_or_by_wildcard(
    secured: Secured, grant: list[str]
) -> None:
    error = await rpc_error(get_user(secured, secured.token(*grant)))
    assert error.code() == grpc.StatusCode.NOT_FOUND


async def test_a_scope_claim_grants_like_a_permissions_claim(secured: Secured) -> None:
    token = signed(people_key(secured.auth), "people", scope="metrics:read users:read")
    error = await rpc_error(get_user(secured, token))
    assert error.code() == grpc.StatusCode.NOT_FOUND


def services_own_rpcs() -> list[tuple[str, str, Any]]:
    """(service, method, an empty request) of every RPC that names its callers."""
    found = []
    for name in DEFINITIONS:
        descriptor = descriptor_pool.Default().FindServiceByName(GRPC_SERVICES[name])
        for path, access in access_of(descriptor).items():
            if access.services:
                method = descriptor.methods_by_name[path.rsplit("/", 1)[1]]
                request = message_factory.GetMessageClass(method.input_type)()
                found.append((name, method.name, request))
    return found


INTERNAL = services_own_rpcs()


async def call(secured: Secured, service: str, method: str, request: Any, token: str) -> Any:
    rpc: Callable[..., Any] = getattr(secured.stub(service), method)
    result = rpc(request, metadata=bearer(token))
    if hasattr(result, "read"):  # a server stream
        return [reply async for reply in result]
    return await result


@pytest.mark.parametrize(
    ("service", "method", "request_"), INTERNAL, ids=[f"{s}.{m}" for s, m, _ in INTERNAL]
)
async def test_the_services_own_rpcs_refuse_every_client(
    secured: Secured, service: str, method: str, request_: Any
) -> None:
    assert len(INTERNAL) >= 9
    error = await rpc_error(call(secured, service, method, request_, secured.token("*")))
    assert error.code() == DENIED
    assert error_info(error).reason == "SERVICES_ONLY"


def service_token(auth: LocalAuth, service: str, *, kid: str | None = None) -> str:
    key = jwt.PyJWK.from_dict(json.loads(auth.key_file(f"service-{service}").read_text())).key
    return signed(key, kid or f"service:{service}", sub=f"service:{service}")


async def test_a_services_own_rpc_admits_only_the_services_that_call_it(secured: Secured) -> None:
    request = users_pb2.CountUsersRequest(condition=dict_to_struct({"v": 1, "all": []}))
    counted = await call(
        secured, "users", "CountUsers", request, service_token(secured.auth, "segments")
    )
    assert counted.count >= 0
    error = await rpc_error(
        call(secured, "users", "CountUsers", request, service_token(secured.auth, "workflows"))
    )
    assert error.code() == DENIED


async def test_a_services_key_rotates_under_a_versioned_id(secured: Secured) -> None:
    jwks = json.loads(secured.auth.jwks_file.read_text())
    fresh = ec.generate_private_key(ec.SECP256R1())
    public = ECAlgorithm.to_jwk(fresh.public_key(), as_dict=True)
    for kid in ("service:segments#2", "service:segments-lookalike"):
        jwks["keys"].append({**public, "kid": kid, "alg": "ES256", "use": "sig"})
    secured.auth.jwks_file.write_text(json.dumps(jwks))
    request = users_pb2.CountUsersRequest(condition=dict_to_struct({"v": 1, "all": []}))
    rotated = signed(fresh, "service:segments#2", sub="service:segments")
    assert (await call(secured, "users", "CountUsers", request, rotated)).count >= 0
    lookalike = signed(fresh, "service:segments-lookalike", sub="service:segments")
    error = await rpc_error(call(secured, "users", "CountUsers", request, lookalike))
    assert error.code() == DENIED


async def test_a_client_token_naming_a_service_is_still_a_client(secured: Secured) -> None:
    impostor = signed(people_key(secured.auth), "people", sub="service:segments")
    request = users_pb2.CountUsersRequest(condition=dict_to_struct({"v": 1, "all": []}))
    error = await rpc_error(call(secured, "users", "CountUsers", request, impostor))
    assert error.code() == DENIED


# ------------------------------------------------------------ the services together


async def test_the_loop_runs_with_authentication_on(secured: Secured) -> None:
    """TrackEvent -> trigger -> workflow started (triggers' own token) -> stage
    changed by the workflow (workflows' token) -> lifecycle events recorded
    (every service's token on RecordEvents)."""
    admin = secured.token("*")
    user = await secured.users().CreateUser(
        users_pb2.CreateUserRequest(user=users_pb2.User(email=f"{uuid.uuid4().hex}@example.com")),
        metadata=bearer(admin),
    )
    workflows = secured.stub("workflows")
    created = await workflows.CreateWorkflow(
        workflows_pb2.CreateWorkflowRequest(
            workflow=workflows_pb2.Workflow(
                name="activate",
                bpmn_xml=linear(
                    start(), service("move", "lifecycle.set_stage", stage="Revenue"), end()
                ),
            )
        ),
        metadata=bearer(admin),
    )
    await workflows.ActivateWorkflow(
        workflows_pb2.ActivateWorkflowRequest(workflow_id=created.workflow.id),
        metadata=bearer(admin),
    )
    kind = f"auth_{uuid.uuid4().hex[:8]}"
    await secured.stub("triggers").CreateTrigger(
        triggers_pb2.CreateTriggerRequest(
            trigger=triggers_pb2.Trigger(
                name="on auth", event_type=kind, workflow_id=created.workflow.id
            )
        ),
        metadata=bearer(admin),
    )
    tracked = await secured.stub("triggers").TrackEvent(
        triggers_pb2.TrackEventRequest(
            event=triggers_pb2.Event(user_id=user.user.id, event_type=kind, message_id=kind)
        ),
        metadata=bearer(secured.token("events:track")),
    )
    assert tracked.user_id == user.user.id
    reader = secured.token("users:read", "metrics:read")

    async def moved() -> bool:
        got = await secured.users().GetUser(
            users_pb2.GetUserRequest(user_id=user.user.id), metadata=bearer(reader)
        )
        return bool(got.user.lifecycle_stage == stage_pb2.LIFECYCLE_STAGE_REVENUE)

    await eventually(moved)

    async def recorded() -> bool:
        events = await secured.stub("metrics").ListEvents(
            metrics_pb2.ListEventsRequest(user_id=user.user.id, event_types=["user.stage_changed"]),
            metadata=bearer(reader),
        )
        return bool(events.events)

    await eventually(recorded)


async def test_a_signal_trigger_broadcasts_as_the_triggers_service(secured: Secured) -> None:
    """The starter's BroadcastSignal carries the triggers service's identity,
    which BroadcastSignal's access admits."""
    admin = secured.token("*")
    name = f"auth_{uuid.uuid4().hex[:8]}"
    workflows = secured.stub("workflows")
    created = await workflows.CreateWorkflow(
        workflows_pb2.CreateWorkflowRequest(
            workflow=workflows_pb2.Workflow(
                name="on signal",
                bpmn_xml=with_signal(linear(signal_event("startEvent", "start"), end()), name),
            )
        ),
        metadata=bearer(admin),
    )
    await workflows.ActivateWorkflow(
        workflows_pb2.ActivateWorkflowRequest(workflow_id=created.workflow.id),
        metadata=bearer(admin),
    )
    user = await secured.users().CreateUser(
        users_pb2.CreateUserRequest(user=users_pb2.User(email=f"{uuid.uuid4().hex}@example.com")),
        metadata=bearer(admin),
    )
    triggers = secured.stub("triggers")
    trigger = await triggers.CreateTrigger(
        triggers_pb2.CreateTriggerRequest(
            trigger=triggers_pb2.Trigger(name="signal", event_type=name, signal_name=name)
        ),
        metadata=bearer(admin),
    )
    await triggers.TrackEvent(
        triggers_pb2.TrackEventRequest(
            event=triggers_pb2.Event(user_id=user.user.id, event_type=name, message_id=name)
        ),
        metadata=bearer(secured.token("events:track")),
    )
    found: list[triggers_pb2.TriggerExecution] = []

    async def answered() -> bool:
        reply = await triggers.ListTriggerExecutions(
            triggers_pb2.ListTriggerExecutionsRequest(trigger_id=trigger.trigger.id),
            metadata=bearer(admin),
        )
        found[:] = [e for e in reply.trigger_executions if e.HasField("signal") or e.skip_reason]
        return bool(found)

    await eventually(answered)
    assert [(e.skip_reason, e.signal.started_count) for e in found] == [("", 1)]


def test_local_keys_are_readable_by_their_owner_only(tmp_path: Path) -> None:
    auth = local_auth(tmp_path)
    for name in ("people", "service-users"):
        assert auth.key_file(name).stat().st_mode & 0o077 == 0
    assert {key["kid"] for key in json.loads(auth.jwks_file.read_text())["keys"]} >= {
        "people",
        "service:users",
    }
    assert all("d" not in key for key in json.loads(auth.jwks_file.read_text())["keys"])


def test_a_chain_past_its_length_keeps_its_origin_and_its_latest_actors() -> None:
    long = json.dumps([f"actor-{n}" for n in range(40)])
    kept = parse_chain(long)
    assert len(kept) == MAX_CHAIN
    assert kept[0] == "actor-0" and kept[-1] == "actor-39"
    assert parse_chain("not json") == () and parse_chain('{"a": 1}') == ()


# ------------------------------------------------------------ configuration


BASE = {"LIFECYCLE_DATABASE_URL": "postgresql://x/y", "LIFECYCLE_PAGE_TOKEN_SECRET": "k"}


def test_a_jwks_turns_authentication_on_and_needs_an_issuer_and_audience(tmp_path: Path) -> None:
    jwks = local_auth(tmp_path).jwks_file
    with pytest.raises(ConfigError) as raised:
        load_service_config("users", {**BASE, "LIFECYCLE_AUTH_JWKS_FILE": str(jwks)})
    assert "LIFECYCLE_AUTH_ISSUER is not set" in str(raised.value)
    assert "LIFECYCLE_AUTH_AUDIENCE is not set" in str(raised.value)
    with pytest.raises(ConfigError, match="LIFECYCLE_AUTH_JWKS_FILE="):
        load_service_config("users", {**BASE, "LIFECYCLE_AUTH_JWKS_FILE": str(tmp_path / "no")})
    on = load_service_config("users", {**BASE, **local_auth(tmp_path).environment()})
    assert on.auth.enabled and on.auth.service_key_file is not None
    assert not load_service_config("users", BASE).auth.enabled


def test_a_service_that_must_authenticate_refuses_to_start_without_a_jwks() -> None:
    with pytest.raises(ConfigError, match="LIFECYCLE_REQUIRE_AUTH=true"):
        load_service_config("users", {**BASE, "LIFECYCLE_REQUIRE_AUTH": "true"})


# ------------------------------------------------------------ with mutual TLS


async def test_under_mutual_tls_services_are_known_by_their_certificates(
    own_database: ScratchDatabase, tmp_path: Path
) -> None:
    """No service holds a key of its own: segments reaches users' CountUsers by
    its certificate, while a client's certificate and a `*` token do not."""
    auth = local_auth(tmp_path / "data")
    files = local_certificates(tmp_path / "tls")
    keyless = {k: v for k, v in auth.environment().items() if not k.endswith("AUTH_KEY_FILE")}
    ports = {name: free_port() for name in ("users", "segments")}

    def env_of(service: str) -> dict[str, str]:
        return service_env(own_database, ports, **keyless, **files.environment(service))

    client_env = files.environment(CLIENT)
    admin = auth.token("alice", ["*"], 600)
    async with (
        running("users", env_of("users")) as users_host,
        running("segments", env_of("segments")) as segments_host,
        channel_to(users_host.address, client_env) as to_users,
        channel_to(segments_host.address, client_env) as to_segments,
    ):
        preview = await segments_pb2_grpc.SegmentServiceStub(to_segments).PreviewSegment(
            segments_pb2.PreviewSegmentRequest(conditions=dict_to_struct({"v": 1, "all": []})),
            metadata=bearer(admin),
        )
        assert preview.estimated_size >= 0
        error = await rpc_error(
            users_pb2_grpc.UserServiceStub(to_users).CountUsers(
                users_pb2.CountUsersRequest(condition=dict_to_struct({"v": 1, "all": []})),
                metadata=bearer(admin),
            )
        )
        assert error.code() == DENIED
        assert error_info(error).reason == "SERVICES_ONLY"


async def test_a_service_refused_by_the_one_it_calls_answers_internal_not_unknown(
    own_database: ScratchDatabase, tmp_path: Path
) -> None:
    """Misconfigured: segments holds no key and no certificate, so users refuses
    its calls. The client learns of a fault of the suite, with a trace id."""
    auth = local_auth(tmp_path / "data")
    keyless = dict(auth.environment())
    del keyless["LIFECYCLE_SEGMENTS_AUTH_KEY_FILE"]
    env = service_env(own_database, {"users": free_port(), "segments": free_port()}, **keyless)
    async with (
        running("users", env),
        running("segments", env) as segments_host,
        grpc.aio.insecure_channel(segments_host.address) as channel,
    ):
        error = await rpc_error(
            segments_pb2_grpc.SegmentServiceStub(channel).PreviewSegment(
                segments_pb2.PreviewSegmentRequest(conditions=dict_to_struct({"v": 1, "all": []})),
                metadata=bearer(auth.token("alice", ["*"], 600)),
            )
        )
    assert error.code() == grpc.StatusCode.INTERNAL
    assert "trace id" in (error.details() or "")


async def test_an_eddsa_key_signs_as_well(secured: Secured) -> None:
    jwks = json.loads(secured.auth.jwks_file.read_text())
    key = ed25519.Ed25519PrivateKey.generate()
    public = OKPAlgorithm.to_jwk(key.public_key(), as_dict=True)
    jwks["keys"].append({**public, "kid": "edwards", "alg": "EdDSA", "use": "sig"})
    secured.auth.jwks_file.write_text(json.dumps(jwks))
    token = signed(key, "edwards", "EdDSA", permissions=["users:read"])
    error = await rpc_error(get_user(secured, token))
    assert error.code() == grpc.StatusCode.NOT_FOUND


class JwksServer:
    """A JWKS over HTTP on loopback, counting how often it is fetched."""

    def __init__(self, jwks: dict[str, Any]) -> None:
        self.jwks = jwks
        self.fetches = 0
        served = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                served.fetches += 1
                body = json.dumps(served.jwks).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/jwks.json"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self._server.shutdown()


async def test_a_jwks_url_is_fetched_once_and_again_for_a_key_not_seen_yet(
    own_database: ScratchDatabase, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(auth_module, "REFETCH_SECONDS", 0.2)
    auth = local_auth(tmp_path / "data")
    server = JwksServer(json.loads(auth.jwks_file.read_text()))
    settings = {**auth.environment(), "LIFECYCLE_AUTH_JWKS_URL": server.url}
    del settings["LIFECYCLE_AUTH_JWKS_FILE"]
    env = service_env(own_database, {"users": free_port()}, **settings)
    try:
        async with running("users", env) as host, grpc.aio.insecure_channel(host.address) as chan:
            users = users_pb2_grpc.UserServiceStub(chan)
            token = auth.token("alice", ["users:read"], 600)
            for _ in range(20):
                error = await rpc_error(
                    users.GetUser(
                        users_pb2.GetUserRequest(user_id=str(uuid.uuid4())),
                        metadata=bearer(token),
                    )
                )
                assert error.code() == grpc.StatusCode.NOT_FOUND
            assert server.fetches == 1, "a token is verified once, the set fetched once"
            fresh = ec.generate_private_key(ec.SECP256R1())
            public = ECAlgorithm.to_jwk(fresh.public_key(), as_dict=True)
            server.jwks["keys"].append({**public, "kid": "new", "alg": "ES256", "use": "sig"})
            await asyncio.sleep(0.3)
            newer = signed(fresh, "new", permissions=["users:read"])
            error = await rpc_error(
                users.GetUser(
                    users_pb2.GetUserRequest(user_id=str(uuid.uuid4())), metadata=bearer(newer)
                )
            )
            assert error.code() == grpc.StatusCode.NOT_FOUND
            assert server.fetches == 2
    finally:
        server.close()
