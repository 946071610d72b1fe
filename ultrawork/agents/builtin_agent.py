#!/usr/bin/env python3
"""ultrawork's built-in offline agent: deterministic, no network, standard library only.

It runs inside the sandbox as ``python3 /agent/builtin_agent.py ROLE``, reads
the task from ``/agent/prompt.md`` and writes its findings to ``/plan/Plan.md``:

- explore:   a map of the repository and the files most relevant to the task;
- librarian: dependencies and versions from the manifests, and the local docs that matter;
- oracle:    review findings and risks in the relevant files;
- frontend:  applies the patch (```diff) or edit script (```ultrawork-edit JSON) given with the task.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

WORKSPACE = Path(os.environ.get("ULTRAWORK_WORKSPACE", "/workspace"))
PROMPT = Path(os.environ.get("ULTRAWORK_PROMPT", "/agent/prompt.md"))
PLAN = Path(os.environ.get("ULTRAWORK_PLAN", "/plan/Plan.md"))
SKIP_DIRS = {".git", "node_modules", "__pycache__", ".venv", "venv", "dist", "build", ".tox", ".mypy_cache"}
STOPWORDS = set("the a an and or of to in on for with from into by is are be this that it as at add make use new "
                "fix update change should must can file files code please when task role checklist acceptance agent "
                "run ultrawork builtin offline".split())
TEXT_LIMIT = 200_000


def files() -> list[Path]:
    found = []
    for root, dirs, names in os.walk(WORKSPACE):
        dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS)
        for name in sorted(names):
            path = Path(root) / name
            if not path.is_symlink() and path.is_file():
                found.append(path)
    return found


def read(path: Path) -> str:
    try:
        if path.stat().st_size > TEXT_LIMIT:
            return ""
        data = path.read_bytes()
    except OSError:
        return ""
    return "" if b"\x00" in data[:4096] else data.decode("utf-8", errors="replace")


def rel(path: Path) -> str:
    return path.relative_to(WORKSPACE).as_posix()


def keywords(task: str) -> list[str]:
    words = re.findall(r"[A-Za-z_][A-Za-z0-9_]{2,}", task.split("```")[0].lower())
    return sorted({w for w in words if w not in STOPWORDS})


def relevance(paths: list[Path], words: list[str]) -> list[tuple[int, str]]:
    scored = []
    for path in paths:
        name = rel(path).lower()
        text = read(path).lower()
        score = sum(5 * name.count(w) + min(text.count(w), 20) for w in words)
        if score:
            scored.append((score, rel(path)))
    return sorted(scored, key=lambda s: (-s[0], s[1]))


def write_plan(title: str, body: list[str]) -> None:
    with open(PLAN, "a", encoding="utf-8") as fh:
        fh.write(f"\n## {title}\n\n" + "\n".join(body).rstrip() + "\n")


def explore(task: str) -> list[str]:
    paths = files()
    by_ext = Counter(p.suffix or p.name for p in paths)
    lines = Counter()
    for p in paths:
        lines[rel(p).split("/")[0]] += read(p).count("\n")
    out = [f"Repository map: {len(paths)} files.", "", "| top-level entry | lines |", "| --- | --- |"]
    out += [f"| `{name}` | {count} |" for name, count in sorted(lines.items())]
    out += ["", "File kinds: " + ", ".join(f"{ext} x{n}" for ext, n in by_ext.most_common(8)), ""]
    ranked = relevance(paths, keywords(task))[:10]
    out.append("Files most relevant to the task:" if ranked else "No file mentions the task's keywords.")
    out += [f"- `{path}` (score {score})" for score, path in ranked]
    return out


MANIFESTS = ("pyproject.toml", "requirements.txt", "setup.cfg", "package.json", "go.mod", "Cargo.toml", "Gemfile")


def dependencies(path: Path) -> list[str]:
    text = read(path)
    name = path.name
    if name == "package.json":
        try:
            data = json.loads(text)
        except ValueError:
            return []
        return [f"{k} {v}" for sec in ("dependencies", "devDependencies") for k, v in sorted(data.get(sec, {}).items())]
    if name == "pyproject.toml":
        try:
            import tomllib

            data = tomllib.loads(text)
        except Exception:
            return []
        deps = list(data.get("project", {}).get("dependencies", []))
        for extra, items in sorted(data.get("project", {}).get("optional-dependencies", {}).items()):
            deps += [f"{d} [{extra}]" for d in items]
        return deps
    if name.startswith("requirements"):
        return [l.strip() for l in text.splitlines() if l.strip() and not l.startswith("#")]
    if name == "go.mod":
        return re.findall(r"^\s*([\w./-]+ v[\w.+-]+)", text, re.M)
    if name == "Cargo.toml":
        section = text.split("[dependencies]", 1)[1] if "[dependencies]" in text else ""
        return [l.strip() for l in section.split("\n[")[0].splitlines() if "=" in l]
    return []


def librarian(task: str) -> list[str]:
    paths = files()
    out = []
    manifests = [p for p in paths if p.name in MANIFESTS or re.match(r"requirements.*\.txt$", p.name)]
    if not manifests:
        out.append("No dependency manifest found.")
    for manifest in manifests:
        deps = dependencies(manifest)
        out.append(f"Dependencies in `{rel(manifest)}` ({len(deps)}):")
        out += [f"- {d}" for d in deps] or ["- (none declared)"]
        out.append("")
    docs = [p for p in paths if p.suffix.lower() in (".md", ".rst", ".txt") and p not in manifests]
    words = keywords(task)
    ranked = relevance(docs, words)[:8]
    out.append("Local docs that matter for the task:" if ranked else f"Local docs ({len(docs)}), none mention the task:")
    out += [f"- `{path}` (score {score})" for score, path in ranked] or [f"- `{rel(p)}`" for p in docs[:8]]
    return out


RISKS = [
    (re.compile(r"\beval\(|\bexec\("), "dynamic code execution"),
    (re.compile(r"shell\s*=\s*True"), "shell=True subprocess"),
    (re.compile(r"(password|secret|token)\s*=\s*['\"][^'\"]+['\"]", re.I), "hard-coded credential"),
    (re.compile(r"\bpickle\.loads?\("), "unpickling data"),
    (re.compile(r"except\s*:\s*$", re.M), "bare except"),
]


def oracle(task: str) -> list[str]:
    paths = files()
    findings = []
    for path in paths:
        text = read(path)
        for number, line in enumerate(text.splitlines(), 1):
            if re.search(r"\b(TODO|FIXME|XXX|HACK)\b", line):
                findings.append(f"- `{rel(path)}:{number}` open marker: {line.strip()[:100]}")
            for pattern, what in RISKS:
                if pattern.search(line):
                    findings.append(f"- `{rel(path)}:{number}` risk ({what}): {line.strip()[:100]}")
        if text.count("\n") > 500:
            findings.append(f"- `{rel(path)}` is long ({text.count(chr(10))} lines): changes here need care")
    sources = [p for p in paths if p.suffix in (".py", ".js", ".ts", ".go", ".rs")]
    tests = {p.stem.replace("test_", "").replace("_test", "") for p in paths if "test" in p.name}
    untested = [rel(p) for p in sources if "test" not in p.name and p.stem not in tests and p.stem != "__init__"]
    ranked = [path for _, path in relevance(paths, keywords(task))[:5]]
    out = [f"Reviewed {len(paths)} files; {len(findings)} finding(s)."]
    out += findings[:40] or ["- no open markers or risky patterns found"]
    out += ["", "Risks for this task:"]
    out += [f"- `{p}` is touched by the task and has no matching test" for p in ranked if p in untested]
    out += [f"- `{p}` is relevant to the task" for p in ranked if p not in untested] or ["- no file matches the task"]
    return out


def _safe_target(name: str) -> Path:
    target = (WORKSPACE / name).resolve()
    if not target.is_relative_to(WORKSPACE.resolve()) or ".git" in Path(name).parts or Path(name).is_absolute():
        raise ValueError(f"edit path {name!r} leaves the workspace")
    return target


def frontend(task: str) -> list[str]:
    out = []
    patches = re.findall(r"```(?:diff|patch)\n(.*?)```", task, re.S)
    scripts = re.findall(r"```ultrawork-edit\n(.*?)```", task, re.S)
    for patch in patches:
        proc = subprocess.run(["git", "-c", "core.hooksPath=/dev/null", "apply", "--whitespace=nowarn", "-"],
                              input=patch, text=True, capture_output=True, cwd=WORKSPACE)
        if proc.returncode != 0:
            raise SystemExit(f"the patch did not apply: {proc.stderr.strip()}")
        out.append(f"Applied a patch touching {patch.count('+++ ')} file(s).")
    for script in scripts:
        for edit in json.loads(script):
            target = _safe_target(edit["path"])
            if "write" in edit:
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(edit["write"])
                out.append(f"- wrote `{edit['path']}`")
            elif "append" in edit:
                with open(target, "a") as fh:
                    fh.write(edit["append"])
                out.append(f"- appended to `{edit['path']}`")
            elif "replace" in edit:
                old, new = edit["replace"]
                text = target.read_text()
                if old not in text:
                    raise SystemExit(f"`{edit['path']}` does not contain the text to replace")
                target.write_text(text.replace(old, new, 1))
                out.append(f"- edited `{edit['path']}`")
    if not out:
        out.append("The task carries no patch or edit script; no files were changed.")
    return out


ROLES = {"explore": explore, "librarian": librarian, "oracle": oracle, "frontend": frontend}


def main(argv: list[str]) -> int:
    # a writer's instance or attempt (frontend-2, frontend-try3) is its role
    role = re.sub(r"(?:-(?:[2-9]|1[0-6]))?(?:-try(?:[2-9]|1[0-6]))?$", "", argv[1]) if len(argv) == 2 else ""
    if role not in ROLES:
        print(f"usage: builtin_agent.py {{{','.join(ROLES)}}}", file=sys.stderr)
        return 2
    task = PROMPT.read_text(encoding="utf-8")
    body = ROLES[role](task)
    write_plan(f"Findings ({role}, built-in offline agent)", body)
    print("\n".join(body))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
