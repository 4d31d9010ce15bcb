"""Artifact stores: `open_store` picks the implementation from the URI scheme."""

from __future__ import annotations

from pipeline.config import StoreConfig
from pipeline.errors import ConfigError
from pipeline.storage.base import ArtifactStore, ObjectInfo, sha256_file

__all__ = ["ArtifactStore", "ObjectInfo", "open_store", "sha256_file"]


def open_store(config: StoreConfig, session=None) -> ArtifactStore:
    """Open the store at `config.uri`: `s3://bucket/prefix` or a local directory (`file://` optional).

    `session` is an optional boto3 session. Without one, and with `config.aws_conn_id` set, the
    session and the endpoint URL come from that Airflow connection. `config.endpoint_url` and
    `config.region` take precedence over the connection's values.
    """
    uri = config.uri
    if uri.startswith("s3://"):
        from pipeline.storage.s3 import S3Store

        endpoint_url = config.endpoint_url
        if session is None and config.aws_conn_id:
            from pipeline.storage.aws_connection import session_from_airflow

            session, connection_endpoint = session_from_airflow(config.aws_conn_id)
            endpoint_url = endpoint_url or connection_endpoint
        return S3Store.from_uri(
            uri,
            endpoint_url=endpoint_url,
            region=config.region,
            session=session,
            create_bucket=config.create_bucket,
        )
    if "://" in uri and not uri.startswith("file://"):
        raise ConfigError("store_uri", uri, "must be a local directory, file://PATH or s3://BUCKET[/PREFIX]")
    from pipeline.storage.local import LocalStore

    return LocalStore(uri.removeprefix("file://"))
