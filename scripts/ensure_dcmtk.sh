#!/usr/bin/env bash
# Make sure dcmtk (storescu, echoscu, dcmdump) is installed: the real DICOM peer the
# tests send files with. Installs Debian's dcmtk package when missing (needs root).
set -euo pipefail
if command -v storescu >/dev/null 2>&1 && command -v dcmdump >/dev/null 2>&1; then
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "error: dcmtk is not installed; run: sudo apt-get install -y dcmtk" >&2
    exit 1
fi
echo "dcmtk not found: installing Debian's dcmtk"
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -y -q --no-install-recommends dcmtk
