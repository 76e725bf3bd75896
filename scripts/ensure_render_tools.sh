#!/usr/bin/env bash
# Make sure the tools that let the tests look at the PMS report are installed:
# poppler-utils (pdftoppm: every PDF page to PNG) and chromium (the HTML in a headless
# browser). Installs the Debian packages when missing (needs root).
set -euo pipefail
missing=()
command -v pdftoppm >/dev/null 2>&1 || missing+=(poppler-utils)
if ! command -v chromium >/dev/null 2>&1 && ! command -v chromium-browser >/dev/null 2>&1; then
    missing+=(chromium)
fi
if [ "${#missing[@]}" -eq 0 ]; then
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "error: ${missing[*]} not installed; run: sudo apt-get install -y ${missing[*]}" >&2
    exit 1
fi
echo "report render tools not found: installing Debian's ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -y -q --no-install-recommends "${missing[@]}"
