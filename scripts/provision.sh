#!/usr/bin/env bash
# Provision what ultrawork and its tests need on this machine, idempotently:
#   1. a Python virtual environment (.venv) with the project installed;
#   2. a running Docker engine (installed from Debian's packages and started
#      in the background when none answers and we are root on Debian);
#   3. the sandbox image (built offline when no registry is reachable);
#   4. Chromium for the browser test (Debian's package, installed when
#      /usr/bin/chromium is missing and we are root on Debian; never a
#      browser download: Playwright drives this one).
# Source it (`. scripts/provision.sh`) or run it; it prints what it does.
set -euo pipefail

UW_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
UW_VENV="${UW_VENV:-$UW_ROOT/.venv}"
UW_STATE="${ULTRAWORK_HOME:-$HOME/.ultrawork}"
mkdir -p "$UW_STATE/logs"

say() { printf '[provision] %s\n' "$*" >&2; }

provision_python() {
  local py="${PYTHON:-python3}"
  if [ ! -x "$UW_VENV/bin/python" ]; then
    say "creating virtual environment $UW_VENV"
    "$py" -m venv "$UW_VENV"
  fi
  local stamp="$UW_VENV/.ultrawork-installed"
  local want
  want="$(sha256sum "$UW_ROOT/pyproject.toml" | cut -d' ' -f1)"
  if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    say "installing ultrawork and its dependencies into $UW_VENV"
    # pip warns about configured-but-absent local indexes on some machines; keep real errors
    "$UW_VENV/bin/python" -m pip install --quiet --disable-pip-version-check -e "$UW_ROOT[dev]" 2>&1 \
      | { grep -v "^WARNING: Location '" || true; } >&2
    echo "$want" > "$stamp"
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

provision_all() {
  provision_python
  provision_docker
  provision_image
  provision_browser
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  provision_all
fi
