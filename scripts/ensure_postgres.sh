#!/usr/bin/env bash
# Make sure PostgreSQL server binaries (initdb, pg_ctl, postgres) are available for
# the test run (tests/pg_server.py starts a throwaway server with them).
#
# Search order (the same as tests/pg_server.py):
#   1. $SURVEILLANCE_PG_BINDIR (if set, it must contain all three)
#   2. the directory of `initdb` on PATH
#   3. `pg_config --bindir`
#   4. /usr/lib/postgresql/*/bin, newest version first
# If none is found, installs Debian's `postgresql` package (needs root and apt-get).
# As root, also makes sure the `postgres` OS user exists: initdb refuses to run as
# root, so the server runs as that user.
#
# Idempotent; exits within milliseconds when everything is already in place.
set -euo pipefail

log() { echo "ensure_postgres: $*"; }
die() { echo "ensure_postgres: error: $*" >&2; exit 1; }

has_server_bins() {
    local dir=$1
    [[ -n $dir && -x $dir/initdb && -x $dir/pg_ctl && -x $dir/postgres ]]
}

find_bindir() {
    local dir
    if [[ -n ${SURVEILLANCE_PG_BINDIR:-} ]]; then
        echo "$SURVEILLANCE_PG_BINDIR"
        return 0
    fi
    if dir=$(command -v initdb 2>/dev/null) && has_server_bins "$(dirname "$dir")"; then
        dirname "$dir"
        return 0
    fi
    if command -v pg_config >/dev/null 2>&1; then
        dir=$(pg_config --bindir 2>/dev/null || true)
        if has_server_bins "$dir"; then
            echo "$dir"
            return 0
        fi
    fi
    while read -r dir; do
        if has_server_bins "$dir"; then
            echo "$dir"
            return 0
        fi
    done < <(compgen -G '/usr/lib/postgresql/*/bin' | sort -rV)
    return 1
}

install_postgres() {
    [[ $(id -u) -eq 0 ]] || die "PostgreSQL server binaries not found and not running as root.
  Install them (Debian/Ubuntu: sudo apt-get install -y postgresql), or re-run as root,
  or point SURVEILLANCE_PG_BINDIR at a directory holding initdb, pg_ctl and postgres."
    command -v apt-get >/dev/null 2>&1 || die "PostgreSQL server binaries not found and no apt-get.
  Install PostgreSQL >= 14 and set SURVEILLANCE_PG_BINDIR to its bin directory."
    log "PostgreSQL server binaries not found: installing Debian's postgresql package"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q --no-install-recommends postgresql
}

ensure_postgres_user() {
    [[ $(id -u) -eq 0 ]] || return 0
    id -u postgres >/dev/null 2>&1 && return 0
    log "creating system user 'postgres'"
    useradd --system --user-group --home-dir /var/lib/postgresql --no-create-home \
        --shell /bin/bash --comment "PostgreSQL administrator" postgres
}

if [[ -n ${SURVEILLANCE_PG_BINDIR:-} ]] && ! has_server_bins "$SURVEILLANCE_PG_BINDIR"; then
    die "SURVEILLANCE_PG_BINDIR=$SURVEILLANCE_PG_BINDIR lacks initdb, pg_ctl or postgres"
fi
if ! bindir=$(find_bindir); then
    install_postgres
    bindir=$(find_bindir) || die "installed postgresql but still cannot find initdb/pg_ctl/postgres"
fi
ensure_postgres_user
if [[ $(id -u) -eq 0 ]]; then
    PATH=$PATH:/usr/sbin:/sbin command -v runuser >/dev/null 2>&1 \
        || die "runuser (util-linux) is needed to run PostgreSQL as root"
fi

log "using $bindir ($("$bindir/postgres" --version))"
