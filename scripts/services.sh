#!/usr/bin/env bash
# The production profile's servers, on loopback, for tests and for developers:
#   PostgreSQL (Debian's package)  : Dagster instance storage + the Iceberg SqlCatalog
#   moto_server (moto, from PyPI)  : an S3-compatible endpoint for the warehouse
#
#   scripts/services.sh install  install PostgreSQL if missing (Debian's package, apt-get as root)
#   scripts/services.sh start    install if missing, then start both
#   scripts/services.sh stop     stop both (data of PostgreSQL is kept in $SERVICES_DIR)
#   scripts/services.sh status   exit 0 when both answer
#   scripts/services.sh env      print the environment of the production profile (source it)
#
# Credentials are generated on first start and kept in $SERVICES_DIR/env (mode 600, ignored by
# git): never in the repository. Idempotent: a running server is left alone.
# No real object-store server (MinIO, Ceph, Garage) is available from the registries here;
# moto's standalone server is the best local S3 API server there is: it speaks the S3 REST
# protocol over HTTP (signatures, multipart uploads, ranged reads) and keeps objects in memory.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$(pwd)"
SERVICES_DIR="${MESH_SERVICES_DIR:-$ROOT/.services}"
PG_PORT="${MESH_PG_PORT:-55432}"
S3_PORT="${MESH_S3_PORT:-59000}"
PG_DATA="${MESH_PG_DATA:-$SERVICES_DIR/postgres}"
ENV_FILE="$SERVICES_DIR/env"
S3_PID="$SERVICES_DIR/moto.pid"
S3_LOG="$SERVICES_DIR/moto.log"
BUCKET="mesh-warehouse"

pg_bin() {
  local dir
  dir="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1 || true)"
  [ -n "$dir" ] && [ -x "$dir/pg_ctl" ] && echo "$dir"
}

as_postgres() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

install_postgres() {
  [ -n "$(pg_bin)" ] && return 0
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
    echo "services: PostgreSQL is not installed: sudo apt-get install postgresql" >&2
    exit 1
  fi
  echo "services: installing Debian's postgresql" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq --no-install-recommends postgresql >/dev/null 2>&1 \
    || { apt-get update -qq >/dev/null 2>&1 \
         && apt-get install -y -qq --no-install-recommends postgresql >/dev/null 2>&1; } \
    || { echo "services: could not install postgresql with apt-get" >&2; exit 1; }
}

write_env() {
  if [ -f "$ENV_FILE" ]; then
    # a file written by an older version of this script: add what it lacks
    grep -q MESH_PII_SALT "$ENV_FILE" || echo "export MESH_PII_SALT=$(python3 -c \
      'import secrets; print(secrets.token_hex(32))')" >>"$ENV_FILE"
    return 0
  fi
  mkdir -p "$SERVICES_DIR"
  local password key secret salt
  password="$(python3 -c 'import secrets; print(secrets.token_hex(16))')"
  key="mesh$(python3 -c 'import secrets; print(secrets.token_hex(6))')"
  secret="$(python3 -c 'import secrets; print(secrets.token_hex(20))')"
  salt="$(python3 -c 'import secrets; print(secrets.token_hex(32))')"
  umask 077
  cat >"$ENV_FILE" <<EOF
# The production profile on this machine's loopback servers (scripts/services.sh).
export MESH_PROFILE=production
export MESH_POSTGRES_URL=postgresql+psycopg2://mesh:$password@127.0.0.1:$PG_PORT/mesh
export MESH_CATALOG__URI=postgresql+psycopg2://mesh:$password@127.0.0.1:$PG_PORT/mesh
export MESH_CATALOG__WAREHOUSE=s3://$BUCKET/warehouse
export MESH_S3_ENDPOINT=http://127.0.0.1:$S3_PORT
export AWS_ACCESS_KEY_ID=$key
export AWS_SECRET_ACCESS_KEY=$secret
export AWS_REGION=us-east-1
export MESH_PII_SALT=$salt
EOF
}

pick_pg_data() {
  # The server refuses to run as root: as root it runs as postgres, which must reach the data
  # directory; when it cannot traverse the checkout, the data lives under /var/tmp instead.
  if [ -z "${MESH_PG_DATA:-}" ] && [ "$(id -u)" = 0 ] && id postgres >/dev/null 2>&1 \
     && ! runuser -u postgres -- test -x "$SERVICES_DIR"; then
    PG_DATA="/var/tmp/mesh-postgres-$(echo "$SERVICES_DIR" | md5sum | cut -c1-12)"
  fi
}

pg_ready() {
  local bin
  bin="$(pg_bin)" || return 1
  "$bin/pg_isready" -q -h 127.0.0.1 -p "$PG_PORT"
}

pg_socket_dir() {
  # Unix socket paths are limited to 107 bytes: a short folder of its own, not the data dir.
  echo "/tmp/mesh-pg-$(echo "$PG_DATA" | md5sum | cut -c1-12)"
}

start_postgres() {
  install_postgres
  pick_pg_data
  local bin sockets
  bin="$(pg_bin)"
  sockets="$(pg_socket_dir)"
  if pg_ready; then
    if ! as_postgres "$bin/pg_ctl" -D "$PG_DATA" status >/dev/null 2>&1; then
      echo "services: port $PG_PORT is taken by another PostgreSQL; set MESH_PG_PORT" >&2
      exit 1
    fi
  else
    if [ ! -f "$PG_DATA/PG_VERSION" ]; then
      mkdir -p "$PG_DATA"
      [ "$(id -u)" = 0 ] && chown -R postgres:postgres "$PG_DATA"
      as_postgres "$bin/initdb" -D "$PG_DATA" -U postgres --auth-local=trust \
        --auth-host=scram-sha-256 -E UTF8 >/dev/null
    fi
    mkdir -p "$sockets"
    [ "$(id -u)" = 0 ] && chown postgres:postgres "$sockets"
    as_postgres "$bin/pg_ctl" -D "$PG_DATA" -l "$PG_DATA/server.log" -w -t 60 \
      -o "-p $PG_PORT -c listen_addresses=127.0.0.1 -k '$sockets' -c max_connections=200" \
      start >/dev/null
  fi
  # The role and database, every time (idempotent): a first start may have stopped midway.
  # shellcheck disable=SC1090
  source "$ENV_FILE"
  local password="${MESH_POSTGRES_URL#postgresql+psycopg2://mesh:}"
  password="${password%%@*}"
  as_postgres "$bin/psql" -q -h "$sockets" -p "$PG_PORT" -U postgres -d postgres \
    -v ON_ERROR_STOP=1 <<EOF >/dev/null
SELECT 'CREATE ROLE mesh LOGIN' WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'mesh')\gexec
ALTER ROLE mesh PASSWORD '$password' CREATEDB;
SELECT 'CREATE DATABASE mesh OWNER mesh' WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = 'mesh')\gexec
EOF
}

s3_ready() {
  python3 - "$S3_PORT" <<'EOF' 2>/dev/null
import sys, urllib.request
urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/moto-api/", timeout=2)
EOF
}

start_s3() {
  if ! s3_ready; then
    [ -x .venv/bin/moto_server ] || { echo "services: run scripts/bootstrap.sh first (moto)" >&2; exit 1; }
    nohup .venv/bin/moto_server -H 127.0.0.1 -p "$S3_PORT" >"$S3_LOG" 2>&1 &
    echo $! >"$S3_PID"
    for _ in $(seq 1 100); do s3_ready && break; sleep 0.1; done
    s3_ready || { echo "services: moto_server did not start; see $S3_LOG" >&2; exit 1; }
  fi
  # the bucket, every time (idempotent): moto keeps objects in memory only
  # shellcheck disable=SC1090
  source "$ENV_FILE"
  .venv/bin/python - "$BUCKET" <<'EOF'
import os, sys
import boto3
s3 = boto3.client("s3", endpoint_url=os.environ["MESH_S3_ENDPOINT"])
if sys.argv[1] not in {b["Name"] for b in s3.list_buckets().get("Buckets", [])}:
    s3.create_bucket(Bucket=sys.argv[1])
EOF
}

mkdir -p "$SERVICES_DIR"
pick_pg_data

case "${1:-start}" in
  install)
    install_postgres
    ;;
  start)
    # One start at a time (the test workers may all ask at once): the others wait, then find
    # the servers running. The servers do not inherit the lock (9>&-): it ends with this script.
    exec 9>"$SERVICES_DIR/start.lock"
    flock 9
    write_env
    start_postgres 9>&-
    start_s3 9>&-
    echo "services: PostgreSQL on 127.0.0.1:$PG_PORT, S3 (moto) on 127.0.0.1:$S3_PORT; source $ENV_FILE" >&2
    ;;
  stop)
    if bin="$(pg_bin)" && [ -f "$PG_DATA/postmaster.pid" ]; then
      as_postgres "$bin/pg_ctl" -D "$PG_DATA" -m fast -w stop >/dev/null || true
    fi
    if [ -f "$S3_PID" ]; then kill "$(cat "$S3_PID")" 2>/dev/null || true; rm -f "$S3_PID"; fi
    ;;
  status)
    pg_ready && s3_ready
    ;;
  env)
    write_env
    cat "$ENV_FILE"
    ;;
  *)
    echo "usage: scripts/services.sh install|start|stop|status|env" >&2
    exit 2
    ;;
esac
