"""One thin layer over boto3 for every part of ProtoBase that talks to S3.

CloudFileStorage, backup and restore, and the cluster's cold tier all go
through `Bucket`, so that S3's answers become ProtoBase's exceptions in one
place:

- a missing key raises `ObjectMissing` (a `StorageError`);
- a failed conditional write (``IfNoneMatch="*"`` on a key that exists,
  ``IfMatch`` with an ETag that is no longer current) raises
  `PreconditionFailed`;
- anything else S3 or the network does wrong raises `S3Unavailable`, whose
  message names the endpoint, bucket and key.

boto3 is imported on first use (extra ``protobase[s3]``), so that the
embedded install works without it. Credentials come from boto3's usual
chain (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``, ``AWS_PROFILE``,
instance roles); the endpoint from the `endpoint_url` argument, or else
``AWS_ENDPOINT_URL``, or else AWS itself.

A `Bucket` is safe to share between threads (boto3 clients are). Its
client skips S3's optional request checksums (ProtoBase's objects carry
their own) and the ``Expect: 100-continue`` handshake: on moto that
doubles the rate of small sequential PUTs.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from .errors import StorageError

DEFAULT_TIMEOUT = 10.0
"""Seconds to connect, and to wait for each read, before boto3 retries."""


class S3Unavailable(StorageError):
    """S3 did not answer, or answered with an error other than the ones below."""


class ObjectMissing(StorageError):
    """The key names no object."""


class PreconditionFailed(StorageError):
    """A conditional write lost: the object exists, or changed since it was read
    (or a concurrent conditional write to the same key won the race)."""


class ShortObject(StorageError):
    """An object is shorter than the byte range asked of it: not what ProtoBase wrote."""


@dataclass(frozen=True, slots=True)
class S3Location:
    """A bucket and a key prefix, written ``s3://bucket/prefix``.

    The prefix has no leading or trailing slash ("" is the whole bucket);
    `key` joins names under it.
    """

    bucket: str
    prefix: str = ""

    @classmethod
    def parse(cls, url: str) -> S3Location:
        """``s3://bucket/some/prefix`` -> S3Location("bucket", "some/prefix").

        Raises:
            ValueError: not an ``s3://`` URL, or no bucket name.
        """
        if not isinstance(url, str) or not url.startswith("s3://"):
            raise ValueError(f"{url!r} is not an S3 location; write it as s3://bucket/prefix")
        bucket, _, prefix = url[len("s3://") :].partition("/")
        if not bucket:
            raise ValueError(f"{url!r} names no bucket; write it as s3://bucket/prefix")
        return cls(bucket, prefix.strip("/"))

    def key(self, name: str) -> str:
        return f"{self.prefix}/{name}" if self.prefix else name

    def child(self, name: str) -> S3Location:
        return S3Location(self.bucket, self.key(name.strip("/")))

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"


def looks_like_s3(text: str) -> bool:
    return isinstance(text, str) and text.startswith("s3://")


def make_client(
    endpoint_url: str | None = None,
    *,
    max_connections: int = 32,
    timeout: float = DEFAULT_TIMEOUT,
    attempts: int = 3,
) -> Any:
    """A boto3 S3 client (path-style addressing, bounded timeouts and retries).

    Raises:
        StorageError: boto3 is not installed.
    """
    try:
        import boto3
        from botocore.config import Config
    except ImportError as exc:  # pragma: no cover - the test install has boto3
        raise StorageError(
            "S3 support needs boto3: install it with pip install 'protobase[s3]'"
        ) from exc
    endpoint = endpoint_url or os.environ.get("AWS_ENDPOINT_URL") or None
    from botocore.handlers import add_expect_header

    config = Config(
        connect_timeout=timeout,
        read_timeout=timeout,
        retries={"max_attempts": attempts, "mode": "standard"},
        max_pool_connections=max_connections,
        s3={"addressing_style": "path"},
        # Every object ProtoBase writes carries its own xxh3 checksums, checked
        # on every read; S3's optional CRC on each request costs CPU for nothing.
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
    )
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    client = boto3.client("s3", endpoint_url=endpoint, config=config, region_name=region)
    # "Expect: 100-continue" makes every PUT wait a round trip for the go-ahead;
    # it pays off only for big bodies sent to a server that may refuse them.
    client.meta.events.unregister("before-call.s3", add_expect_header)
    return client


class Bucket:
    """The operations ProtoBase needs on one bucket, with errors translated.

    Keys given to the methods are full keys (use `S3Location.key`).
    """

    def __init__(self, location: S3Location, client: Any, endpoint_url: str | None = None) -> None:
        self.location = location
        self.client = client
        self.endpoint = endpoint_url or os.environ.get("AWS_ENDPOINT_URL") or "AWS"

    @classmethod
    def open(
        cls,
        location: S3Location | str,
        endpoint_url: str | None = None,
        *,
        max_connections: int = 32,
        timeout: float = DEFAULT_TIMEOUT,
        attempts: int = 3,
    ) -> Bucket:
        if isinstance(location, str):
            location = S3Location.parse(location)
        client = make_client(
            endpoint_url, max_connections=max_connections, timeout=timeout, attempts=attempts
        )
        return cls(location, client, endpoint_url)

    @property
    def name(self) -> str:
        return self.location.bucket

    def key(self, name: str) -> str:
        return self.location.key(name)

    # -- reads -------------------------------------------------------------------

    def get(self, key: str, start: int | None = None, end: int | None = None) -> bytes:
        """The object's bytes, or bytes ``[start, end)`` of it.

        Raises:
            ObjectMissing, S3Unavailable
        """
        return self.get_with_etag(key, start, end)[0]

    def get_with_etag(
        self, key: str, start: int | None = None, end: int | None = None
    ) -> tuple[bytes, str]:
        arguments: dict[str, Any] = {"Bucket": self.name, "Key": key}
        if start is not None or end is not None:
            first = start or 0
            if end is not None and end <= first:
                return b"", ""
            arguments["Range"] = f"bytes={first}-" + ("" if end is None else str(end - 1))
        with self._translated("GET", key):
            answer = self.client.get_object(**arguments)
            data: bytes = answer["Body"].read()
        if end is not None and len(data) != end - (start or 0):
            raise ShortObject(
                f"{self._where(key)}: asked for bytes {start or 0}-{end - 1}, got {len(data)} "
                "bytes; the object is shorter than ProtoBase wrote it"
            )
        return data, str(answer.get("ETag", ""))

    def size(self, key: str) -> int | None:
        """The object's size in bytes, or None when the key names no object."""
        try:
            with self._translated("HEAD", key):
                answer = self.client.head_object(Bucket=self.name, Key=key)
        except ObjectMissing:
            return None
        return int(answer["ContentLength"])

    def list_objects(
        self, prefix: str, start_after: str | None = None
    ) -> Iterator[tuple[str, int]]:
        """``(key, size)`` of every object whose key starts with `prefix`, in key order
        (only keys after `start_after`, when given)."""
        paginator = self.client.get_paginator("list_objects_v2")
        arguments: dict[str, Any] = {"Bucket": self.name, "Prefix": prefix}
        if start_after is not None:
            arguments["StartAfter"] = start_after
        with self._translated("LIST", prefix):
            for page in paginator.paginate(**arguments):
                for item in page.get("Contents", ()):
                    yield str(item["Key"]), int(item["Size"])

    # -- writes ------------------------------------------------------------------

    def put(
        self,
        key: str,
        body: bytes,
        *,
        if_none_match: bool = False,
        if_match: str | None = None,
    ) -> str:
        """Write an object; returns its ETag.

        Args:
            if_none_match: only create it (``IfNoneMatch="*"``).
            if_match: only replace the object whose ETag is this.

        Raises:
            PreconditionFailed: the condition did not hold; nothing was written.
            S3Unavailable
        """
        arguments: dict[str, Any] = {"Bucket": self.name, "Key": key, "Body": body}
        if if_none_match:
            arguments["IfNoneMatch"] = "*"
        if if_match is not None:
            arguments["IfMatch"] = if_match
        with self._translated("PUT", key):
            answer = self.client.put_object(**arguments)
        return str(answer.get("ETag", ""))

    def upload_file(self, path: str | os.PathLike[str], key: str) -> None:
        """Upload a local file (multipart and threaded for big ones, by boto3)."""
        with self._translated("upload", key):
            self.client.upload_file(os.fspath(path), self.name, key)

    def download_file(self, key: str, path: str | os.PathLike[str]) -> None:
        with self._translated("download", key):
            self.client.download_file(self.name, key, os.fspath(path))

    def copy_from(self, source: Bucket, source_key: str, key: str) -> None:
        """Copy an object of `source` (same endpoint) to `key`, inside S3."""
        with self._translated("COPY", key):
            self.client.copy_object(
                Bucket=self.name, Key=key, CopySource={"Bucket": source.name, "Key": source_key}
            )

    def delete(self, keys: Iterable[str]) -> None:
        """Delete objects (1,000 per request); a key that is already gone is no error."""
        batch: list[str] = []
        for key in keys:
            batch.append(key)
            if len(batch) == 1000:
                self._delete_batch(batch)
                batch = []
        if batch:
            self._delete_batch(batch)

    def _delete_batch(self, keys: list[str]) -> None:
        with self._translated("DELETE", keys[0]):
            answer = self.client.delete_objects(
                Bucket=self.name,
                Delete={"Objects": [{"Key": key} for key in keys], "Quiet": True},
            )
        errors = answer.get("Errors") or []
        if errors:
            first = errors[0]
            raise S3Unavailable(
                f"{self._where(first.get('Key', '?'))}: DELETE failed for {len(errors)} "
                f"object(s): {first.get('Code')}: {first.get('Message')}"
            )

    def ensure_bucket(self) -> None:
        """Create the bucket when it does not exist (for tests and `cluster up`)."""
        try:
            with self._translated("HEAD bucket", ""):
                self.client.head_bucket(Bucket=self.name)
        except ObjectMissing:
            with self._translated("CREATE bucket", ""):
                self.client.create_bucket(Bucket=self.name)

    # -- errors ------------------------------------------------------------------

    def _where(self, key: str) -> str:
        return f"s3://{self.name}/{key} at {self.endpoint}"

    def _translated(self, operation: str, key: str) -> _Translate:
        return _Translate(self, operation, key)


class _Translate:
    """Turns botocore exceptions into ObjectMissing, PreconditionFailed or S3Unavailable."""

    def __init__(self, bucket: Bucket, operation: str, key: str) -> None:
        self.bucket = bucket
        self.operation = operation
        self.key = key

    def __enter__(self) -> None:
        return None

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: Any
    ) -> None:
        if exc is None or isinstance(exc, StorageError):
            return
        from boto3.exceptions import Boto3Error
        from botocore.exceptions import BotoCoreError, ClientError

        where = self.bucket._where(self.key)
        if isinstance(exc, ClientError):
            error = exc.response.get("Error", {})
            code = str(error.get("Code", ""))
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if code == "NoSuchBucket":
                raise S3Unavailable(
                    f"{where}: bucket {self.bucket.name!r} does not exist; create it first"
                ) from exc
            if code in ("NoSuchKey", "404", "NotFound"):
                raise ObjectMissing(f"{where}: no such object ({code})") from exc
            if code in ("PreconditionFailed", "412", "ConditionalRequestConflict") or status == 412:
                raise PreconditionFailed(
                    f"{where}: conditional {self.operation} lost (the object exists or "
                    "changed since it was read)"
                ) from exc
            raise S3Unavailable(
                f"{where}: {self.operation} failed: {code}: {error.get('Message', exc)}"
            ) from exc
        if isinstance(exc, BotoCoreError | Boto3Error | OSError):
            raise S3Unavailable(
                f"{where}: {self.operation} failed, S3 did not answer: {exc}; check that "
                "the endpoint is up and reachable"
            ) from exc
