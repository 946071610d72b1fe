"""The model agent's file tools, run INSIDE the sandbox as ``python3 /agent/model_tools.py OP ARG...``.

Mounted read-only at /agent by the host (see `ultrawork.model_agent.tools.SANDBOX_FILES`)
and run as the sandbox user, so every file operation meets the sandbox's own
limits: a read-only workspace refuses a write here, not in the host. Standard
library only; arguments arrive as argv (content base64-encoded, in parts), never
through a shell. Exit 0: done (result on stdout); 1: the operation failed; 2: bad
arguments (reason on stderr).
"""

import base64
import os
import re
import subprocess
import sys
import tempfile

SKIP = {".git"}   # a clone's .git is a file pointing at the host-owned git directory
PLAN = "/plan/Plan.md"
SEARCH_FILE_LIMIT = 2 << 20   # larger files are not searched
LINE_CUT = 400


def _decode(parts):
    return base64.b64decode("".join(parts).encode("ascii"), validate=True)


def _walk(top):
    if not os.path.isdir(top):
        raise FileNotFoundError(f"no such folder: {top}")
    for root, dirs, files in os.walk(top):
        dirs[:] = sorted(d for d in dirs if d not in SKIP)
        yield root, dirs, sorted(f for f in files if f not in SKIP)


def list_files(path, limit):
    shown, total = [], 0
    for root, dirs, files in _walk(path):
        for name, slash in [(d, "/") for d in dirs] + [(f, "") for f in files]:
            total += 1
            if len(shown) < limit:
                shown.append(os.path.relpath(os.path.join(root, name), path) + slash)
    print("\n".join(sorted(shown)))
    if total > len(shown):
        print(f"[{total - len(shown)} more entries not listed; list a subdirectory]")


def read_file(path, start, end):
    with open(path, "rb") as fh:
        lines = fh.read().decode("utf-8", "replace").splitlines()
    end = len(lines) if end <= 0 else min(end, len(lines))
    for number in range(max(start, 1), end + 1):
        print(f"{number:>6}\t{lines[number - 1]}")
    if start > 1 or end < len(lines):
        print(f"[lines {max(start, 1)}-{end} of {len(lines)}]")


def search(pattern, path, limit):
    try:
        regex = re.compile(pattern)
    except re.error as exc:
        sys.exit(f"invalid regular expression: {exc}")
    hits = 0
    targets = [(os.path.dirname(path), [], [os.path.basename(path)])] if os.path.isfile(path) else _walk(path)
    for root, _dirs, files in targets:
        for name in files:
            full = os.path.join(root, name)
            try:
                if os.path.islink(full) or os.path.getsize(full) > SEARCH_FILE_LIMIT:
                    continue
                with open(full, "rb") as fh:
                    data = fh.read()
            except OSError:
                continue
            if b"\0" in data[:8192]:
                continue
            for number, line in enumerate(data.decode("utf-8", "replace").splitlines(), 1):
                if regex.search(line):
                    hits += 1
                    if hits > limit:
                        print(f"[more than {limit} matches; narrow the pattern or the path]")
                        return
                    print(f"{os.path.relpath(full)}:{number}: {line[:LINE_CUT]}")
    if not hits:
        print("no matches")


def write_file(path, append, parts):
    data = _decode(parts)
    parent = os.path.dirname(path)
    if parent:
        os.makedirs(parent, exist_ok=True)
    with open(path, "ab" if append else "wb") as fh:
        fh.write(data)
    print(f"{'appended' if append else 'wrote'} {len(data)} bytes to {path}")


def apply_patch(parts):
    with tempfile.NamedTemporaryFile("wb", suffix=".diff", delete=False) as fh:
        fh.write(_decode(parts))
    try:
        done = subprocess.run(["git", "apply", "--verbose", "--whitespace=nowarn", fh.name],
                              capture_output=True, text=True)
    finally:
        os.unlink(fh.name)
    (sys.stdout if done.returncode == 0 else sys.stderr).write(done.stdout + done.stderr)  # --verbose: stderr
    sys.exit(done.returncode)


def write_findings(parts):
    text = _decode(parts).decode("utf-8", "replace").strip()
    with open(PLAN, "a", encoding="utf-8") as fh:
        fh.write("\n#### Findings (model agent)\n\n" + text + "\n")
    print(f"appended {len(text)} characters of findings to {PLAN}")


def main(argv):
    if not argv:
        sys.exit("usage: model_tools.py OP ARG...")
    op, args = argv[0], argv[1:]
    try:
        if op == "list" and len(args) == 2:
            list_files(args[0], int(args[1]))
        elif op == "read" and len(args) == 3:
            read_file(args[0], int(args[1]), int(args[2]))
        elif op == "search" and len(args) == 3:
            search(args[0], args[1], int(args[2]))
        elif op == "write" and len(args) >= 2:
            write_file(args[0], args[1] == "append", args[2:])
        elif op == "patch":
            apply_patch(args)
        elif op == "findings":
            write_findings(args)
        else:
            print(f"unknown operation or wrong arguments: {op}", file=sys.stderr)
            sys.exit(2)
    except (OSError, ValueError, UnicodeError) as exc:
        print(f"{op} failed: {exc}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main(sys.argv[1:])
