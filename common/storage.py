"""Object storage: any S3-compatible endpoint through boto3, or a local folder.

What is stored under which key, and whose it is: `common.storage_layout`.

A backend that cannot be reached raises what its client raises (botocore's connection errors for S3) or,
for the local folder, `StorageUnavailable`; a missing key is `ObjectNotFound`.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import BinaryIO, Protocol

from common.settings import Settings
from common.storage_layout import PARTIAL_PREFIX, is_partial


class ObjectNotFound(KeyError):
    """The key does not exist."""


class StorageUnavailable(OSError):
    """The local storage folder could not be read or written (unmounted volume, full disk, permissions)."""


@dataclass(frozen=True)
class StoredObject:
    """One listed object: its key, size and when it was last written (UTC)."""

    key: str
    size: int
    modified: datetime


@dataclass(frozen=True)
class PresignedUpload:
    """Where and how a client uploads directly to storage."""

    method: str  # "POST" (form with `fields`) or "PUT" (raw body)
    url: str
    fields: dict[str, str] | None = None
    headers: dict[str, str] | None = None


class Storage(Protocol):
    def put(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None: ...
    def get(self, key: str) -> bytes: ...
    def size(self, key: str) -> int | None: ...
    def delete_prefix(self, prefix: str) -> int: ...
    def delete(self, keys: Iterable[str]) -> int: ...
    def list(self, prefix: str) -> list[str]: ...
    def list_objects(self, prefix: str) -> Iterator[StoredObject]: ...
    def presigned_get(self, key: str, expires: timedelta, content_type: str | None = None) -> str | None: ...
    def presigned_upload(self, key: str, max_bytes: int, expires: timedelta) -> PresignedUpload | None: ...
    def check(self) -> None: ...


class LocalStorage:
    """Files under a root folder; writes are atomic (temp file + rename). Presigned URLs: none, the
    API serves and receives the bytes itself."""

    def __init__(self, root: Path):
        self.root = root.resolve()

    @contextmanager
    def _io(self):
        try:
            yield
        except OSError as error:
            raise StorageUnavailable(f"local storage {self.root}: {error}") from error

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if not key or self.root not in path.parents:
            raise ValueError(f"invalid storage key {key!r}")
        return path

    def put(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        path = self._path(key)
        with self._io():
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=PARTIAL_PREFIX)
            try:
                with os.fdopen(fd, "wb") as handle:
                    handle.write(data)
                os.replace(tmp, path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise

    @contextmanager
    def open_write(self, key: str) -> Iterator[BinaryIO]:
        """A file to write `key` in pieces (a request body as it arrives): a temporary file, renamed over the
        key only when the block ends without an error, removed otherwise."""
        path = self._path(key)
        with self._io():
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=PARTIAL_PREFIX)
        try:
            with self._io(), os.fdopen(fd, "wb") as handle:  # a full disk is StorageUnavailable, as in `put`
                yield handle
            with self._io():
                os.replace(tmp, path)
        finally:
            Path(tmp).unlink(missing_ok=True)

    def get(self, key: str) -> bytes:
        path = self._path(key)
        with self._io():
            try:
                return path.read_bytes()
            except FileNotFoundError:
                raise ObjectNotFound(key) from None

    def size(self, key: str) -> int | None:
        path = self._path(key)
        with self._io():
            return path.stat().st_size if path.is_file() else None

    def list(self, prefix: str) -> list[str]:
        """Keys of the whole objects under a prefix (writes under way excluded)."""
        return [item.key for item in self.list_objects(prefix) if not is_partial(item.key)]

    def list_objects(self, prefix: str) -> Iterator[StoredObject]:
        """Everything stored under a key prefix, in key order, including the temporary files of writes under
        way or abandoned (``.tmp-*``: a process killed while storing a photo leaves one), for the orphan sweep."""
        base = self._path(prefix.rstrip("/"))
        with self._io():
            if base.is_file():
                paths = [base]
            elif base.is_dir():
                paths = sorted(p for p in base.rglob("*") if p.is_file())
            else:
                paths = []
            found = []
            for path in paths:
                try:
                    stat = path.stat()
                except FileNotFoundError:  # deleted since the walk
                    continue
                modified = datetime.fromtimestamp(stat.st_mtime, UTC)
                found.append(StoredObject(path.relative_to(self.root).as_posix(), stat.st_size, modified))
        yield from found

    def delete(self, keys: Iterable[str]) -> int:
        count = 0
        with self._io():
            for key in keys:
                self._path(key).unlink(missing_ok=True)
                count += 1
        return count

    def delete_prefix(self, prefix: str) -> int:
        return self.delete(self.list(prefix))

    def presigned_get(self, key: str, expires: timedelta, content_type: str | None = None) -> str | None:
        return None

    def presigned_upload(self, key: str, max_bytes: int, expires: timedelta) -> PresignedUpload | None:
        return None

    def check(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        probe = self.root / ".ready-probe"
        probe.write_bytes(b"ok")
        probe.unlink()


class S3Storage:
    """One bucket on any S3 endpoint (AWS, MinIO, R2, moto)."""

    def __init__(self, settings: Settings):
        import boto3
        from botocore.config import Config

        self.bucket = settings.s3_bucket

        def client(endpoint_url: str | None):
            return boto3.client(
                "s3",
                endpoint_url=endpoint_url,
                region_name=settings.s3_region,
                aws_access_key_id=settings.s3_access_key_id,
                aws_secret_access_key=settings.s3_secret_access_key,
                config=Config(signature_version="s3v4", retries={"max_attempts": 3, "mode": "standard"}),
            )

        self.client = client(settings.s3_endpoint_url)
        # SigV4 signs the host, so links for clients outside (a browser under docker compose) are signed by a
        # client configured with the endpoint they can reach; no request is ever sent through it.
        public = settings.s3_public_endpoint_url
        self.presign_client = client(public) if public and public != settings.s3_endpoint_url else self.client
        if settings.s3_create_bucket:
            self._ensure_bucket()

    def _ensure_bucket(self) -> None:
        from botocore.exceptions import ClientError

        try:
            self.client.head_bucket(Bucket=self.bucket)
        except ClientError:
            self.client.create_bucket(Bucket=self.bucket)

    def put(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        self.client.put_object(Bucket=self.bucket, Key=key, Body=data, ContentType=content_type)

    def get(self, key: str) -> bytes:
        try:
            return self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read()
        except self.client.exceptions.NoSuchKey:
            raise ObjectNotFound(key) from None

    def size(self, key: str) -> int | None:
        from botocore.exceptions import ClientError

        try:
            return self.client.head_object(Bucket=self.bucket, Key=key)["ContentLength"]
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return None
            raise

    def list(self, prefix: str) -> list[str]:
        return [item.key for item in self.list_objects(prefix)]

    def list_objects(self, prefix: str) -> Iterator[StoredObject]:
        """Objects under a key prefix, in key order, one listing page (1,000 keys) at a time."""
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
            for item in page.get("Contents", []):
                yield StoredObject(item["Key"], int(item["Size"]), item["LastModified"].astimezone(UTC))

    def delete(self, keys: Iterable[str]) -> int:
        keys = list(keys)
        for start in range(0, len(keys), 1000):
            batch = [{"Key": key} for key in keys[start : start + 1000]]
            self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True})
        return len(keys)

    def delete_prefix(self, prefix: str) -> int:
        return self.delete(self.list(prefix))

    def presigned_get(self, key: str, expires: timedelta, content_type: str | None = None) -> str | None:
        params = {"Bucket": self.bucket, "Key": key}
        if content_type:
            params["ResponseContentType"] = content_type
        return self.presign_client.generate_presigned_url(
            "get_object", Params=params, ExpiresIn=int(expires.total_seconds())
        )

    def presigned_upload(self, key: str, max_bytes: int, expires: timedelta) -> PresignedUpload | None:
        # A POST policy can bound the size (content-length-range); a presigned PUT cannot.
        post = self.presign_client.generate_presigned_post(
            self.bucket,
            key,
            Conditions=[["content-length-range", 1, max_bytes]],
            ExpiresIn=int(expires.total_seconds()),
        )
        return PresignedUpload(method="POST", url=post["url"], fields=post["fields"])

    def check(self) -> None:
        self.client.head_bucket(Bucket=self.bucket)


def make_storage(settings: Settings) -> Storage:
    """The storage backend the settings name."""
    if settings.storage_backend == "s3":
        return S3Storage(settings)
    return LocalStorage(settings.storage_dir)
