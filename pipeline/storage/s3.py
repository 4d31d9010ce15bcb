"""Artifact store in an S3 bucket: AWS S3 or any S3-compatible server (MinIO, Ceph) through boto3.

Every object carries the sha256 of its content in the user metadata `x-amz-meta-sha256`, so a
retried upload of identical content is skipped after one HEAD request. Every boto3 or connection
failure becomes a `StoreError` naming the endpoint, the bucket and the key, never credentials.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import boto3
from boto3.exceptions import Boto3Error
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from pipeline.errors import ConfigError, StoreError
from pipeline.storage.base import ArtifactStore, ObjectInfo, VersionedObject, check_key, sha256_file

logger = logging.getLogger(__name__)

SHA256_METADATA = "sha256"
"""User metadata name of the content sha256; S3 sends it as the header `x-amz-meta-sha256`."""

MIN_PART_BYTES = 5 * 1024 * 1024
"""Smallest part S3 accepts in a multipart upload, except for the last part."""

DEFAULT_MULTIPART_BYTES = 8 * 1024 * 1024

_MISSING_CODES = frozenset({"404", "NoSuchKey", "NotFound"})
# S3 returns 412 when an If-Match or If-None-Match condition fails, and 409 when another
# conditional write to the same key is in flight. Both mean "read again and retry".
_CONFLICT_CODES = frozenset({"PreconditionFailed", "412", "ConditionalRequestConflict", "409"})
_READ_CHUNK_BYTES = 1 << 20

_BUCKET_PATTERN = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_IPV4_PATTERN = re.compile(r"^\d{1,3}(\.\d{1,3}){3}$")
_RESERVED_PREFIXES = ("xn--", "sthree-", "amzn-s3-demo-")
_RESERVED_SUFFIXES = ("-s3alias", "--ol-s3", ".mrap", "--x-s3")


def check_bucket_name(bucket: str, uri: str) -> str:
    """Return `bucket` if it follows the S3 naming rules for general purpose buckets, else raise ConfigError.

    The rules come from the AWS S3 user guide, "General purpose bucket naming rules". A name has 3 to
    63 lowercase letters, digits, '.' and '-', and starts and ends with a letter or digit. It has no
    '..', is not an IPv4 address, and uses none of the prefixes and suffixes that AWS reserves.
    """
    rule = None
    if not _BUCKET_PATTERN.match(bucket):
        rule = "must be 3-63 lowercase letters, digits, '.' or '-', starting and ending with a letter or digit"
    elif ".." in bucket:
        rule = "must not contain '..'"
    elif _IPV4_PATTERN.match(bucket):
        rule = "must not look like an IP address"
    elif bucket.startswith(_RESERVED_PREFIXES) or bucket.endswith(_RESERVED_SUFFIXES):
        rule = f"must not start with {_RESERVED_PREFIXES} or end with {_RESERVED_SUFFIXES}"
    if rule is not None:
        raise ConfigError("store_uri", uri, f"bucket name {bucket!r} {rule}")
    return bucket


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """Split `s3://bucket[/prefix]` into a validated bucket name and a prefix without outer slashes."""
    if not uri.startswith("s3://"):
        raise ConfigError("store_uri", uri, "must start with s3://")
    bucket, _, prefix = uri.removeprefix("s3://").partition("/")
    check_bucket_name(bucket, uri)

    prefix = prefix.strip("/")
    if prefix and any(part in ("", ".", "..") for part in prefix.split("/")):
        raise ConfigError("store_uri", uri, "prefix must be a relative path without empty, '.' or '..' parts")
    return bucket, prefix


def client_config(
    endpoint_url: str | None, max_retries: int, connect_timeout_s: float, read_timeout_s: float
) -> Config:
    """Build the botocore config: retries, timeouts, checksums and, for custom endpoints, path-style URLs.

    botocore's `max_attempts` counts retries after the first request, so a request is sent at
    most `max_retries + 1` times.

    boto3 1.36 and later add CRC checksums to every request by default, which some S3-compatible
    servers reject, so checksums are sent and validated only where the S3 API requires them.
    """
    options = {
        "retries": {"mode": "adaptive", "max_attempts": max_retries},
        "connect_timeout": connect_timeout_s,
        "read_timeout": read_timeout_s,
        "request_checksum_calculation": "when_required",
        "response_checksum_validation": "when_required",
    }
    if endpoint_url:
        # MinIO and most self-hosted servers do not resolve bucket names as DNS subdomains.
        options["s3"] = {"addressing_style": "path"}
    return Config(**options)


class S3Store(ArtifactStore):
    """Objects under `s3://bucket/prefix/`; keys passed to the methods are relative to the prefix.

    The bucket is checked on the first request, not at construction: a missing bucket is created
    when `create_bucket` is true and raises StoreError otherwise.
    """

    def __init__(
        self,
        client,
        bucket: str,
        prefix: str = "",
        *,
        create_bucket: bool = False,
        transfer_config: TransferConfig | None = None,
    ):
        self.client = client
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.create_bucket = create_bucket
        self.transfer_config = transfer_config or TransferConfig()
        self.uri = f"s3://{bucket}/{self.prefix}" if self.prefix else f"s3://{bucket}"
        self._bucket_checked = False

    @classmethod
    def from_uri(
        cls,
        uri: str,
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        session=None,
        create_bucket: bool = False,
        max_retries: int = 4,
        connect_timeout_s: float = 10.0,
        read_timeout_s: float = 60.0,
        multipart_threshold_bytes: int = DEFAULT_MULTIPART_BYTES,
    ) -> "S3Store":
        """Open `s3://bucket[/prefix]` without sending any request.

        `session` is a boto3 session (default: a new one reading the usual AWS environment variables
        and files). `endpoint_url` selects an S3-compatible server such as `http://127.0.0.1:9000`.
        A failed request is retried up to `max_retries` times with adaptive backoff. Files of at
        least `multipart_threshold_bytes` go up in parts of that size (at least 5 MiB).
        """
        bucket, prefix = parse_s3_uri(uri)
        config = client_config(endpoint_url, max_retries, connect_timeout_s, read_timeout_s)
        session = session or boto3.session.Session()
        try:
            client = session.client("s3", endpoint_url=endpoint_url, region_name=region, config=config)
        except ValueError as error:
            raise ConfigError("store_endpoint_url", endpoint_url, f"must be an http(s) URL ({error})") from error

        transfer_config = TransferConfig(
            multipart_threshold=multipart_threshold_bytes,
            multipart_chunksize=max(multipart_threshold_bytes, MIN_PART_BYTES),
        )
        return cls(client, bucket, prefix, create_bucket=create_bucket, transfer_config=transfer_config)

    @property
    def endpoint(self) -> str:
        """The URL that requests go to, as boto3 resolved it."""
        return self.client.meta.endpoint_url

    def put_file(self, key: str, path: str | Path) -> None:
        digest = sha256_file(path)
        if self._stored_sha256(key) == digest:
            logger.debug("skipped upload of %s because it already has sha256 %s", self.location(key), digest)
            return

        size = os.path.getsize(path)
        if size >= self.transfer_config.multipart_threshold:
            self._abort_unfinished_uploads(key)

        started = time.monotonic()
        with self._errors("upload", key):
            self.client.upload_file(
                str(path),
                self.bucket,
                self._full_key(key),
                ExtraArgs={"Metadata": {SHA256_METADATA: digest}},
                Config=self.transfer_config,
            )
        elapsed = max(time.monotonic() - started, 1e-6)
        logger.info(
            "uploaded %s: %.1f MB in %.1f s (%.1f MB/s)", self.location(key), size / 1e6, elapsed, size / 1e6 / elapsed
        )

    def put_bytes(self, key: str, data: bytes) -> None:
        digest = hashlib.sha256(data).hexdigest()
        if self._stored_sha256(key) == digest:
            logger.debug("skipped upload of %s because it already has sha256 %s", self.location(key), digest)
            return

        with self._errors("upload", key):
            self.client.put_object(
                Bucket=self.bucket, Key=self._full_key(key), Body=data, Metadata={SHA256_METADATA: digest}
            )

    def get_versioned(self, key: str) -> VersionedObject | None:
        """Return the content of `key` with its ETag as the version token, or None when missing."""
        with self._errors("download", key):
            try:
                response = self.client.get_object(Bucket=self.bucket, Key=self._full_key(key))
            except ClientError as error:
                if _is_missing(error):
                    return None
                raise
            return VersionedObject(data=response["Body"].read(), version=response["ETag"])

    def put_bytes_if(self, key: str, data: bytes, expected_version: str | None) -> bool:
        """Write with `If-Match: <ETag>`, or `If-None-Match: *` when `expected_version` is None.

        S3 has evaluated these conditions atomically on PutObject since August 2024 (If-None-Match)
        and November 2024 (If-Match). A server that ignores them makes this an unconditional write.
        """
        # NOTE: MinIO and Ceph support both headers in current releases; older servers may not.
        condition = {"IfNoneMatch": "*"} if expected_version is None else {"IfMatch": expected_version}
        digest = hashlib.sha256(data).hexdigest()
        with self._errors("conditional upload", key):
            try:
                self.client.put_object(
                    Bucket=self.bucket,
                    Key=self._full_key(key),
                    Body=data,
                    Metadata={SHA256_METADATA: digest},
                    **condition,
                )
            except ClientError as error:
                if _error_code(error) in _CONFLICT_CODES or (expected_version is not None and _is_missing(error)):
                    code = _error_code(error)
                    logger.info("conditional write of %s lost to another writer (%s)", self.location(key), code)
                    return False
                raise
        return True

    def unfinished_uploads(self, key: str | None = None) -> list[dict]:
        """Return the multipart uploads started but neither completed nor aborted, under the prefix or for `key`."""
        if key is not None:
            full_prefix = self._full_key(key)
        elif self.prefix:
            full_prefix = f"{self.prefix}/"
        else:
            full_prefix = ""
        with self._errors("list uploads", key):
            response = self.client.list_multipart_uploads(Bucket=self.bucket, Prefix=full_prefix)
        uploads = response.get("Uploads", [])
        if key is not None:
            uploads = [upload for upload in uploads if upload["Key"] == full_prefix]
        return uploads

    def _abort_unfinished_uploads(self, key: str) -> None:
        """Abort multipart uploads of exactly `key` that an earlier, failed attempt left behind.

        Their parts are invisible to readers but are stored and billed until aborted.
        """
        # NOTE: this also aborts an upload of the same key still in flight elsewhere. Airflow runs
        # the attempts of a task one after another, so that happens only with a zombie worker.
        for upload in self.unfinished_uploads(key):
            with self._errors("abort upload", key):
                self.client.abort_multipart_upload(
                    Bucket=self.bucket, Key=upload["Key"], UploadId=upload["UploadId"]
                )
            logger.info("aborted unfinished multipart upload %s of %s", upload["UploadId"], self.location(key))

    def get_file(self, key: str, path: str | Path) -> Path:
        destination = Path(path)
        destination.parent.mkdir(parents=True, exist_ok=True)
        partial = destination.with_name(destination.name + ".partial")
        try:
            with self._errors("download", key):
                self.client.download_file(self.bucket, self._full_key(key), str(partial), Config=self.transfer_config)
            os.replace(partial, destination)
        finally:
            partial.unlink(missing_ok=True)
        return destination

    def get_bytes(self, key: str) -> bytes:
        with self._errors("download", key):
            response = self.client.get_object(Bucket=self.bucket, Key=self._full_key(key))
            return response["Body"].read()

    def sha256(self, key: str) -> str:
        """Return the sha256 from the object's metadata, or download and hash objects written without it."""
        with self._errors("read", key):
            head = self.client.head_object(Bucket=self.bucket, Key=self._full_key(key))
        stored = head.get("Metadata", {}).get(SHA256_METADATA)
        if stored:
            return stored

        digest = hashlib.sha256()
        with self._errors("download", key):
            body = self.client.get_object(Bucket=self.bucket, Key=self._full_key(key))["Body"]
            for chunk in iter(lambda: body.read(_READ_CHUNK_BYTES), b""):
                digest.update(chunk)
        return digest.hexdigest()

    def exists(self, key: str) -> bool:
        return self._head(key) is not None

    def list(self, prefix: str = "") -> list[ObjectInfo]:
        full_prefix = f"{self.prefix}/{prefix}" if self.prefix else prefix
        skip = len(self.prefix) + 1 if self.prefix else 0
        objects = []
        with self._errors("list", None, target=f"s3://{self.bucket}/{full_prefix}"):
            self._ensure_bucket()
            pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=full_prefix)
            for page in pages:
                for item in page.get("Contents", []):
                    objects.append(ObjectInfo(key=item["Key"][skip:], size=item["Size"]))
        return sorted(objects, key=lambda info: info.key)

    def delete(self, key: str) -> None:
        with self._errors("delete", key):
            self.client.delete_object(Bucket=self.bucket, Key=self._full_key(key))

    def location(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._full_key(key)}"

    def _full_key(self, key: str) -> str:
        check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def _head(self, key: str) -> dict | None:
        """Return the HEAD response of `key`, or None when the object does not exist."""
        with self._errors("read", key):
            try:
                return self.client.head_object(Bucket=self.bucket, Key=self._full_key(key))
            except ClientError as error:
                if _is_missing(error):
                    return None
                raise

    def _stored_sha256(self, key: str) -> str | None:
        """Return the sha256 metadata of `key`, or None when the object or the metadata is missing."""
        head = self._head(key)
        if head is None:
            return None
        return head.get("Metadata", {}).get(SHA256_METADATA)

    def _ensure_bucket(self) -> None:
        """Check once that the bucket exists, creating it when `create_bucket` is set."""
        if self._bucket_checked:
            return

        try:
            self.client.head_bucket(Bucket=self.bucket)
        except ClientError as error:
            if not (_is_missing(error) or _error_code(error) == "NoSuchBucket"):
                raise
            if not self.create_bucket:
                raise StoreError(
                    f"bucket {self.bucket!r} not found at endpoint {self.endpoint}: create it, "
                    "or set store_create_bucket=true to let the pipeline create it"
                ) from error
            self._create_bucket()
        self._bucket_checked = True

    def _create_bucket(self) -> None:
        region = self.client.meta.region_name
        request = {"Bucket": self.bucket}
        if region and region != "us-east-1":
            request["CreateBucketConfiguration"] = {"LocationConstraint": region}
        try:
            self.client.create_bucket(**request)
        except ClientError as error:
            # Another worker may have created it between our HEAD and CREATE requests.
            if _error_code(error) != "BucketAlreadyOwnedByYou":
                raise
        logger.info("created bucket %s at endpoint %s", self.bucket, self.endpoint)

    @contextmanager
    def _errors(self, action: str, key: str | None, target: str | None = None) -> Iterator[None]:
        """Check the bucket, then turn boto3 and connection failures of the block into StoreError.

        `target` names what failed in the message, by default the location of `key`.
        """
        target = target or (self.location(key) if key else self.uri)
        try:
            self._ensure_bucket()
            yield
        except StoreError:
            raise
        except (ClientError, BotoCoreError, Boto3Error) as error:
            if _is_missing(error) and key is not None:
                message = f"object {key!r} not found in store {self.uri} at endpoint {self.endpoint}"
            else:
                message = f"S3 {action} of {target} at endpoint {self.endpoint} failed: {error}"
            raise StoreError(message) from error


def _error_code(error: BaseException | None) -> str:
    if isinstance(error, ClientError):
        return str(error.response.get("Error", {}).get("Code", ""))
    return ""


def _is_missing(error: BaseException | None) -> bool:
    """Return whether a boto3 error means 'no such object'."""
    return _error_code(error) in _MISSING_CODES
