"""Cold storage of the archives of old event partitions (maintenance.py
writes and reads them): a local or mounted folder, or an S3-compatible
bucket, as LIFECYCLE_METRICS_ARCHIVE_URL names it."""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Protocol
from urllib.parse import urlsplit

import boto3
from boto3.exceptions import Boto3Error
from botocore.exceptions import BotoCoreError, ClientError

from services.metrics.settings import MetricsSettings


class ArchiveStore(Protocol):
    """Cold storage of archive files, by name. A failure is an OSError."""

    def location(self, name: str) -> str: ...

    async def put(self, name: str, source: Path) -> None: ...

    async def fetch(self, name: str, target: Path) -> None: ...


class FolderArchive:
    """Archives in a local (or mounted) folder; a file appears whole or not at all."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def location(self, name: str) -> str:
        return (self.root / name).as_uri()

    async def put(self, name: str, source: Path) -> None:
        await asyncio.to_thread(self._put, name, source)

    def _put(self, name: str, source: Path) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        partial = self.root / f".{name}.partial"
        with source.open("rb") as reader, partial.open("wb") as writer:
            shutil.copyfileobj(reader, writer)
            writer.flush()
            os.fsync(writer.fileno())
        partial.replace(self.root / name)

    async def fetch(self, name: str, target: Path) -> None:
        await asyncio.to_thread(shutil.copyfile, self.root / name, target)


class BucketArchive:
    """Archives in an S3-compatible bucket, under a prefix. An object appears
    whole or not at all: S3 shows an upload only once it is complete."""

    def __init__(self, bucket: str, prefix: str, endpoint: str | None) -> None:
        self.bucket = bucket
        self.prefix = prefix
        self._client = boto3.client("s3", endpoint_url=endpoint)

    def _key(self, name: str) -> str:
        return f"{self.prefix}/{name}" if self.prefix else name

    def location(self, name: str) -> str:
        return f"s3://{self.bucket}/{self._key(name)}"

    async def put(self, name: str, source: Path) -> None:
        await self._call(name, self._client.upload_file, str(source), self.bucket, self._key(name))

    async def fetch(self, name: str, target: Path) -> None:
        await self._call(
            name, self._client.download_file, self.bucket, self._key(name), str(target)
        )

    async def _call(self, name: str, method: Callable[..., None], *args: str) -> None:
        try:
            await asyncio.to_thread(method, *args)
        except (BotoCoreError, ClientError, Boto3Error) as error:
            raise OSError(f"{self.location(name)}: {error}") from error


def open_archive(settings: MetricsSettings) -> ArchiveStore:
    """The cold storage the settings name."""
    parts = urlsplit(settings.archive_url)
    if parts.scheme == "s3":
        return BucketArchive(parts.netloc, parts.path.strip("/"), settings.archive_endpoint)
    return FolderArchive(Path(settings.archive_url))
