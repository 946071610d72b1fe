"""An evaluation's record of each task x setting, and its report (table, markdown, JSON). Plain data."""

from __future__ import annotations

import statistics

from pydantic import BaseModel, Field

from ultrawork.untrusted import markdown_inline


class EvalRecord(BaseModel):
    """One task run with one setting, automatic selection, and what it showed."""

    task: str
    setting: str
    run_id: str
    outcome: str
    resolved: bool
    resolved_by: str = Field(description="'hidden check', 'checks' (no hidden check given) or 'not integrated'.")
    best_attempt: str | None = None
    cost: float | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    requests: int = 0
    wall_seconds: float = 0.0
    message: str = ""


class SettingSummary(BaseModel):
    setting: str
    tasks: int
    resolved: int
    resolved_rate: float
    cost: float | None
    input_tokens: int
    output_tokens: int
    wall_seconds_median: float
    wall_seconds_total: float


class EvalReport(BaseModel):
    eval_id: str
    records: list[EvalRecord]
    settings: list[SettingSummary]

    def by_task(self) -> dict[str, dict[str, EvalRecord]]:
        out: dict[str, dict[str, EvalRecord]] = {}
        for r in self.records:
            out.setdefault(r.task, {})[r.setting] = r
        return out


def summarize(eval_id: str, records: list[EvalRecord]) -> EvalReport:
    order = list(dict.fromkeys(r.setting for r in records))
    summaries = []
    for name in order:
        mine = [r for r in records if r.setting == name]
        costs = [r.cost for r in mine if r.cost is not None]
        walls = [r.wall_seconds for r in mine]
        summaries.append(SettingSummary(
            setting=name, tasks=len(mine), resolved=sum(r.resolved for r in mine),
            resolved_rate=round(sum(r.resolved for r in mine) / len(mine), 4) if mine else 0.0,
            cost=round(sum(costs), 6) if costs else None, input_tokens=sum(r.input_tokens for r in mine),
            output_tokens=sum(r.output_tokens for r in mine),
            wall_seconds_median=round(statistics.median(walls), 2) if walls else 0.0,
            wall_seconds_total=round(sum(walls), 2)))
    return EvalReport(eval_id=eval_id, records=sorted(records, key=lambda r: (r.task, order.index(r.setting))),
                      settings=summaries)


def _cell(text: str) -> str:
    return markdown_inline(str(text))


def markdown(report: EvalReport) -> str:
    lines = [f"# Evaluation {report.eval_id}", "", "## Per setting", "",
             "| Setting | Resolved | Rate | Cost | Input tokens | Output tokens | Median wall time (s) |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for s in report.settings:
        lines.append(f"| {s.setting} | {s.resolved}/{s.tasks} | {s.resolved_rate:.0%} | "
                     f"{'-' if s.cost is None else f'{s.cost:g}'} | {s.input_tokens} | {s.output_tokens} | "
                     f"{s.wall_seconds_median:g} |")
    names = [s.setting for s in report.settings]
    lines += ["", "## Per task", "", "| Task | " + " | ".join(names) + " |",
              "| --- | " + " | ".join("---" for _ in names) + " |"]
    for task, by_setting in report.by_task().items():
        cells = []
        for name in names:
            r = by_setting.get(name)
            cells.append("-" if r is None else
                         f"{'resolved' if r.resolved else 'not resolved'} ({_cell(r.outcome)}, {r.wall_seconds:.0f} s)")
        lines.append(f"| {task} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def record_rows(report: EvalReport) -> list[dict]:
    return [{"task": r.task, "setting": r.setting, "resolved": r.resolved, "by": r.resolved_by,
             "outcome": r.outcome, "best attempt": r.best_attempt or "", "cost": r.cost,
             "tokens in/out": f"{r.input_tokens}/{r.output_tokens}", "wall time (s)": round(r.wall_seconds, 1),
             "run": r.run_id} for r in report.records]
