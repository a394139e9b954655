#!/usr/bin/env bash
# Installs everything the mesh needs from the project's own files, idempotently:
#   1. uv (pinned) in a project-local tool venv (.tools/), so nothing is installed globally;
#   2. the locked environment (.venv/) from uv.lock, dev tools included;
#   3. Debian's chromium (browser tests) and postgresql (production-profile tests), when
#      missing (apt-get, as root); scripts/services.sh starts PostgreSQL and the S3 endpoint;
#   4. the domains' dbt manifests (mesh prepare), so code locations load without parsing dbt.
# Needs python3.11 (or PYTHON=...) and access to the package registry. Nothing else.
#
# Exit status: non-zero when the environment could not be installed, or when no domain at all
# can be prepared (the mesh could build nothing). A domain that cannot be prepared (a broken dbt
# project, a dbt package that is not vendored) is reported with its fix and does not fail the
# bootstrap: it is the domain team's to fix, and `mesh build` builds every other domain.
set -euo pipefail
cd "$(dirname "$0")/.."

UV_VERSION="0.13.8"
PYTHON="${PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null || PYTHON=python3
TOOLS=".tools"

if [ ! -x "$TOOLS/bin/uv" ] || [ "$("$TOOLS/bin/uv" --version | cut -d' ' -f2)" != "$UV_VERSION" ]; then
  echo "bootstrap: installing uv $UV_VERSION into $TOOLS/" >&2
  "$PYTHON" -m venv "$TOOLS"
  "$TOOLS/bin/python" -m pip install --quiet --disable-pip-version-check "uv==$UV_VERSION"
fi

# Never download a Python interpreter: use the one on this machine.
export UV_PYTHON_DOWNLOADS=never
echo "bootstrap: syncing .venv from uv.lock" >&2
# Bytecode is compiled at install: imports stay fast even where PYTHONDONTWRITEBYTECODE is set
# (a `mesh query` starts in about a second instead of two).
"$TOOLS/bin/uv" sync --frozen --compile-bytecode --python "$PYTHON" --quiet
"$TOOLS/bin/python" -m compileall -q -j 0 mesh_platform domains >/dev/null

# The browser tests drive Debian's Chromium through Playwright (never a downloaded browser).
if ! command -v chromium >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "bootstrap: installing Debian's chromium (browser tests)" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq --no-install-recommends chromium >/dev/null 2>&1 \
      || { apt-get update -qq >/dev/null 2>&1 \
           && apt-get install -y -qq --no-install-recommends chromium >/dev/null 2>&1; } \
      || echo "bootstrap: could not install chromium: the browser tests will fail" >&2
  else
    echo "bootstrap: chromium is missing; the browser tests need it: sudo apt-get install chromium" >&2
  fi
fi

# The production profile's tests run on Debian's PostgreSQL (scripts/services.sh starts it).
scripts/services.sh install \
  || echo "bootstrap: PostgreSQL is missing: the production-profile tests will fail" >&2

echo "bootstrap: preparing dbt manifests" >&2
.venv/bin/mesh prepare --partial-ok
