#!/usr/bin/env bash
# Run the test suite: provisions the virtualenv, a Docker engine and the
# sandbox image first (see scripts/provision.sh), then runs pytest.
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -k sandbox`.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/provision.sh"
provision_all
cd "$UW_ROOT"
set +e
"$UW_VENV/bin/python" -m pytest -ra --durations=40 "$@"
status=$?
set -e
if [ "$status" = 5 ]; then
  echo "no tests were collected" >&2
  exit 1
fi
exit "$status"
