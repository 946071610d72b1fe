#!/usr/bin/env bash
# The main job on a fresh machine: provision what a run needs (virtualenv, Docker
# engine, sandbox image; not the test tools or the browser), then run four agents
# on a demo repository with `ultrawork demo`, on the shared local Prefect server
# (SQLite). Extra arguments go to `ultrawork demo`.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/provision.sh"
provision_python ""          # the main job needs no test tools and no browser
# This home's local Prefect server takes seconds to start (importing Prefect's server): it starts
# now, in the background, while the rest is provisioned; `ultrawork demo` waits for it. (Nothing
# starts when PREFECT_API_URL is set or on a new machine without the migrated template yet: then
# `ultrawork demo` starts it, as any command does.) Its failure is not this script's: the demo
# then starts the server itself, or says why it cannot.
"$UW_VENV/bin/python" -m ultrawork.local_server.manager --start &
server_starter=$!
provision_docker
provision_image
wait "$server_starter" || true
exec "$UW_VENV/bin/ultrawork" demo "$@"
