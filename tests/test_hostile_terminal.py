"""``ultrawork run`` on a pseudo-terminal with agents that write escape sequences everywhere they can.

Four agents: two read-only ones print OSC and CSI sequences (and C1 and bidi characters) on stdout
and stderr and into their Plan.md, one of them failing; two writers each create ``[/uw].txt`` (Rich
markup) and a file whose name is an OSC 52 clipboard write. A person approves every agent at the
terminal review; the writers conflict on ``[/uw].txt``. What reached the terminal must hold no
sequence an agent wrote, and the command must end with the conflict's code (4) naming the file.
"""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import select
import signal
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest

from flowkit import make_target_repo
from test_review_conflicts_and_checks import two_writers  # noqa: F401 - the fixture: oracle writes too

pytestmark = [pytest.mark.docker, pytest.mark.prefect]
ULTRAWORK = str(Path(sys.executable).with_name("ultrawork"))

# what the agents print (sh printf escapes): clipboard write, clear screen, cursor up 7, red underlined
# bold text, C1 CSI as a character and as a raw byte, a right-to-left override
PAYLOAD = (r"\033]52;c;ZXZpbA==\007\033[2J\033[7A\033[31;1;4mALL AGENTS APPROVED\033[0m"
           r"\302\2332J \233 \342\200\256gnp.exe \033P+q544e\033\\")
FORBIDDEN = ["\x1b]52", "\x1b[2J", "\x1b[7A", "\x1b[31;1;4m", "\x9b", "\x1bP", "\u202e", "\x07"]


def agent(script: str) -> str:
    return json.dumps(["sh", "-c", f"P='{PAYLOAD}'; {script}"])


REPORTER = ('printf "$P\\n"; printf "$P\\n" >&2; printf "\\n## Findings\\n\\n$P\\n" >> /plan/Plan.md; '
            'printf "x" > "/plan/$(printf "$P" | head -c 60 | tr / _).md"')
WRITER = ('mkdir -p "[" && printf "{who}\\n" > "[/uw].txt"; printf "{who}\\n" > "$(printf "\\033]52;c;ZXZpbA==\\007")f.txt"; '
          'printf "$P\\n" >&2')
COMMANDS = {"explore": agent(REPORTER + "; exit 3"), "librarian": agent(REPORTER),
            "oracle": agent(WRITER.format(who="oracle")), "frontend": agent(WRITER.format(who="frontend"))}


def run_on_a_terminal(argv: list[str], answers: dict[str, bytes], timeout: float = 400) -> tuple[int, str]:
    """Run ``argv`` with a pseudo-terminal as stdin, stdout and stderr; answer each prompt as it shows."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 60, 200, 0, 0))
    env = {**os.environ, "PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL": "WARNING", "TERM": "xterm-256color",
           "COLUMNS": "200", "LINES": "60"}
    env.pop("NO_COLOR", None)
    proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, env=env, start_new_session=True,
                            close_fds=True)
    os.close(slave)
    data, asked = b"", {prompt: 0 for prompt in answers}
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.5)
            if ready:
                try:
                    chunk = os.read(master, 1 << 16)
                except OSError:                      # the terminal's other side closed: the command ended
                    break
                if not chunk:
                    break
                data += chunk
                text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", data.decode("utf-8", "replace"))   # Rich's styles
                for prompt, answer in answers.items():
                    while text.count(prompt) > asked[prompt]:
                        asked[prompt] += 1
                        os.write(master, answer)
            elif proc.poll() is not None:
                break
        else:
            os.killpg(proc.pid, signal.SIGTERM)
            raise AssertionError(f"the run did not end in {timeout}s:\n{data.decode('utf-8', 'replace')[-3000:]}")
        return proc.wait(timeout=30), data.decode("utf-8", "replace")
    finally:
        os.close(master)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


def test_a_run_on_a_terminal_shows_no_agent_escape_sequence_and_names_a_markup_file_literally(
        prefect_api, uw_home, tmp_path, docker_client, two_writers):  # noqa: F811
    repo = make_target_repo(tmp_path / "widgets")
    argv = [ULTRAWORK, "run", "--repo", str(repo), "--task", "Map the code",
            "--agents", "explore,librarian,oracle,frontend"]
    for role, command in COMMANDS.items():
        argv += ["--agent-command", f"{role}={command}"]
    code, screen = run_on_a_terminal(argv, {"approve?": b"y\n", "comment (optional)": b"\n"})
    Path(tmp_path / "screen.txt").write_text(screen)
    print(f"terminal capture: {len(screen)} characters, {screen.count(chr(27))} ESC (Rich's own styles), "
          f"kept in {tmp_path / 'screen.txt'}")

    assert code == 4, f"exit {code}, expected 4 (conflict):\n{screen[-3000:]}"
    plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", screen)
    assert re.search(r"conflict: .* left out: frontend \(conflicts in [^)]*\[/uw\]\.txt", plain), plain[-3000:]
    assert plain.count("approve? [y/n/r = send back with a comment]") == 4, "the review asked for every agent"
    found = {seq for seq in FORBIDDEN if seq in screen}
    assert not found, f"agent sequences reached the terminal: {found}"
    # every escape sequence left is a CSI of Rich's own (styles, the live display's cursor moves)
    others = set(re.findall(r"\x1b[^\[]", screen))
    assert not others, f"escape sequences other than CSI: {others}"
    assert "\\x1b]52;c;ZXZpbA==" in screen, "the agents' output is shown, escaped (not dropped)"

    # integrating again (nothing resolved): the same conflict, the same file named, on a terminal too
    run_id = re.search(r"run (\S+) on ", plain).group(1)
    code, again = run_on_a_terminal([ULTRAWORK, "integrate", run_id], {}, timeout=200)
    plain_again = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", again)
    assert code == 4, again[-3000:]
    assert re.search(r"conflict: .* left out: frontend \(conflicts in [^)]*\[/uw\]\.txt", plain_again), plain_again
    assert not {seq for seq in FORBIDDEN if seq in again} and not re.findall(r"\x1b[^\[]", again)
