#!/usr/bin/env bash
# The main job on a fresh machine: provision (virtualenv, Docker engine, sandbox
# image), then run four agents on a demo repository with `ultrawork demo`, on the
# shared local Prefect server (SQLite). Extra arguments go to `ultrawork demo`.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/provision.sh"
provision_all
exec "$UW_VENV/bin/ultrawork" demo "$@"
