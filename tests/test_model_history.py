"""Hostile replies do not grow the history or the process: huge tool-call arguments are cut with a
marker before they are resent, and an answer past the size cap fails the call by name.

The agent runs in a subprocess (`model_memory_probe.py`) so its memory is its own; the model is
the stand-in OpenAI server on loopback.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from openai_standin import OpenAIStandIn, final_answer, tool_call

PROBE = Path(__file__).with_name("model_memory_probe.py")
MB = 1 << 20
MARKER = "cut from the history by ultrawork"


def probe(server: OpenAIStandIn) -> dict:
    done = subprocess.run([sys.executable, str(PROBE), server.base_url], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_six_ten_megabyte_tool_calls_are_cut_from_the_history_and_memory_stays_bounded():
    replies = [tool_call("write_file", path=f"big{n}.txt", content=chr(ord("a") + n) * (10 * MB)) for n in range(6)]
    with OpenAIStandIn([*replies, final_answer("done")]) as server:
        measured = probe(server)
        sizes = [len(json.dumps(r.body)) for r in server.chat_requests()]
        last = json.dumps(server.chat_requests()[-1].body)
    assert measured["error"] is None, measured
    assert len(sizes) == 7
    assert max(sizes) < 100_000, sizes                  # never the 10 MB arguments again
    assert last.count(MARKER) == 6 and "the call ran with them in full" in last
    assert measured["history_chars"] < 100_000
    grew = (measured["peak_kib"] - measured["rest_kib"]) / 1024
    print(f"rest {measured['rest_kib'] / 1024:.0f} MiB, peak {measured['peak_kib'] / 1024:.0f} MiB, grew {grew:.0f} MiB")
    assert grew < 200, measured


def test_an_answer_past_the_size_cap_fails_the_call_by_name_without_holding_it():
    with OpenAIStandIn([tool_call("write_file", path="huge.txt", content="x" * (50 * MB))]) as server:
        measured = probe(server)
    assert measured["error"] and "ModelCallError" in measured["error"] and "over 16 MiB" in measured["error"]
    grew = (measured["peak_kib"] - measured["rest_kib"]) / 1024
    print(f"grew {grew:.0f} MiB on a 50 MB answer")
    assert grew < 200, measured
