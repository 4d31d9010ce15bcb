#!/usr/bin/env bash
# Entrypoint of the airflow-init service. It checks the secrets from docker/.env, then hands over
# to the Airflow image's entrypoint, which migrates the metadata database (_AIRFLOW_DB_MIGRATE) and
# creates the admin user (_AIRFLOW_WWW_USER_CREATE). The service fails unless every migration has
# been applied, so the other Airflow services, which wait for it, never start on a bad setup.
set -euo pipefail

secrets=(POSTGRES_PASSWORD AIRFLOW_ADMIN_PASSWORD AIRFLOW_FERNET_KEY AIRFLOW_JWT_SECRET AIRFLOW_API_SECRET_KEY MINIO_ROOT_PASSWORD)
# Values that the compose file embeds in URLs (the database URL) or JSON (the gan_store connection).
url_safe=(POSTGRES_PASSWORD MINIO_ROOT_USER MINIO_ROOT_PASSWORD)
generate_secret='python3 -c "import secrets; print(secrets.token_urlsafe(32))"'
generate_fernet_key='python3 -c "import base64, os; print(base64.urlsafe_b64encode(os.urandom(32)).decode())"'

failed=0
report() {
    echo "airflow-init: $1" >&2
    failed=1
}

for name in "${secrets[@]}"; do
    value="${!name:-}"
    generator="${generate_secret}"
    [[ "${name}" == AIRFLOW_FERNET_KEY ]] && generator="${generate_fernet_key}"
    if [[ -z "${value}" || "${value}" == change-me* ]]; then
        report "${name} in docker/.env is missing or still a change-me placeholder; set it to the output of: ${generator}"
    fi
done

for name in "${url_safe[@]}"; do
    value="${!name:-}"
    if [[ -n "${value}" && ! "${value}" =~ ^[A-Za-z0-9_-]+$ ]]; then
        report "${name} in docker/.env is invalid: use only letters, digits, '-' and '_', because it is embedded in URLs and JSON"
    fi
done

if [[ -n "${AIRFLOW_FERNET_KEY:-}" && "${AIRFLOW_FERNET_KEY}" != change-me* ]]; then
    if ! python3 -c 'import os; from cryptography.fernet import Fernet; Fernet(os.environ["AIRFLOW_FERNET_KEY"])' 2>/dev/null; then
        report "AIRFLOW_FERNET_KEY in docker/.env is not a valid Fernet key (32 url-safe base64-encoded bytes); generate one with: ${generate_fernet_key}"
    fi
fi

if ((failed)); then
    echo "airflow-init: fix docker/.env, then run the same 'docker compose ... up -d' again" >&2
    exit 1
fi

pool="${GAN_PIPELINE_TRAINING_POOL:-default_pool}"
slots="${GAN_PIPELINE_TRAINING_POOL_SLOTS:-1}"
if [[ ! "${slots}" =~ ^[1-9][0-9]*$ ]]; then
    report "GAN_PIPELINE_TRAINING_POOL_SLOTS in docker/.env is invalid: use a positive whole number of GPUs, not '${slots}'"
    exit 1
fi

echo "airflow-init: secrets checked; migrating the metadata database, creating user ${_AIRFLOW_WWW_USER_USERNAME:-admin} and pool ${pool} with ${slots} slots"
# The image's entrypoint migrates first and then runs the bash command.
# NOTE: no Docker engine was available to run this against the official image; only a stub entrypoint was. AIRFLOW_ENTRYPOINT
# replaces that entrypoint in tests of this script.
exec "${AIRFLOW_ENTRYPOINT:-/entrypoint}" bash -c \
    'airflow db check-migrations --migration-wait-timeout 60 && airflow pools set "$1" "$2" "GPU slots of train_gan"' \
    airflow-init "${pool}" "${slots}"
