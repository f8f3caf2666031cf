"""Channels to the other services of the suite.

One long-lived channel per target, created inside the running event loop.
Every call gets a deadline (the configured one, cut to what the incoming call
has left); UNAVAILABLE is retried by gRPC itself through the service config,
within a retry budget; `round_robin` spreads calls over every address a
headless Service resolves to.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from typing import Any

import grpc
from opentelemetry.instrumentation.grpc import aio_client_interceptors
from opentelemetry.sdk.trace import TracerProvider

from runtime.auth import CallingService
from runtime.config import TlsConfig
from runtime.deadlines import timeout_for_call
from runtime.tls import CLIENT_CHECK_SECONDS, TlsFiles, channel_with

GRPC_SERVICES = {
    "users": "lifecycle.users.v1.UserService",
    "workflows": "lifecycle.workflows.v1.WorkflowService",
    "segments": "lifecycle.segments.v1.SegmentService",
    "triggers": "lifecycle.triggers.v1.TriggerService",
    "metrics": "lifecycle.metrics.v1.MetricsService",
}
# Served by every service beside its own, about itself (runtime.operations).
OPERATIONS_SERVICE = "lifecycle.operations.v1.OperationsService"

# What is retried is an UNAVAILABLE from the transport (a replica gone, a
# connection refused, a replica that is stopping): the next attempt goes to
# another replica. A service whose database or peer is down answers with a
# pushback that stops retries (runtime.errors.Unavailable).
_RETRY_POLICY = {
    "maxAttempts": 3,
    "initialBackoff": "0.1s",
    "maxBackoff": "2s",
    "backoffMultiplier": 2,
    "retryableStatusCodes": ["UNAVAILABLE"],
}

# The retry budget of a channel (gRFC A6 throttling): each failed attempt takes a
# token, each success gives back a tenth, and retries stop while half or fewer of
# the tokens are left. An outage costs about five retries, then each call makes
# one attempt, so callers do not multiply the load on what is recovering.
RETRY_BUDGET = {"maxTokens": 10, "tokenRatio": 0.1}

# A channel made with certificates since renewed takes no new calls and closes
# once its calls have ended, or after this long: more than any call's deadline
# (the longest, a segment's MatchUserIds stream, has 120 s by default).
RETIRE_GRACE_SECONDS = 600.0

CHANNEL_OPTIONS: tuple[tuple[str, Any], ...] = (
    ("grpc.enable_retries", 1),
    ("grpc.keepalive_time_ms", 60_000),
    ("grpc.keepalive_timeout_ms", 20_000),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.max_receive_message_length", 32 * 1024 * 1024),
    # A peer back from an outage is found within seconds (the default backoff grows to 2 min).
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.min_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 5_000),
)


def service_config(service: str) -> str:
    return json.dumps(
        {
            "loadBalancingConfig": [{"round_robin": {}}],
            "methodConfig": [
                {
                    "name": [{"service": GRPC_SERVICES[service]}, {"service": OPERATIONS_SERVICE}],
                    "retryPolicy": _RETRY_POLICY,
                }
            ],
            "retryThrottling": RETRY_BUDGET,
        }
    )


class ServiceClients:
    """Channels to peer services, keyed by service name ("users", ...)."""

    def __init__(
        self,
        addresses: Mapping[str, str],
        default_timeout: float,
        tracer_provider: TracerProvider | None = None,
        identity: CallingService | None = None,
        tls: TlsConfig | None = None,
    ) -> None:
        self._addresses = dict(addresses)
        self._default_timeout = default_timeout
        self._tracer_provider = tracer_provider
        # Who the calls come from (runtime.auth.CallingService).
        self._identity = identity
        self._channels: dict[str, grpc.aio.Channel] = {}
        # Channels are made with the files as read last; read again every few seconds.
        self._tls = None if tls is None else TlsFiles(tls, CLIENT_CHECK_SECONDS)
        self._retired: dict[grpc.aio.Channel, asyncio.Task[None]] = {}

    def channel(self, service: str) -> grpc.aio.Channel:
        if self._tls is not None and self._tls.refresh() is not None:
            self._retire_channels()
        channel = self._channels.get(service)
        if channel is None:
            if service not in self._addresses:
                raise LookupError(f"{service} is not among the services this one calls")
            interceptors = [
                *(
                    aio_client_interceptors(tracer_provider=self._tracer_provider)
                    if self._tracer_provider is not None
                    else ()
                ),
                *((self._identity,) if self._identity is not None else ()),
            ]
            channel = channel_with(
                self._addresses[service],
                None if self._tls is None else self._tls.material,
                options=(*CHANNEL_OPTIONS, ("grpc.service_config", service_config(service))),
                interceptors=interceptors,
            )
            self._channels[service] = channel
        return channel

    def timeout(self) -> float:
        return timeout_for_call(self._default_timeout)

    def _retire_channels(self) -> None:
        """New calls go over new channels, with the renewed certificates (a
        channel's credentials are fixed); the calls under way finish on the old."""
        channels, self._channels = self._channels, {}
        loop = asyncio.get_running_loop()
        for channel in channels.values():
            self._retired[channel] = loop.create_task(self._close_after_calls(channel))

    async def _close_after_calls(self, channel: grpc.aio.Channel) -> None:
        await channel.close(RETIRE_GRACE_SECONDS)
        self._retired.pop(channel, None)

    async def close(self) -> None:
        channels = [*self._channels.values(), *self._retired]
        for task in self._retired.values():
            task.cancel()
        self._channels, self._retired = {}, {}
        for channel in channels:
            await channel.close(None)
