"""Best of N: several attempts of a writer at the same subtask, ranked by the repository's own checks.

Plain data (no Prefect). Attempt 1 of a writer is the writer itself (``frontend``); attempt k is
``frontend-tryk``, with its own branch, clone, Plan.md and sandbox, the same prompt and the
same research findings, and (optionally) another profile. When the attempts end, the
repository's checks run on each attempt's branch; attempts are ranked: checks passed first,
then fewer failing tests where the output says, then the smaller diff, then the lower cost.
"""

from __future__ import annotations

import re

from pydantic import BaseModel, Field

from ultrawork.agents.outcome import AgentOutcome, CheckResult, Verdict
from ultrawork.untrusted import markdown_block, markdown_inline

MAX_ATTEMPTS = 8
ATTEMPT = re.compile(r"(?P<first>[a-z][a-z0-9_]*(?:-(?:[2-9]|1[0-6]))?)-try(?P<n>[2-9]|1[0-6])")


class AttemptsError(ValueError):
    """Bad attempts settings, refused before anything starts."""


def attempt_of(name: str) -> str:
    """The first attempt's name of ``name`` (``frontend-try3`` -> ``frontend``); a name is its own."""
    match = ATTEMPT.fullmatch(name)
    return match.group("first") if match else name


def attempt_number(name: str) -> int:
    match = ATTEMPT.fullmatch(name)
    return int(match.group("n")) if match else 1


def check_attempts(attempts: int, attempt_profiles: list[str] | None, auto_select: bool,
                   check_command: list[str] | None) -> None:
    """Raise `AttemptsError` for settings that cannot work, before anything is created."""
    if not 1 <= attempts <= MAX_ATTEMPTS:
        raise AttemptsError(f"attempts must be 1 to {MAX_ATTEMPTS}, not {attempts}")
    if attempt_profiles is not None and len(attempt_profiles) != attempts:
        raise AttemptsError(f"--attempt-profiles names {len(attempt_profiles)} profile(s) for {attempts} attempt(s): "
                            "give one per attempt")
    if auto_select and not check_command:
        raise AttemptsError("--auto-select picks the attempt whose checks pass: give the checks (--check-command)")


def with_attempts(names: list[str], writers: set[str], attempts: int, attempt_profiles: list[str] | None,
                  chosen: dict[str, str] | None) -> tuple[list[str], dict[str, str] | None]:
    """``names`` with ``attempts - 1`` more attempts of each writer after it, and the named profile
    each attempt runs (``chosen`` plus ``attempt_profiles``, attempt k the k-th)."""
    if attempts <= 1 and not attempt_profiles:
        return names, chosen
    out: list[str] = []
    chosen = dict(chosen or {})
    for name in names:
        if ATTEMPT.fullmatch(name):
            continue                          # a resumed run's list: rebuilt below
        out.append(name)
        if name not in writers:
            continue
        group = [name] + [f"{name}-try{k}" for k in range(2, attempts + 1)]
        out += group[1:]
        for k, attempt in enumerate(group):
            if attempt_profiles:
                chosen[attempt] = attempt_profiles[k]
    return out, chosen or None


def groups(names: list[str], min_size: int = 2) -> dict[str, list[str]]:
    """First attempt -> every attempt of it, for the writers (``names``) that have at least ``min_size``."""
    out: dict[str, list[str]] = {}
    for name in names:
        out.setdefault(attempt_of(name), []).append(name)
    return {first: members for first, members in out.items() if len(members) >= min_size}


_PYTEST = re.compile(r"\b(\d+) (?:failed|errors?)\b")
_UNITTEST = re.compile(r"FAILED \((?:failures=(\d+))?(?:, )?(?:errors=(\d+))?")


def failing_tests(output: str) -> int | None:
    """How many tests failed, where the check's output says (pytest, unittest); else None."""
    found = _PYTEST.findall(output)
    if found:
        return sum(int(n) for n in found)
    match = _UNITTEST.search(output)
    if match and (match.group(1) or match.group(2)):
        return int(match.group(1) or 0) + int(match.group(2) or 0)
    if re.search(r"\b\d+ passed\b|^OK$", output, re.M):
        return 0
    return None


class AttemptEntry(BaseModel):
    """One attempt, as ranked: its check, failing tests, diff size and cost."""

    role: str
    rank: int = 0
    status: str
    check: CheckResult | None = Field(None, description="None: not checked (the attempt failed).")
    failing_tests: int | None = None
    files_changed: int = 0
    lines_changed: int = 0
    cost: float | None = None

    @property
    def passed(self) -> bool:
        return self.check is not None and self.check.passed


class AttemptRanking(BaseModel):
    """The attempts of one writer, best first."""

    writer: str
    entries: list[AttemptEntry]

    @property
    def best(self) -> AttemptEntry:
        return self.entries[0]


def entry_for(outcome: AgentOutcome, check: CheckResult | None) -> AttemptEntry:
    cost = (outcome.usage or {}).get("cost")
    return AttemptEntry(role=outcome.role, status=outcome.status, check=check,
                        failing_tests=failing_tests(check.output_tail) if check is not None else None,
                        files_changed=outcome.files_changed, lines_changed=outcome.insertions + outcome.deletions,
                        cost=cost if isinstance(cost, (int, float)) else None)


def rank(writer: str, entries: list[AttemptEntry]) -> AttemptRanking:
    """Checks passed, then fewer failing tests (unknown counts last), then the smaller diff, then the
    lower cost (unknown last), then the attempt's number."""
    def key(e: AttemptEntry):
        return (not e.passed, e.failing_tests if e.failing_tests is not None else 1 << 30, e.lines_changed,
                e.cost if e.cost is not None else float("inf"), attempt_number(e.role))
    ordered = sorted(entries, key=key)
    return AttemptRanking(writer=writer, entries=[e.model_copy(update={"rank": i + 1}) for i, e in enumerate(ordered)])


def auto_verdicts(roles: list[str], rankings: list[AttemptRanking]) -> list[Verdict]:
    """Without a person: the best attempt of each writer is approved when its checks pass; every other
    attempt, and every agent outside an attempt group, is rejected (a read-only role has nothing to merge)."""
    approved = {r.best.role for r in rankings if r.best.passed}
    return [Verdict(role=role, approved=role in approved, decision="approve" if role in approved else "reject",
                    comment="selected automatically: the best attempt, its checks passed" if role in approved
                    else "") for role in roles]


def none_passed(rankings: list[AttemptRanking]) -> str:
    """The sentence a run ends with when no attempt's checks passed."""
    parts = [f"{r.writer}: " + ", ".join(f"{e.role} " + (f"exit {e.check.exit_code}" if e.check else e.status)
                                          for e in r.entries) for r in rankings]
    return "no attempt passed the checks (" + "; ".join(parts) + "); nothing was integrated, every branch is kept"


def ranking_markdown(rankings: list[AttemptRanking], tail_chars: int = 1200) -> str:
    """The rankings for the form and the results artifact: a table per writer, then each check's tail."""
    lines: list[str] = []
    for r in rankings:
        lines += [f"#### Attempts of {r.writer}, best first", "",
                  "| Rank | Attempt | Checks | Failing tests | Files | Lines changed | Cost |",
                  "| --- | --- | --- | --- | --- | --- | --- |"]
        for e in r.entries:
            checks = ("not run (" + e.status + ")" if e.check is None
                      else ("passed" if e.passed else f"failed (exit {e.check.exit_code})"))
            lines.append(f"| {e.rank} | **{markdown_inline(e.role)}** | {checks} | "
                         f"{'?' if e.failing_tests is None else e.failing_tests} | {e.files_changed} | "
                         f"{e.lines_changed} | {'-' if e.cost is None else f'{e.cost:g}'} |")
        lines.append("")
        for e in r.entries:
            if e.check is not None and e.check.output_tail.strip():
                lines += [f"Checks of {markdown_inline(e.role)} (tail):", "",
                          markdown_block(e.check.output_tail[-tail_chars:]), ""]
    return "\n".join(lines)
