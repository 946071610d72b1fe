#!/usr/bin/env bash
# The main job on a fresh machine: provision what a run needs (virtualenv, Docker
# engine, sandbox image; not the test tools or the browser), then run four agents
# on a demo repository with `ultrawork demo`, on the shared local Prefect server
# (SQLite). Extra arguments go to `ultrawork demo`.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/provision.sh"
provision_python ""          # the main job needs no test tools and no browser
provision_docker
provision_image
exec "$UW_VENV/bin/ultrawork" demo "$@"
