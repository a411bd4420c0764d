"""Object stores: S3 (boto3) for the services, a local folder for `singtome cover` and unit tests.

Both implement :class:`ObjectStore`. Errors are mapped onto two exception types the runner
understands: :class:`ObjectNotFound` (a bad reference: not retried) and
:class:`TransientStoreError` (5xx, throttling, connection trouble: retried with backoff).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from streams.settings import Settings


class StoreError(Exception):
    pass


class ObjectNotFound(StoreError):
    def __init__(self, key: str, bucket: str = "") -> None:
        where = f"s3://{bucket}/{key}" if bucket else key
        super().__init__(f"object not found: {where}")
        self.key = key


class InvalidKey(StoreError):
    """S3 refused the key itself (too long, not a valid name): the event's fault, not retried."""

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(f"S3 refused the key {key[:200]!a}: {reason}")
        self.key = key


class TransientStoreError(StoreError):
    """The store is unavailable or overloaded; the same call may succeed later."""


class PreconditionFailed(StoreError):
    """A conditional write lost: the object already exists."""


@runtime_checkable
class ObjectStore(Protocol):
    def put_file(self, key: str, path: str | Path, content_type: str | None = None) -> None: ...
    def put_bytes(self, key: str, data: bytes, content_type: str | None = None) -> None: ...
    def put_if_absent(self, key: str, data: bytes) -> bool: ...
    def get_file(self, key: str, path: str | Path) -> Path: ...
    def get_bytes(self, key: str) -> bytes: ...
    def exists(self, key: str) -> bool: ...
    def delete(self, key: str) -> None: ...
    def list(self, prefix: str) -> Iterator[str]: ...
    def size(self, key: str) -> int: ...
    def presign(self, key: str, expires_s: int) -> str: ...


def put_json(store: ObjectStore, key: str, value: Any) -> None:
    store.put_bytes(key, json.dumps(value, sort_keys=True).encode(), "application/json")


def get_json(store: ObjectStore, key: str) -> Any:
    return json.loads(store.get_bytes(key))


# --------------------------------------------------------------------------------------------------
# S3
# --------------------------------------------------------------------------------------------------

_TRANSIENT_CODES = {
    "InternalError",
    "ServiceUnavailable",
    "SlowDown",
    "RequestTimeout",
    "RequestTimeTooSkewed",
    "Throttling",
    "ThrottlingException",
    "500",
    "502",
    "503",
    "504",
}


# Refusals of the key itself. A HEAD answer has no body, so its 400 comes with the bare status.
_INVALID_KEY_CODES = {
    "KeyTooLongError",
    "InvalidObjectName",
    "InvalidURI",
    "InvalidKey",
    "InvalidRequest",  # SeaweedFS's answer to a '..' segment
    "400",
    "BadRequest",
}


class S3Store:
    """An S3 bucket through boto3, with standard-mode retries and multipart for large files."""

    def __init__(self, settings: Settings, bucket: str | None = None) -> None:
        import boto3
        from boto3.s3.transfer import TransferConfig
        from botocore.config import Config

        self.bucket = bucket or settings.storage.bucket
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or settings.storage.endpoint_url
        config = Config(
            retries={"max_attempts": settings.storage.max_attempts, "mode": "standard"},
            connect_timeout=5,
            read_timeout=60,
            s3={"addressing_style": "path"},
            signature_version="s3v4",
        )
        self.client = boto3.client(
            "s3", endpoint_url=endpoint, region_name=settings.storage.region, config=config
        )
        threshold = settings.storage.multipart_threshold_mb * 1024 * 1024
        self.transfer = TransferConfig(multipart_threshold=threshold, multipart_chunksize=threshold)

    # boto3 raises several exception families; one translation keeps callers simple.
    def _call(self, key: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        from botocore.exceptions import (
            BotoCoreError,
            ClientError,
            ParamValidationError,
        )
        from botocore.exceptions import (
            ConnectionError as BotoConnectionError,
        )

        try:
            return fn(*args, **kwargs)
        except ClientError as exc:
            error = exc.response.get("Error", {})
            code = str(error.get("Code", ""))
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
            if code in {"NoSuchKey", "404", "NotFound"}:
                raise ObjectNotFound(key, self.bucket) from None
            if code in {"PreconditionFailed", "412", "ConditionalRequestConflict"}:
                raise PreconditionFailed(key) from None
            if code in _TRANSIENT_CODES or status >= 500:
                raise TransientStoreError(f"S3 {code or status} on {key}") from exc
            if code in _INVALID_KEY_CODES:
                raise InvalidKey(key, f"{code} {error.get('Message', '')}".strip()) from exc
            raise StoreError(f"S3 {code}: {error.get('Message', exc)} ({key})") from exc
        except (ParamValidationError, UnicodeError) as exc:  # refused before anything is sent
            raise InvalidKey(key, f"{type(exc).__name__}: {exc}") from exc
        except (BotoConnectionError, BotoCoreError, OSError) as exc:
            raise TransientStoreError(f"S3 unreachable ({type(exc).__name__}) on {key}") from exc

    def ensure_bucket(self) -> None:
        from botocore.exceptions import ClientError

        try:
            self._call(self.bucket, self.client.head_bucket, Bucket=self.bucket)
        except StoreError as exc:
            cause = exc.__cause__
            if not isinstance(exc, ObjectNotFound) and not isinstance(cause, ClientError):
                raise
            self._call(self.bucket, self.client.create_bucket, Bucket=self.bucket)

    def put_file(self, key: str, path: str | Path, content_type: str | None = None) -> None:
        extra = {"ContentType": content_type} if content_type else None
        self._call(
            key,
            self.client.upload_file,
            str(path),
            self.bucket,
            key,
            ExtraArgs=extra,
            Config=self.transfer,
        )

    def put_bytes(self, key: str, data: bytes, content_type: str | None = None) -> None:
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Key": key, "Body": data}
        if content_type:
            kwargs["ContentType"] = content_type
        self._call(key, self.client.put_object, **kwargs)

    def put_if_absent(self, key: str, data: bytes) -> bool:
        """Write only when no object exists (S3 conditional write); False when one does."""
        try:
            self._call(
                key, self.client.put_object, Bucket=self.bucket, Key=key, Body=data, IfNoneMatch="*"
            )
        except PreconditionFailed:
            return False
        return True

    def get_file(self, key: str, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        # Download beside the target and rename, so a half-written file never looks complete.
        partial = path.with_name(path.name + ".part")
        self._call(
            key, self.client.download_file, self.bucket, key, str(partial), Config=self.transfer
        )
        partial.replace(path)
        return path

    def get_bytes(self, key: str) -> bytes:
        response = self._call(key, self.client.get_object, Bucket=self.bucket, Key=key)
        return self._call(key, response["Body"].read)  # type: ignore[no-any-return]

    def exists(self, key: str) -> bool:
        try:
            self._call(key, self.client.head_object, Bucket=self.bucket, Key=key)
        except ObjectNotFound:
            return False
        return True

    def size(self, key: str) -> int:
        head = self._call(key, self.client.head_object, Bucket=self.bucket, Key=key)
        return int(head["ContentLength"])

    def delete(self, key: str) -> None:
        self._call(key, self.client.delete_object, Bucket=self.bucket, Key=key)

    def list(self, prefix: str) -> Iterator[str]:
        paginator = self.client.get_paginator("list_objects_v2")
        pages = self._call(
            prefix, lambda: list(paginator.paginate(Bucket=self.bucket, Prefix=prefix))
        )
        for page in pages:
            for item in page.get("Contents", []):
                yield item["Key"]

    def presign(self, key: str, expires_s: int) -> str:
        return self._call(  # type: ignore[no-any-return]
            key,
            self.client.generate_presigned_url,
            "get_object",
            Params={"Bucket": self.bucket, "Key": key},
            ExpiresIn=expires_s,
        )


# --------------------------------------------------------------------------------------------------
# Local directory
# --------------------------------------------------------------------------------------------------


class LocalStore:
    """Objects as files under a root folder: the store of `singtome cover` and of unit tests."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if self.root not in path.parents:
            raise StoreError(f"key escapes the store: {key!r}")
        return path

    def _write(self, key: str, write: Any) -> None:
        target = self._path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".part-")
        os.close(fd)
        try:
            write(tmp)
            os.replace(tmp, target)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    def put_file(self, key: str, path: str | Path, content_type: str | None = None) -> None:
        self._write(key, lambda tmp: shutil.copyfile(path, tmp))

    def put_bytes(self, key: str, data: bytes, content_type: str | None = None) -> None:
        self._write(key, lambda tmp: Path(tmp).write_bytes(data))

    def put_if_absent(self, key: str, data: bytes) -> bool:
        target = self._path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            with open(target, "xb") as handle:
                handle.write(data)
        except FileExistsError:
            return False
        return True

    def get_file(self, key: str, path: str | Path) -> Path:
        source = self._path(key)
        if not source.is_file():
            raise ObjectNotFound(key)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, path)
        return path

    def get_bytes(self, key: str) -> bytes:
        source = self._path(key)
        if not source.is_file():
            raise ObjectNotFound(key)
        return source.read_bytes()

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def size(self, key: str) -> int:
        source = self._path(key)
        if not source.is_file():
            raise ObjectNotFound(key)
        return source.stat().st_size

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def list(self, prefix: str) -> Iterator[str]:
        for path in sorted(self.root.rglob("*")):
            if path.is_file() and not path.name.startswith(".part-"):
                key = path.relative_to(self.root).as_posix()
                if key.startswith(prefix):
                    yield key

    def presign(self, key: str, expires_s: int) -> str:
        return self._path(key).as_uri()


def open_store(settings: Settings) -> ObjectStore:
    return S3Store(settings)
