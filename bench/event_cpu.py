"""Where the CPU of the event path goes: microseconds of CPU per tracked event,
by process (the triggers service, the users service, PostgreSQL), under
TrackEvents of 1,000 events as in bench/triggers_bench.py's ingest phase
(workflows and metrics stopped). On two cores the three share, the sum bounds
the rate: a wall-clock rate can hide a change that the CPU an event shows.

    python -m bench.event_cpu [--events 30000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
from pathlib import Path

import asyncpg

from bench import triggers_bench
from bench.harness import scratch_database, server_url

_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int, *, with_children: bool = False) -> float:
    """User and system CPU of a process (and of its children it waited for)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return 0.0
    ticks = int(fields[11]) + int(fields[12])
    if with_children:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / _TICKS


def postgres_seconds(postmaster: int) -> float:
    """The server's CPU: the postmaster, its backends, and those that exited."""
    children = 0.0
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == postmaster:
                children += cpu_seconds(int(entry.name))
    return children + cpu_seconds(postmaster, with_children=True)


async def main(events: int) -> None:
    with server_url() as url:
        conn = await asyncpg.connect(url)
        data_directory = await conn.fetchval("SHOW data_directory")
        await conn.close()
        postmaster = int((Path(data_directory) / "postmaster.pid").read_text().split()[0])
        async with scratch_database(url) as database_url:
            users = await triggers_bench.load_users(database_url, 20_000)
            async with triggers_bench.services(database_url) as suite:
                await triggers_bench.add_trigger(suite, "bench.purchase", triggers_bench.ENTERPRISE)
                suite.stop("workflows", "metrics")
                await triggers_bench.track_bulk(suite, users, 5000)  # warm-up
                pids = {name: suite.processes[name].pid for name in ("triggers", "users")}

                def snapshot() -> dict[str, float]:
                    taken = {name: cpu_seconds(pid) for name, pid in pids.items()}
                    return {**taken, "postgres": postgres_seconds(postmaster)}

                before = snapshot()
                seconds = await triggers_bench.track_bulk(suite, users, events)
                await asyncio.sleep(2)  # the relay's deliveries to the users service
                after = snapshot()
    used = {name: (after[name] - before[name]) * 1e6 / events for name in after}
    print(f"TrackEvents, 1000 a call: {events / seconds:.0f} events/s (wall clock)")
    for name, micros in used.items():
        print(f"  {name:<10} {micros:6.0f} us of CPU an event")
    print(f"  {'total':<10} {sum(used.values()):6.0f} us of CPU an event")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=30_000)
    asyncio.run(main(parser.parse_args().events))
