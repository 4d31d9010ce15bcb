#!/usr/bin/env bash
# Install what the demo and the tests need on a Debian machine: Debian packages (when apt-get and
# root are available), then a virtual environment with this package and its extras.
# Usage: scripts/setup.sh VENV_DIR EXTRAS   (EXTRAS such as "cpu,airflow" or "test")
set -euo pipefail

venv="${1:-.venv}"
extras="${2:-test}"
# docker-compose only validates docker/docker-compose.yaml in the tests; no engine is needed.
# chromium renders report.html and drives the Airflow UI in tests; postgresql is the
# metadata database of the real Airflow services test.
debian_packages=(dataset-fashion-mnist docker-compose postgresql chromium chromium-driver)

missing=()
for package in "${debian_packages[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "ok installed" || missing+=("$package")
done
if ((${#missing[@]})); then
    if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    else
        echo "setup: Debian packages missing: ${missing[*]}; install them with apt-get as root" >&2
    fi
fi

python="${PYTHON:-python3}"
if [ ! -x "$venv/bin/python" ]; then
    "$python" -m venv "$venv"
fi
stamp="$venv/.installed-$extras"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    "$venv/bin/python" -m pip install -q --upgrade pip
    "$venv/bin/python" -m pip install -q -e ".[$extras]"
    touch "$stamp"
fi
