#!/usr/bin/env bash
# Make sure Prometheus Alertmanager is installed: the real receiver the alert tests
# post to (tests/test_alertmanager.py starts its own instance on loopback). Installs
# Debian's prometheus-alertmanager package when missing (needs root). The packaged
# service is not used: the tests run their own process with their own config.
set -euo pipefail
if command -v prometheus-alertmanager >/dev/null 2>&1; then
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "error: Alertmanager is not installed; run: sudo apt-get install -y prometheus-alertmanager" >&2
    exit 1
fi
echo "prometheus-alertmanager not found: installing Debian's package"
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -y -q --no-install-recommends prometheus-alertmanager
# the package starts its own service where an init system runs; the tests never use it
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet prometheus-alertmanager 2>/dev/null; then
    systemctl stop prometheus-alertmanager || true
fi
