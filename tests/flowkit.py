"""Helpers to run the Sisyphus flow in-process and review it from a second thread."""

from __future__ import annotations

import asyncio
import contextvars
import json
import subprocess
import threading
import time
from pathlib import Path
from typing import Callable

GIT_ENV = ["-c", "user.name=Test", "-c", "user.email=test@example.invalid"]


def make_target_repo(path: Path, files: dict[str, str] | None = None) -> Path:
    files = files or {
        "README.md": "# widgets\n\nWidgets library. See docs/guide.md.\n",
        "docs/guide.md": "# Guide\n\nCall make_widget().\n",
        "widgets/core.py": "def make_widget(name):\n    # TODO: validate name\n    return {'name': name}\n",
        "pyproject.toml": "[project]\nname = 'widgets'\ndependencies = ['attrs>=23']\n",
    }
    path.mkdir(parents=True)
    for name, text in files.items():
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        (path / name).write_text(text)
    for argv in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-q", "-m", "initial"]):
        subprocess.run(["git", *GIT_ENV, *argv], cwd=path, check=True, capture_output=True)
    return path


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, text=True).stdout.strip()


def review_state(run_id: str) -> str | None:
    from ultrawork.sandbox.spec import ultrawork_home

    try:
        return json.loads((ultrawork_home() / "runs" / run_id / "review.json").read_text()).get("state")
    except (OSError, ValueError):
        return None


class Reviewer(threading.Thread):
    """Waits for the run to ask for review, then calls ``act(run_id)``."""

    def __init__(self, run_id: str, act: Callable[[str], None], timeout: float = 240):
        super().__init__(daemon=True)
        self.run_id, self.act, self.timeout = run_id, act, timeout
        self.error: BaseException | None = None
        self.paused_seen = False

    def run(self) -> None:
        deadline = time.monotonic() + self.timeout
        try:
            while review_state(self.run_id) != "requested":
                if time.monotonic() > deadline:
                    raise TimeoutError("the run never asked for review")
                time.sleep(0.2)
            self.paused_seen = True
            self.act(self.run_id)
        except BaseException as exc:  # surfaced by the test, and shown at once (the run may wait on)
            self.error = exc
            import traceback
            traceback.print_exc()


def run_sisyphus(params: dict, act: Callable[[str], None] | None = None):
    """Run the flow in this process; ``act`` reviews it from another thread."""
    from ultrawork.flows.sisyphus import sisyphus

    reviewer = Reviewer(params["run_id"], act) if act else None
    if reviewer:
        reviewer.start()
    result = asyncio.run(sisyphus(**params))
    if reviewer:
        reviewer.join(30)
        assert reviewer.error is None, reviewer.error
    return result


class FlowThread(threading.Thread):
    """Runs the Sisyphus flow in a background thread (with this thread's Prefect settings)
    while the test drives the review from the main thread, e.g. through a browser."""

    def __init__(self, params: dict):
        super().__init__(daemon=True, name=f"sisyphus-{params.get('run_id')}")
        self.params = params
        self.context = contextvars.copy_context()
        self.result = None
        self.error: BaseException | None = None

    def run(self) -> None:
        self.context.run(self._run)

    def _run(self) -> None:
        from prefect.settings import PREFECT_CLIENT_MAX_RETRIES, temporary_settings

        from ultrawork.flows.sisyphus import sisyphus

        # The server answers SQLite lock contention with 503 and a short Retry-After, so the
        # client's default 5 retries span about a second; a suite-wide server can stay busy longer.
        try:
            with temporary_settings(updates={PREFECT_CLIENT_MAX_RETRIES: 20}):
                self.result = asyncio.run(sisyphus(**self.params))
        except BaseException as exc:  # surfaced by wait()
            self.error = exc

    def wait(self, timeout: float = 240):
        self.join(timeout)
        assert not self.is_alive(), f"the flow did not finish within {timeout:.0f}s"
        if self.error is not None:
            raise self.error
        return self.result

    def wait_for_review(self, timeout: float = 240) -> str:
        """The flow run id, once the run is paused and its form is stored."""
        from ultrawork.cli.runs import run_status, wait_for_review_form

        deadline = time.monotonic() + timeout
        while review_state(self.params["run_id"]) != "requested":
            if not self.is_alive():
                raise AssertionError(f"the flow ended before asking for review: {self.error or self.result}")
            if time.monotonic() > deadline:
                raise TimeoutError("the run never asked for review")
            time.sleep(0.2)
        flow_run_id = run_status(self.params["run_id"], with_state=False).flow_run_id
        wait_for_review_form(flow_run_id, max(5.0, deadline - time.monotonic()))
        return flow_run_id


def server_logs_since(started: float) -> list[str]:
    """Every log message the Prefect server holds from ``started`` (a time.time()) on, oldest first."""
    import datetime

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterTimestamp

    after = datetime.datetime.fromtimestamp(started - 1, tz=datetime.timezone.utc)
    messages: list[str] = []
    with get_client(sync_client=True) as client:
        while True:
            batch = client.read_logs(log_filter=LogFilter(timestamp=LogFilterTimestamp(after_=after)),
                                     limit=200, offset=len(messages))
            messages += [log.message for log in batch]
            if len(batch) < 200:
                return messages
