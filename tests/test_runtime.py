"""Pieces of the shared runtime that need no server: configuration, page
tokens, deadlines and error statuses."""

from __future__ import annotations

from types import SimpleNamespace

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2

from runtime import deadlines
from runtime.config import ConfigError, load_service_config, service_role, with_user
from runtime.deadlines import MARGIN_SECONDS, deadline_scope, timeout_for_call
from runtime.errors import FieldViolation, InvalidArgument, NotFound, to_status
from runtime.pagination import MAX_PAGE_SIZE, PageTokens, page_size


def test_service_config_defaults_work_locally() -> None:
    config = load_service_config(
        "users",
        {
            "LIFECYCLE_DATABASE_URL": "postgresql://admin@db:5432/lifecycle",
            "LIFECYCLE_PAGE_TOKEN_SECRET": "key",
        },
    )
    assert config.port == 50051
    assert config.database_url == "postgresql://lifecycle_users@db:5432/lifecycle"
    assert config.peers["metrics"] == "127.0.0.1:50055"
    assert config.telemetry.service_name == "lifecycle-users"
    assert config.telemetry.otlp_endpoint is None


def test_a_service_url_overrides_the_common_one() -> None:
    config = load_service_config(
        "metrics",
        {
            "LIFECYCLE_DATABASE_URL": "postgresql://admin@db/lifecycle",
            "LIFECYCLE_METRICS_DATABASE_URL": "postgresql://m:secret@other/lifecycle",
            "LIFECYCLE_PAGE_TOKEN_SECRET": "key",
            "LIFECYCLE_USERS_ADDRESS": "dns:///users-headless:50051",
            "OTEL_SERVICE_NAME": "metrics",
            "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317",
        },
    )
    assert config.database_url == "postgresql://m:secret@other/lifecycle"
    assert config.peers["users"] == "dns:///users-headless:50051"
    assert (config.telemetry.service_name, config.telemetry.otlp_endpoint) == (
        "metrics",
        "http://collector:4317",
    )


def test_every_bad_value_is_named_in_one_error() -> None:
    with pytest.raises(ConfigError) as raised:
        load_service_config(
            "users",
            {
                "LIFECYCLE_DATABASE_URL": "postgresql://x/y",
                "LIFECYCLE_USERS_PORT": "99999",
                "LIFECYCLE_SHUTDOWN_GRACE_SECONDS": "-1",
                "LIFECYCLE_LOG_LEVEL": "chatty",
            },
        )
    message = str(raised.value)
    for name in ("LIFECYCLE_USERS_PORT", "LIFECYCLE_SHUTDOWN_GRACE_SECONDS", "LIFECYCLE_LOG_LEVEL"):
        assert name in message
    with pytest.raises(ConfigError, match="LIFECYCLE_DATABASE_URL"):
        load_service_config("users", {})
    with pytest.raises(ConfigError, match="LIFECYCLE_PAGE_TOKEN_SECRET is not set"):
        load_service_config("users", {"LIFECYCLE_DATABASE_URL": "postgresql://x/y"})
    with pytest.raises(ConfigError, match="unknown service"):
        load_service_config("billing", {})


def test_role_and_url_helpers() -> None:
    assert service_role("postgresql://a@h/lifecycle_test_1", "users") == "lifecycle_test_1_users"
    assert with_user("postgresql://a:pw@h:1/d?x=1", "b") == "postgresql://b@h:1/d?x=1"


def test_page_tokens_round_trip_and_are_opaque_and_bound_to_the_query() -> None:
    tokens = PageTokens("secret")
    token = tokens.encode(["2026-11-26T00:00:00+00:00", "abc"], ["Activation"])
    assert "abc" not in token and "2026" not in token
    assert tokens.decode(token, ["Activation"]) == ["2026-11-26T00:00:00+00:00", "abc"]
    for bad_query, bad_token in (
        (["Revenue"], token),
        (["Activation"], token[:-3]),
        (["Activation"], "!!"),
    ):
        with pytest.raises(InvalidArgument) as raised:
            tokens.decode(bad_token, bad_query)
        assert raised.value.violations == [
            FieldViolation("page_token", raised.value.violations[0].description)
        ]
    with pytest.raises(InvalidArgument):
        PageTokens("other secret").decode(token, ["Activation"])


def test_page_size_rules() -> None:
    assert page_size(0) == 100
    assert page_size(5) == 5
    assert page_size(10**6) == MAX_PAGE_SIZE
    with pytest.raises(InvalidArgument):
        page_size(-1)


def test_outgoing_calls_inherit_what_is_left_of_the_incoming_deadline(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = SimpleNamespace(now=1000.0)
    # The deadlines' own clock, stepped by hand: exact values, no window to hit.
    monkeypatch.setattr(deadlines, "time", SimpleNamespace(monotonic=lambda: clock.now))
    assert timeout_for_call(5.0) == 5.0
    with deadline_scope(0.5):
        assert timeout_for_call(5.0) == pytest.approx(0.5 - MARGIN_SECONDS)
        clock.now += 0.2
        assert timeout_for_call(5.0) == pytest.approx(0.3 - MARGIN_SECONDS)
        assert timeout_for_call(0.1) == 0.1
        clock.now += 1.0
        assert timeout_for_call(5.0) == 0.0
    with deadline_scope(None):
        assert timeout_for_call(2.0) == 2.0
    with deadline_scope(-1):
        assert timeout_for_call(2.0) == 0.0


def test_errors_become_rich_statuses() -> None:
    status = to_status(
        InvalidArgument(
            [
                FieldViolation("user.email", "is required"),
                FieldViolation("user_id", "must be a UUID"),
            ]
        ),
        "lifecycle.users",
    )
    assert status.code == grpc.StatusCode.INVALID_ARGUMENT
    details = dict(status.trailing_metadata)["grpc-status-details-bin"]
    decoded = status_pb2.Status.FromString(details)
    info, bad_request = error_details_pb2.ErrorInfo(), error_details_pb2.BadRequest()
    assert decoded.details[0].Unpack(info) and decoded.details[1].Unpack(bad_request)
    assert (info.reason, info.domain) == ("INVALID_ARGUMENT", "lifecycle.users")
    assert [v.field for v in bad_request.field_violations] == ["user.email", "user_id"]
    missing = to_status(
        NotFound("no such user", reason="USER_NOT_FOUND", metadata={"user_id": "u1"}),
        "lifecycle.users",
    )
    assert missing.code == grpc.StatusCode.NOT_FOUND
