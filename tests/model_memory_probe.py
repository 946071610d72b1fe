"""Run one model agent against a model server and print its memory: for tests of hostile replies.

    python model_memory_probe.py BASE_URL   ->  one JSON line: rest and peak RSS (KiB), error, history size

The tools are a stub (no sandbox): what is measured is the host-side loop and the history it keeps.
"""

from __future__ import annotations

import json
import sys


def kib(field: str) -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith(field + ":"))


class StubTools:
    def run(self, argv, timeout):
        return 0, "ok", ""


def main() -> None:
    from pydantic import SecretStr

    from ultrawork.model_agent import ModelAgent, ModelAgentConfig
    from ultrawork.model_agent.agent import build_model  # noqa: F401 - load the model libraries before "rest"
    import pydantic_ai.models.openai  # noqa: F401

    config = ModelAgentConfig(provider="openai", model="standin-model", base_url=sys.argv[1],
                              api_key=SecretStr("sk-probe"), max_requests=20, attempts=1)
    rest = kib("VmRSS")
    error, history = None, 0
    try:
        result = ModelAgent(config).run("Write the file.", StubTools(), "frontend", True)
        history = len(result.messages_json)
    except Exception as exc:  # noqa: BLE001 - reported to the test
        error = f"{type(exc).__name__}: {exc}"
        history = len(getattr(getattr(exc, "result", None), "messages_json", "") or "")
    print(json.dumps({"rest_kib": rest, "peak_kib": kib("VmHWM"), "error": error, "history_chars": history}))


if __name__ == "__main__":
    main()
