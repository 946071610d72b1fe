#!/usr/bin/env bash
# Provision what ultrawork and its tests need on this machine, idempotently:
#   1. a Python virtual environment (.venv) with the project installed;
#   2. a running Docker engine (installed from Debian's packages and started
#      in the background when none answers and we are root on Debian);
#   3. the sandbox image (built offline when no registry is reachable);
#   4. Chromium for the browser test (Debian's package, installed when
#      /usr/bin/chromium is missing and we are root on Debian; never a
#      browser download: Playwright drives this one);
#   5. a PostgreSQL server for the tests that run Prefect on PostgreSQL
#      (Debian's postgresql package, its cluster started with pg_ctlcluster,
#      listening on localhost and its Unix socket only, and a role for this
#      user that signs in over the socket by peer authentication: no password).
# Source it (`. scripts/provision.sh`) or run it; it prints what it does.
set -euo pipefail

UW_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
UW_VENV="${UW_VENV:-$UW_ROOT/.venv}"
UW_STATE="${ULTRAWORK_HOME:-$HOME/.ultrawork}"
mkdir -p "$UW_STATE/logs"

say() { printf '[provision] %s\n' "$*" >&2; }

# provision_python [EXTRAS]: the project, with EXTRAS (default "dev": what the tests need; the
# main job passes "" and gets only what a run needs). A venv that has the dev extras serves both.
provision_python() {
  local extras="${1-dev}"
  local py="${PYTHON:-python3}"
  if [ ! -x "$UW_VENV/bin/python" ]; then
    say "creating virtual environment $UW_VENV"
    "$py" -m venv "$UW_VENV"
  fi
  local stamp="$UW_VENV/.ultrawork-installed"
  local want
  want="$(sha256sum "$UW_ROOT/pyproject.toml" | cut -d' ' -f1)"
  local have=""
  [ -f "$stamp" ] && have="$(cat "$stamp")"
  # the stamp is the pyproject hash, then " dev" when the dev extras are in
  if [ "${have%% *}" != "$want" ] || { [ -n "$extras" ] && [ "${have#* }" != "$extras" ]; }; then
    say "installing ultrawork${extras:+ with its $extras extras} into $UW_VENV"
    # pip warns about configured-but-absent local indexes on some machines; keep real errors
    "$UW_VENV/bin/python" -m pip install --quiet --disable-pip-version-check -e "$UW_ROOT${extras:+[$extras]}" 2>&1 \
      | { grep -v "^WARNING: Location '" || true; } >&2
    echo "$want${extras:+ $extras}" > "$stamp"
  fi
}

docker_answers() { timeout 10 docker info >/dev/null 2>&1; }

provision_docker() {
  if docker_answers; then return 0; fi
  if [ -n "${DOCKER_HOST:-}" ]; then
    say "DOCKER_HOST=$DOCKER_HOST does not answer; not starting a local engine"
    return 1
  fi
  if [ "$(id -u)" != 0 ] || [ ! -f /etc/debian_version ]; then
    say "no Docker engine answers on /var/run/docker.sock; start one (e.g. 'sudo systemctl start docker')"
    return 1
  fi
  if ! command -v dockerd >/dev/null 2>&1; then
    say "installing docker.io from Debian's packages"
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io >/dev/null
  fi
  if ! pgrep -x dockerd >/dev/null 2>&1; then
    say "starting dockerd (log: $UW_STATE/logs/dockerd.log)"
    nohup dockerd >"$UW_STATE/logs/dockerd.log" 2>&1 </dev/null &
    disown || true
  fi
  for _ in $(seq 1 60); do
    if docker_answers; then say "Docker engine is up"; return 0; fi
    sleep 1
  done
  say "dockerd did not answer within 60 s; see $UW_STATE/logs/dockerd.log"
  return 1
}

provision_image() {
  "$UW_VENV/bin/ultrawork" sandbox build --if-missing
  # a migrated empty Prefect database, so a new home's local server starts in seconds
  "$UW_VENV/bin/python" -m ultrawork.local_server.template >&2
}

provision_browser() {
  if [ -x /usr/bin/chromium ]; then return 0; fi
  if [ "$(id -u)" != 0 ] || [ ! -f /etc/debian_version ]; then
    say "no /usr/bin/chromium: the browser test skips (fails with CI=true); install Debian's chromium package"
    return 0
  fi
  say "installing chromium from Debian's packages"
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive NEEDRESTART_SUSPEND=1 apt-get install -y -qq chromium >/dev/null
}

in_ci() { case "${CI:-}" in 1|true|TRUE|yes) return 0;; *) return 1;; esac; }

UW_PG_SOCKET="${UW_PG_SOCKET:-/var/run/postgresql}"
pg_answers() { command -v pg_isready >/dev/null 2>&1 && pg_isready -q -h "$UW_PG_SOCKET" -t 5; }

provision_postgres() {
  if [ "$(id -u)" != 0 ] || [ ! -f /etc/debian_version ]; then
    if pg_answers; then return 0; fi
    say "no PostgreSQL answers on $UW_PG_SOCKET: the PostgreSQL tests skip (fail with CI=true); install Debian's postgresql"
    if in_ci; then return 1; fi
    return 0
  fi
  if ! command -v pg_ctlcluster >/dev/null 2>&1 || [ -z "$(pg_lsclusters -h 2>/dev/null)" ]; then
    say "installing postgresql from Debian's packages"
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive NEEDRESTART_SUSPEND=1 apt-get install -y -qq postgresql >/dev/null
  fi
  local version cluster status
  read -r version cluster _ status _ < <(pg_lsclusters -h | head -n1)
  if [ "$status" != online ]; then
    say "starting PostgreSQL $version/$cluster (log: /var/log/postgresql/postgresql-$version-$cluster.log)"
    pg_ctlcluster "$version" "$cluster" start
  fi
  for _ in $(seq 1 30); do
    if pg_answers; then break; fi
    sleep 1
  done
  if ! pg_answers; then
    say "PostgreSQL $version/$cluster did not answer within 30 s"
    return 1
  fi
  local me
  me="$(id -un)"
  if [ "$(runuser -u postgres -- psql -h "$UW_PG_SOCKET" -tAc "SELECT 1 FROM pg_roles WHERE rolname = '$me'")" != 1 ]; then
    say "creating the PostgreSQL role $me (peer authentication over $UW_PG_SOCKET)"
    runuser -u postgres -- createuser -h "$UW_PG_SOCKET" --superuser "$me"
  fi
}

provision_all() {
  provision_python
  provision_docker
  provision_image
  provision_browser
  provision_postgres
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  provision_all
fi
