"""The console's pages, timed server-side over a generated product, each
beside the time of the gRPC calls it makes, measured on the same requests.

    python -m bench.console_bench    # --users 10000 --requests 30

The five services run as processes of their own (`lifecycle serve`) on a
database the benchmark creates and drops, holding the product of
`tests/console/product.py` (the demo's workflows, segments and triggers;
`--users` users, each with a signup that starts their onboarding, every fifth
with a login; outboxes emptied, segments refreshed, metrics rolled up).
`lifecycle demo` is not used: its replay of 10,000 users stopped on an
ABORTED ImportUsers twice on 2026-12-07.

The console runs in this process, called through httpx's ASGI transport (no
browser, no HTTP socket: the time is the page's work on the server). A client
interceptor records when each of the page's calls starts and ends; the calls'
time is the span they cover together (concurrent calls overlap), so the page
time minus it is the console's own work: waiting between calls, rendering.
Target: every page under 300 ms (issue 16).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx

from bench.harness import scratch_database, server_url
from console.app import create_app
from console.calls import Services
from console.config import load_console_config
from lifecycle.segments.v1 import segments_pb2
from lifecycle.triggers.v1 import triggers_pb2
from lifecycle.workflows.v1 import workflows_pb2 as pb
from runtime.config import SERVICE_NAMES, peer_addresses
from suite.demo.clients import connected
from suite.launcher import Supervisor
from tests.console.product import load
from tests.support import free_port

TARGET_MS = 300.0
# The event funnel the analytics pages are timed on (over the last 30 days, by default).
FUNNEL = "step=user.created&step=tracked.signup&step=tracked.login&window=14&unit=days"


class CallTimes(grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[type-arg]
    """When each call starts and ends, for the request being timed."""

    def __init__(self) -> None:
        # (start, end, method) of each call.
        self.spans: list[tuple[float, float, str]] = []

    async def intercept_unary_unary(
        self, continuation: Any, client_call_details: Any, request: Any
    ) -> Any:
        started = time.perf_counter()
        call = await continuation(client_call_details, request)
        method = client_call_details.method.decode().rsplit("/", 1)[-1]
        call.add_done_callback(lambda _: self.spans.append((started, time.perf_counter(), method)))
        return call

    def slowest(self) -> str:
        start, end, method = max(self.spans, key=lambda span: span[1] - span[0])
        return f"{method} took {end - start:.1f} s"

    def covered(self) -> float:
        """The time the calls cover together, overlaps counted once."""
        total, reach = 0.0, float("-inf")
        for start, end, _ in sorted(self.spans):
            if end > reach:
                total += end - max(start, reach)
                reach = end
        return total


@dataclass(frozen=True)
class PageTime:
    name: str
    page_ms: float
    p95_ms: float
    calls_ms: float
    calls: int
    # Each request that failed: its status and the page's slowest call.
    failures: list[str]

    def line(self) -> str:
        share = self.calls_ms / self.page_ms
        met = self.p95_ms < TARGET_MS and not self.failures
        failed = f"; {len(self.failures)} failed, e.g. {self.failures[0]}" if self.failures else ""
        return (
            f"{self.name:<34} {self.page_ms:7.1f} ms  p95 {self.p95_ms:7.1f} ms"
            f"   its {self.calls:>2} calls {self.calls_ms:7.1f} ms ({share:4.0%})"
            f"  {'met' if met else 'MISSED'}{failed}"
        )


async def time_page(
    browser: httpx.AsyncClient, times: CallTimes, name: str, path: str, requests: int
) -> PageTime:
    """Median and p95 of `requests` sequential requests, with the median calls' span."""
    pages, spans, counts, failures = [], [], [], []
    for _ in range(requests):
        times.spans.clear()
        started = time.perf_counter()
        reply = await browser.get(path)
        pages.append(time.perf_counter() - started)
        if reply.status_code != 200:
            failures.append(f"{reply.status_code} ({times.slowest()})")
        spans.append(times.covered())
        counts.append(len(times.spans))
    pages.sort()
    return PageTime(
        name,
        statistics.median(pages) * 1000,
        pages[min(len(pages) - 1, int(0.95 * len(pages)))] * 1000,
        statistics.median(spans) * 1000,
        max(counts),
        failures,
    )


async def _paths(calls: Services) -> list[tuple[str, str]]:
    """Each page of the console (its name, its path), on the demo's onboarding, one of its
    executions and that user, the first segment and trigger."""
    workflow = next(
        w
        for w in (await calls.workflows.ListWorkflows(pb.ListWorkflowsRequest())).workflows
        if w.name.startswith("Onboarding")
    )
    listed = await calls.workflows.ListExecutions(
        pb.ListExecutionsRequest(workflow_id=workflow.id, page_size=1)
    )
    execution = listed.executions[0]
    segment = (await calls.segments.ListSegments(segments_pb2.ListSegmentsRequest())).segments[0]
    trigger = (await calls.triggers.ListTriggers(triggers_pb2.ListTriggersRequest())).triggers[0]
    return [
        ("/", "/"),
        ("/metrics.json", "/metrics.json"),
        ("/workflows", "/workflows"),
        ("/workflows/{id}", f"/workflows/{workflow.id}"),
        ("/workflows/{id}/diagram.json", f"/workflows/{workflow.id}/diagram.json"),
        ("/workflows/{id}?status=completed", f"/workflows/{workflow.id}?status=completed"),
        ("/executions/{id}", f"/executions/{execution.id}"),
        ("/executions/{id}/diagram.json", f"/executions/{execution.id}/diagram.json"),
        ("/users", "/users"),
        ("/users/{id}", f"/users/{execution.user_id}"),
        ("/segments", "/segments"),
        ("/segments/{id}", f"/segments/{segment.id}"),
        ("/segments/{id}/sizes.json", f"/segments/{segment.id}/sizes.json"),
        ("/triggers", "/triggers"),
        ("/triggers/{id}", f"/triggers/{trigger.id}"),
        ("/analytics (the form)", "/analytics"),
        ("/analytics (3 steps, by stage)", f"/analytics?{FUNNEL}&by=stage"),
        ("/analytics (3 steps, strict)", f"/analytics?{FUNNEL}&order=strict"),
        (
            "/analytics/retention (7 days)",
            "/analytics/retention?cohort=tracked.signup&return=tracked.login&period=day&periods=7",
        ),
    ]


def _environment(database_url: str) -> dict[str, str]:
    env = {**os.environ, "LIFECYCLE_DATABASE_URL": database_url, "LIFECYCLE_LOG_LEVEL": "ERROR"}
    for name in SERVICE_NAMES:
        port = free_port()
        env[f"LIFECYCLE_{name.upper()}_PORT"] = str(port)
        env[f"LIFECYCLE_{name.upper()}_ADDRESS"] = f"127.0.0.1:{port}"
    env["LIFECYCLE_PAGE_TOKEN_SECRET"] = "console-bench"
    return env


async def measure(database_url: str, users: int, requests: int, log: Path) -> list[PageTime]:
    env = _environment(database_url)
    async with (
        Supervisor(list(SERVICE_NAMES), env, None, log).running(),
        connected(peer_addresses(env), None) as suite,
    ):
        started = await load(suite, database_url, users)
        print(f"loaded {users:,} users; {started:,} onboarding executions started")
        times = CallTimes()
        calls = Services(load_console_config(env), [times])
        transport = httpx.ASGITransport(app=create_app(load_console_config(env), calls))
        try:
            async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as web:
                paths = await _paths(calls)
                for _, path in paths:  # Once each first: channels and templates are warm.
                    await web.get(path)
                return [await time_page(web, times, *page, requests) for page in paths]
        finally:
            await calls.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--requests", type=int, default=30)
    args = parser.parse_args()

    async def run(url: str) -> list[PageTime]:
        async with scratch_database(url) as database_url:
            with tempfile.TemporaryDirectory() as logs:
                return await measure(
                    database_url, args.users, args.requests, Path(logs) / "suite.log"
                )

    with server_url() as url:
        timed = asyncio.run(run(url))
    print(
        f"\nconsole pages over {args.users:,} users,"
        f" {args.requests} requests each: median, p95, and the median time of the page's calls"
    )
    for page in timed:
        print(page.line())


if __name__ == "__main__":
    main()
