"""Evaluate: which agent settings solve which tasks, at what cost.

load the tasks and the settings -> for each task x setting (at most ``concurrency`` at a time):
one Sisyphus run with automatic selection (no review), then the hidden check on what it
integrated -> one record per pair, kept as it ends -> the report (a table artifact, markdown
and JSON in the evaluation's folder).

An evaluation stopped midway continues with the same ``eval_id``: a pair with a record is not run
again, and a pair whose run was under way resumes that run.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from pathlib import Path

from prefect import flow
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from ultrawork.agents.outcome import RunResult
from ultrawork.evaluation.report import EvalRecord, EvalReport, markdown, record_rows, summarize
from ultrawork.untrusted import table_rows
from ultrawork.evaluation.taskset import EvalSetting, EvalTask, load_settings, load_tasks, task_repository
from ultrawork.flows.sisyphus import sisyphus
from ultrawork.runtime.artifacts import artifact_key
from ultrawork.runtime.logs import get_logger
from ultrawork.settings import ultrawork_home
from ultrawork.tasks.checks import run_checks
from ultrawork.workspace.ledger import RunLedger
from ultrawork.workspace.names import validate_run_id


def eval_folder(eval_id: str) -> Path:
    return ultrawork_home() / "evals" / eval_id


@flow(name="evaluate", log_prints=True, validate_parameters=True)
async def evaluate(tasks_file: str, settings_file: str | None = None, concurrency: int = 2,
                   eval_id: str | None = None) -> EvalReport:
    """Run every task of ``tasks_file`` with every setting of ``settings_file`` and report which resolved.

    Args:
        tasks_file: YAML with ``tasks``: name, repo (path, URL or a folder next to the file), commit, task,
            checks, hidden_check (run after integration only), agents.
        settings_file: YAML with ``settings``: name, attempts, agent_profile, attempt_profiles, model_settings,
            agent_commands. Default: one setting, the built-in agents.
        concurrency: Runs at a time (the global sandbox cap bounds the sandboxes anyway).
        eval_id: Continue this evaluation (its finished pairs are not run again); default: a new one.
    """
    tasks_path = Path(tasks_file).resolve()
    tasks, settings = load_tasks(tasks_path), load_settings(Path(settings_file) if settings_file else None)
    eval_id = eval_id or f"{time.strftime('%m%d', time.gmtime())}{secrets.token_hex(2)}"
    folder = eval_folder(eval_id)
    (folder / "results").mkdir(parents=True, exist_ok=True)
    gate = asyncio.Semaphore(max(1, concurrency))
    get_logger().info("evaluation %s: %d task(s) x %d setting(s), %d at a time; results in %s", eval_id,
                      len(tasks), len(settings), concurrency, folder)
    records = await asyncio.gather(*(one_pair(eval_id, folder, tasks_path.parent, t, s, gate)
                                     for t in tasks for s in settings))
    report = summarize(eval_id, list(records))
    text = markdown(report)
    (folder / "report.md").write_text(text, encoding="utf-8")
    (folder / "report.json").write_text(report.model_dump_json(indent=2), encoding="utf-8")
    await create_table_artifact(table=table_rows(record_rows(report)), key=artifact_key("eval", eval_id),
                                description=f"Evaluation {eval_id}: each task with each setting")
    await create_markdown_artifact(markdown=markdown(report), key=artifact_key("eval-report", eval_id),
                                   description=f"Evaluation {eval_id}: resolved rate, cost, tokens, wall time")
    for s in report.settings:
        get_logger().info("%s: %d/%d resolved (%.0f%%)", s.setting, s.resolved, s.tasks, 100 * s.resolved_rate)
    return report


async def one_pair(eval_id: str, folder: Path, tasks_dir: Path, task: EvalTask, setting: EvalSetting,
                   gate: asyncio.Semaphore) -> EvalRecord:
    """One task with one setting: its record if it has one, else its run (resumed if under way)."""
    path = folder / "results" / f"{task.name}--{setting.name}.json"
    if path.exists():
        return EvalRecord.model_validate_json(path.read_text())
    run_id = validate_run_id(f"ev-{eval_id}-{task.name}-{setting.name}"[:64])
    async with gate:
        repo, base = await asyncio.to_thread(task_repository, task, tasks_dir, folder)
        resume = (ultrawork_home() / "runs" / run_id).is_dir()
        started = time.monotonic()
        try:
            result = await sisyphus(task=task.task, repo=repo, agents=task.agents, base=base, run_id=run_id,
                                    check_command=task.checks, attempts=setting.attempts,
                                    attempt_profiles=setting.attempt_profiles, agent_profiles=_profiles(task, setting),
                                    model_settings=setting.model_settings, agent_commands=setting.agent_commands,
                                    auto_select=True, resume=resume, review_timeout=60)
        except Exception as exc:  # noqa: BLE001 - one pair's failure is its record, never the evaluation's
            get_logger().error("evaluation %s: %s with %s failed: %s", eval_id, task.name, setting.name, exc)
            result = None
        record = await _record(task, setting, run_id, result, time.monotonic() - started)
    path.write_text(record.model_dump_json(indent=2))
    return record


def _profiles(task: EvalTask, setting: EvalSetting) -> dict[str, str] | None:
    if not setting.agent_profile:
        return None
    return {a: setting.agent_profile for a in task.agents if a.startswith("frontend")}


async def _record(task: EvalTask, setting: EvalSetting, run_id: str, result: RunResult | None,
                  wall: float) -> EvalRecord:
    if not isinstance(result, RunResult):
        return EvalRecord(task=task.name, setting=setting.name, run_id=run_id, outcome="failed", resolved=False,
                          resolved_by="not integrated", wall_seconds=wall, message=str(result or "the run failed")[:500])
    usage = [a.usage or {} for a in result.agents]
    costs = [u["cost"] for u in usage if isinstance(u.get("cost"), (int, float))]
    best = next((e["role"] for r in result.attempts for e in r["entries"][:1] if e["role"] in result.merged), None)
    resolved, by = False, "not integrated"
    if result.outcome == "integrated":
        if task.hidden_check:
            head = RunLedger.open(run_id).read("integration").get("head")
            hidden = await run_checks(run_id, head, task.hidden_check, name="hidden-check")
            resolved, by = hidden.passed, "hidden check"
        else:
            resolved, by = bool(result.check and result.check.passed), "checks"
    return EvalRecord(task=task.name, setting=setting.name, run_id=run_id, outcome=str(result.outcome),
                      resolved=resolved, resolved_by=by, best_attempt=best, cost=sum(costs) if costs else None,
                      input_tokens=sum(int(u.get("input_tokens", 0)) for u in usage),
                      output_tokens=sum(int(u.get("output_tokens", 0)) for u in usage),
                      requests=sum(int(u.get("requests", 0)) for u in usage), wall_seconds=round(wall, 2),
                      message=result.message[:500])


def report_json(report: EvalReport) -> str:
    return json.dumps(report.model_dump(mode="json"), indent=2)
