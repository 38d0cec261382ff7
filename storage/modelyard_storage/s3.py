"""The S3 backend (boto3), for any S3-compatible endpoint.

Imported only when an s3:// URI is opened. Every botocore failure becomes a StorageError
whose reason says what a person must fix (a missing bucket, a missing object, refused
credentials, an endpoint that does not answer) and whose message never holds a credential.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn

import boto3
import botocore.config
import botocore.exceptions

from modelyard_storage.connection import S3Connection
from modelyard_storage.digest import CHUNK_BYTES, METADATA_SHA256, sha256_of
from modelyard_storage.errors import StorageError, StorageErrorReason
from modelyard_storage.redact import scrub
from modelyard_storage.store import Store, write_stream_atomically
from modelyard_storage.uri import S3Uri, UriError, parse_s3_uri

_DENIED = {
    "AccessDenied",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "InvalidToken",
    "ExpiredToken",
    "Forbidden",
    "403",
    # versitygw answers an unknown access key id with 404 and this code.
    "XAdminUserNotFound",
}
_NOT_FOUND = {"NoSuchKey", "NotFound", "404"}
_UNREACHABLE = (
    botocore.exceptions.EndpointConnectionError,
    botocore.exceptions.ConnectTimeoutError,
    botocore.exceptions.ReadTimeoutError,
    botocore.exceptions.ConnectionClosedError,
)


class S3Store(Store):
    def __init__(self, connection: S3Connection) -> None:
        self.connection = connection
        self.endpoint = connection.endpoint_url or f"AWS S3 ({connection.region})"
        config = botocore.config.Config(
            region_name=connection.region,
            s3={"addressing_style": connection.addressing_style},
            connect_timeout=connection.connect_timeout_seconds,
            read_timeout=60,
            retries={"max_attempts": connection.max_attempts, "mode": "standard"},
        )
        # A session of our own: no profile file, no surprise from ~/.aws of the machine.
        session = boto3.session.Session()
        self.client: Any = session.client("s3", endpoint_url=connection.endpoint_url, config=config)

    # --- the Store interface ------------------------------------------------------------------

    def download(
        self, uri: str, dest: Path, sha256: str | None = None, max_bytes: int | None = None
    ) -> str:
        where = self._parse(uri)
        try:
            response = self.client.get_object(Bucket=where.bucket, Key=where.key)
        except Exception as error:
            self._raise(error, where, "download")
        recorded = (response.get("Metadata") or {}).get(METADATA_SHA256)
        body = response["Body"]
        try:
            # The size the store announces refuses a big object before its body is read; the
            # count while streaming holds a store that announces less than it sends.
            return write_stream_atomically(
                self._chunks(body, where),
                dest,
                str(where),
                [sha256, recorded],
                max_bytes,
                response.get("ContentLength"),
            )
        except StorageError as error:
            if error.reason == "ChecksumMismatch" and sha256 and sha256 not in error.message:
                error.message += f" (expected sha256 {sha256.lower()})"
                error.args = (error.message,)
            raise
        finally:
            body.close()

    def upload(self, source: Path, uri: str) -> str:
        where = self._parse(uri)
        digest = sha256_of(source)
        try:
            # One PUT (or one completed multipart upload) is atomic: readers see the old
            # object or the whole new one, never a part.
            self.client.upload_file(
                str(source),
                where.bucket,
                where.key,
                ExtraArgs={"Metadata": {METADATA_SHA256: digest}},
            )
        except Exception as error:
            cause = getattr(error, "last_exception", None) or error.__cause__ or error
            self._raise(cause if isinstance(cause, Exception) else error, where, "upload")
        return digest

    def exists(self, uri: str) -> bool:
        where = self._parse(uri)
        try:
            self.client.head_object(Bucket=where.bucket, Key=where.key)
        except botocore.exceptions.ClientError as error:
            if _code(error) in _NOT_FOUND:
                self._check_bucket(where)
                return False
            self._raise(error, where, "check")
        except Exception as error:
            self._raise(error, where, "check")
        return True

    def listdir(self, prefix: str) -> list[str]:
        where = self._parse(prefix)
        base = where.key.rstrip("/") + "/" if where.key else ""
        names: list[str] = []
        try:
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=where.bucket, Prefix=base
            )
            for page in pages:
                names += [item["Key"][len(base) :] for item in page.get("Contents") or []]
        except Exception as error:
            self._raise(error, where, "list")
        return sorted(names)

    def delete(self, uri: str) -> None:
        where = self._parse(uri)
        try:
            self.client.delete_object(Bucket=where.bucket, Key=where.key)
        except Exception as error:
            self._raise(error, where, "delete")

    # --- helpers ------------------------------------------------------------------------------

    def _parse(self, uri: str) -> S3Uri:
        try:
            return parse_s3_uri(uri)
        except UriError as error:
            raise StorageError("InvalidUri", str(error)) from None

    def _chunks(self, body: Any, where: S3Uri) -> Iterator[bytes]:
        try:
            while chunk := body.read(CHUNK_BYTES):
                yield chunk
        except botocore.exceptions.FlexibleChecksumError as error:
            # The store's own checksum (recorded at upload) disagrees with the bytes it sent.
            raise StorageError(
                "ChecksumMismatch",
                f"{where} at {self.endpoint} is damaged: its content does not match the "
                f"checksum recorded at upload ({error})",
            ) from None
        except _UNREACHABLE as error:
            raise StorageError(
                "Unreachable", f"reading {where} from {self.endpoint} broke off: {error}"
            ) from None

    def _check_bucket(self, where: S3Uri) -> None:
        """A 404 on an object: tell a missing bucket from a missing key."""
        try:
            self.client.head_bucket(Bucket=where.bucket)
        except Exception as error:
            self._raise(error, S3Uri(where.bucket, ""), "check")

    def _bucket_exists(self, bucket: str) -> bool:
        """False only when the store says the bucket is missing; any other answer: True."""
        try:
            self.client.head_bucket(Bucket=bucket)
        except botocore.exceptions.ClientError as error:
            return _code(error) not in (*_NOT_FOUND, "NoSuchBucket")
        except Exception:
            return True  # the first answer stands
        return True

    def _raise(self, error: BaseException, where: S3Uri, action: str) -> NoReturn:
        reason, message = self._explain(error, where, action)
        raise StorageError(reason, scrub(message)) from None

    def _explain(
        self, error: BaseException, where: S3Uri, action: str
    ) -> tuple[StorageErrorReason, str]:
        at = f"at {self.endpoint}"
        if isinstance(error, _UNREACHABLE):
            return "Unreachable", f"cannot {action} {where}: S3 endpoint {at} unreachable: {error}"
        if isinstance(error, botocore.exceptions.NoCredentialsError):
            return (
                "AccessDenied",
                f"cannot {action} {where}: no S3 credentials (set s3.secretName to a Secret "
                "with the access keys)",
            )
        if isinstance(error, botocore.exceptions.ClientError):
            code = _code(error)
            text = (error.response.get("Error") or {}).get("Message") or code
            missing_bucket: tuple[StorageErrorReason, str] = (
                "BucketNotFound",
                f"cannot {action} {where}: bucket {where.bucket!r} {at} does not exist",
            )
            if code == "NoSuchBucket":
                return missing_bucket
            if code in _NOT_FOUND:
                if action != "download" or not self._bucket_exists(where.bucket):
                    return missing_bucket
                return "NotFound", f"cannot {action} {where}: no such object {at}"
            status = (error.response.get("ResponseMetadata") or {}).get("HTTPStatusCode")
            # Servers name refusals differently (XAdminUserNotFound, ...); 403 says it all.
            if code in _DENIED or status == 403:
                return (
                    "AccessDenied",
                    f"cannot {action} {where}: access denied {at} ({code}: {text}); check the "
                    "access keys in the Secret named by s3.secretName and the bucket's policy",
                )
            return "Failed", f"cannot {action} {where} {at}: {code}: {text}"
        if isinstance(error, botocore.exceptions.BotoCoreError):
            return "Failed", f"cannot {action} {where} {at}: {error}"
        return "Failed", f"cannot {action} {where} {at}: {type(error).__name__}: {error}"


def _code(error: botocore.exceptions.ClientError) -> str:
    return str((error.response.get("Error") or {}).get("Code") or "")
