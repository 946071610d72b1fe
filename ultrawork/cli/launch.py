"""``python -m ultrawork.cli.launch PARAMS_JSON``: run one Sisyphus flow (used by ``ultrawork run --detach``)."""

from __future__ import annotations

import asyncio
import json
import sys


def main() -> int:
    params = json.loads(sys.argv[1])
    from ultrawork.flows.sisyphus import sisyphus
    from ultrawork.untrusted import install_log_escaping, terminal

    install_log_escaping()                 # this log is a file a person reads in a terminal

    result = asyncio.run(sisyphus(**params))
    print(terminal(result.message), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
