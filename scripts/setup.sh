#!/usr/bin/env bash
# Installs what remora's builds and tests need on a Debian machine: network tools for the
# end-to-end sandbox, load tools, PostgreSQL (running), cargo-nextest.
#
# Idempotent and quiet: prints one line per action taken, nothing when all is present.
# Exits non-zero on a real failure. Needs root (or sudo) only when something is missing.
set -euo pipefail

say() { printf 'setup: %s\n' "$*"; }
die() { printf 'setup: error: %s\n' "$*" >&2; exit 1; }

as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        die "need root (or sudo) to run: $*"
    fi
}

has() { command -v "$1" >/dev/null 2>&1; }

# package -> how to tell it is present (a command, or a glob for server binaries).
missing=()
need() {
    local package=$1 probe=$2
    if [[ $probe == /* ]]; then
        # shellcheck disable=SC2086 # the probe is a glob on purpose
        compgen -G "$probe" >/dev/null || missing+=("$package")
    else
        has "$probe" || missing+=("$package")
    fi
}

need iproute2 ip
need nftables nft
need iptables iptables
need util-linux nsenter
need util-linux unshare
need procps ps
need psmisc fuser
need curl curl
need python3 python3
need socat socat
need hyperfine hyperfine
need wrk wrk
need postgresql '/usr/lib/postgresql/*/bin/postgres'
need postgresql-client psql

if [ ${#missing[@]} -gt 0 ]; then
    has apt-get || die "missing ${missing[*]} and apt-get is not available (Debian/Ubuntu only)"
    # De-duplicate (util-linux can be listed twice).
    mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
    say "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    as_root apt-get update -qq >/dev/null || die "apt-get update failed"
    as_root apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null \
        || die "apt-get install ${missing[*]} failed"
fi

# PostgreSQL: a cluster must be up. A machine where it already runs is left untouched.
if ! pg_isready -q 2>/dev/null; then
    version=$(ls /etc/postgresql 2>/dev/null | sort -V | tail -1)
    if [ -z "$version" ]; then
        version=$(ls /usr/lib/postgresql | sort -V | tail -1)
        say "creating PostgreSQL cluster $version/main"
        as_root pg_createcluster "$version" main >/dev/null || die "pg_createcluster failed"
    fi
    say "starting PostgreSQL cluster $version/main"
    as_root pg_ctlcluster --skip-systemctl-redirect "$version" main start \
        || die "could not start PostgreSQL $version/main (see /var/log/postgresql/)"
    for _ in $(seq 50); do
        pg_isready -q 2>/dev/null && break
        sleep 0.2
    done
    pg_isready -q 2>/dev/null || die "PostgreSQL $version/main started but is not accepting connections"
fi

# Rust tooling.
has cargo || die "cargo not found: install Rust with rustup (https://rustup.rs)"
if ! cargo nextest --version >/dev/null 2>&1; then
    say "installing cargo-nextest"
    cargo install cargo-nextest --locked --quiet || die "cargo install cargo-nextest failed"
fi
