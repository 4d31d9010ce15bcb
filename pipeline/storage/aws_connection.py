"""boto3 sessions built from an Airflow AWS connection, so credentials live in Airflow, not in Params."""

from __future__ import annotations

import logging

from pipeline.errors import ConfigError

logger = logging.getLogger(__name__)


def session_from_airflow(aws_conn_id: str):
    """Return `(session, endpoint_url)` for the Airflow connection `aws_conn_id`.

    The session comes from the Amazon provider's `AwsBaseHook`, so it honours everything that
    connection type supports (login and password as access keys, profiles, assumed roles, the region
    in the extra). `endpoint_url` is the connection's `endpoint_url` extra, or its S3 service
    endpoint, or None for AWS itself. Airflow is imported here, not at module level, so the pipeline
    runs without it.
    """
    try:
        from airflow.providers.amazon.aws.hooks.base_aws import AwsBaseHook
    except ImportError as error:
        rule = "requires apache-airflow-providers-amazon: install it or unset store_aws_conn_id"
        raise ConfigError("store_aws_conn_id", aws_conn_id, rule) from error

    hook = AwsBaseHook(aws_conn_id=aws_conn_id, client_type="s3")
    connection = hook.conn_config
    # The provider falls back to an empty connection when the id is unknown, which hides a typo.
    if not isinstance(connection.conn_id, str):
        raise ConfigError(
            "store_aws_conn_id",
            aws_conn_id,
            "no Airflow connection has this id: create it in Admin > Connections or set AIRFLOW_CONN_<ID>",
        )

    session = hook.get_session(region_name=hook.region_name)
    endpoint_url = connection.get_service_endpoint_url(service_name="s3")
    logger.info(
        "using Airflow connection %s (region %s, endpoint %s)", aws_conn_id, session.region_name, endpoint_url or "AWS"
    )
    return session, endpoint_url
