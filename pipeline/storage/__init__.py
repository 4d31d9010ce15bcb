"""Artifact stores: `open_store` picks the implementation from the URI scheme."""

from __future__ import annotations

from pipeline.config import StoreConfig
from pipeline.errors import ConfigError
from pipeline.storage.base import ArtifactStore, ObjectInfo, sha256_file

__all__ = ["ArtifactStore", "ObjectInfo", "open_store", "sha256_file"]


def open_store(config: StoreConfig, session=None, create: bool = True) -> ArtifactStore:
    """Open the store at `config.uri`: `s3://bucket/prefix` or a local directory (`file://` optional).

    `session` is an optional boto3 session. Without one, credentials come from, in this order: the
    Airflow connection `config.aws_conn_id` (which also gives the endpoint URL), the named profile
    `config.profile` of the AWS config files, or boto3's default chain (environment variables,
    files, instance roles). `config.endpoint_url` and `config.region` take precedence over the
    connection's values. Credentials are never logged. With `create` false, a missing local store
    directory raises StoreError instead of being created (for commands that only read).
    """
    uri = config.uri
    if uri.startswith("s3://"):
        from pipeline.storage.s3 import S3Store

        endpoint_url = config.endpoint_url
        if session is None and config.aws_conn_id:
            from pipeline.storage.aws_connection import session_from_airflow

            session, connection_endpoint = session_from_airflow(config.aws_conn_id)
            endpoint_url = endpoint_url or connection_endpoint
        elif session is None and config.profile:
            session = _profile_session(config.profile)
        return S3Store.from_uri(
            uri,
            endpoint_url=endpoint_url,
            region=config.region,
            session=session,
            create_bucket=config.create_bucket,
            max_retries=config.max_retries,
        )
    if "://" in uri and not uri.startswith("file://"):
        raise ConfigError("store_uri", uri, "must be a local directory, file://PATH or s3://BUCKET[/PREFIX]")
    from pipeline.storage.local import LocalStore

    return LocalStore(uri.removeprefix("file://"), create=create)


def _profile_session(profile: str):
    """Return a boto3 session for the named profile of ~/.aws/config and ~/.aws/credentials."""
    import boto3
    from botocore.exceptions import ProfileNotFound

    try:
        return boto3.session.Session(profile_name=profile)
    except ProfileNotFound as error:
        raise ConfigError(
            "store_profile", profile, "no such profile in the AWS config files: add it, or unset store_profile"
        ) from error
