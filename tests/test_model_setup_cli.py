"""A new user's model setup, as the README gives it: `ultrawork model set`, `model show`, then a run.

Everything goes through the CLI as a subprocess, in a fresh home with no PREFECT_API_URL (the
commands start and share the home's own local server); the model is the stand-in OpenAI server
on loopback, reached at the README's command with only the base URL and model name changed.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

import test_model_team as team
from flowkit import make_target_repo
from openai_standin import Reply, final_answer, tool_call

pytestmark = [pytest.mark.docker, pytest.mark.prefect]
EXE = str(Path(sys.executable).with_name("ultrawork"))
README = Path(__file__).parent.parent / "README.md"
SECRET = "sk-readme-setup-7f3a9c21d8e04b65"


def readme_model_setup() -> list[list[str]]:
    """The `ultrawork model ...` commands of the README's model section, as argument lists."""
    section = README.read_text().split("## Model agents and the team", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```sh\n(.*?)```", section, re.S).group(1)
    return [shlex.split(line.split("#")[0])[1:] for line in block.splitlines() if line.startswith("ultrawork model")]


def with_option(argv: list[str], option: str, value: str) -> list[str]:
    if option in argv:
        argv = list(argv)
        argv[argv.index(option) + 1] = value
        return argv
    return [*argv, option, value]


@pytest.fixture
def fresh_home(tmp_path):
    home = tmp_path / "home"
    env = {**os.environ, "ULTRAWORK_HOME": str(home), "COLUMNS": "200",
           "PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL": "WARNING"}
    for name in ("PREFECT_API_URL", "PREFECT_API_AUTH_STRING", "OPENAI_API_KEY"):
        env.pop(name, None)

    def ultrawork(*args: str, timeout: float = 300, **extra: str) -> subprocess.CompletedProcess:
        return subprocess.run([EXE, *args], env={**env, **extra}, capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)

    yield ultrawork
    ultrawork("server", "stop", "--force")


def test_the_readme_setup_saves_the_model_where_runs_read_it_and_a_run_uses_it(fresh_home, tmp_path,
                                                                                 docker_client):
    ultrawork = fresh_home
    repo = make_target_repo(tmp_path / "widgets")
    model_run = ["run", "--repo", str(repo), "--task", "Map the code", "--agents", "explore",
                 "--agent-profile", "explore=model", "--review-timeout", "2s"]

    # before any setup: a clear refusal, not a traceback, a run or exit 0
    refused = ultrawork(*model_run, "--json")
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert "no model is configured" in json.loads(refused.stdout)["error"]
    assert "ultrawork model set" in refused.stderr and "Traceback" not in refused.stderr
    detached = ultrawork(*model_run, "--detach")
    assert detached.returncode == 2 and "no model is configured" in detached.stderr, detached.stdout + detached.stderr
    assert "running in the background" not in detached.stdout

    scripts = {"?": [Reply(text="OK", prompt_tokens=9, completion_tokens=1)],        # the --check request
               "explore": [tool_call("list_files", path=".", prompt_tokens=1000, completion_tokens=100),
                           final_answer("mapped", findings=["widgets/core.py holds make_widget"],
                                        prompt_tokens=2000, completion_tokens=200)]}
    with team.TeamStandIn(scripts) as server:
        commands = readme_model_setup()
        assert [c[:2] for c in commands] == [["model", "set"], ["model", "show"]]
        key_env = commands[0][commands[0].index("--api-key-env") + 1]
        assert "--check" in commands[0]
        set_argv = with_option(with_option(commands[0], "--model", "standin-model"), "--base-url", server.base_url)

        missing_key = ultrawork(*set_argv)                   # the named variable is not set: the check says so
        assert missing_key.returncode == 2 and key_env in missing_key.stderr, missing_key.stderr
        saved = ultrawork(*set_argv, **{key_env: SECRET})
        assert saved.returncode == 0, saved.stdout + saved.stderr
        assert "check: openai:standin-model answered" in saved.stdout
        assert "this home's local server" in saved.stdout
        check = server.by_agent["?"]
        assert len(check) == 1 and server.requests[0].headers["authorization"] == f"Bearer {SECRET}"

        shown = ultrawork(*commands[1], "--json", **{key_env: SECRET})
        assert shown.returncode == 0, shown.stderr
        model = json.loads(shown.stdout)["models"][0]
        assert (model["block"], model["provider"], model["model"], model["base_url"]) == \
            ("default", "openai", "standin-model", server.base_url)
        assert model["key"] == f"${key_env} (set here)" and (model["price_in"], model["price_out"]) == (2, 8)
        readable = ultrawork(*commands[1])
        assert "default: openai:standin-model" in readable.stdout and "not set here" in readable.stdout

        run = ultrawork(*model_run, "--json", **{key_env: SECRET})
    assert run.returncode == 6, run.stdout + run.stderr      # the agents ran; nobody reviewed within 2s
    result = json.loads(run.stdout)
    explore = result["agents"][0]
    assert explore["status"] == "succeeded" and explore["model"] == "openai:standin-model"
    assert explore["usage"]["requests"] == 2 == len(server.by_agent["explore"])
    assert (explore["usage"]["input_tokens"], explore["usage"]["output_tokens"]) == (3000, 300)
    assert explore["usage"]["cost"] == pytest.approx((3000 * 2 + 300 * 8) / 1e6)

    # setting it again: what is not given keeps its saved value (a budget, a price)
    base = ["model", "set", "--provider", "openai", "--model", "standin-model", "--base-url", server.base_url,
            "--api-key-env", key_env]
    assert ultrawork(*base, "--max-requests", "7").returncode == 0
    assert ultrawork(*base, "--price-in", "3").returncode == 0
    again = json.loads(ultrawork("model", "show", "--json").stdout)["models"][0]
    assert (again["max_requests"], again["price_in"], again["price_out"]) == (7, 3, 8)

    # a cheaper model for one role: saved beside the run's model, shown with it
    role = ultrawork("model", "set", "--role", "explore", "--provider", "openai", "--model", "cheap-model",
                     "--base-url", server.base_url, "--api-key-env", key_env)
    assert role.returncode == 0 and "as block 'default-explore'" in role.stdout, role.stdout + role.stderr
    both = json.loads(ultrawork("model", "show", "--json").stdout)["models"]
    assert [(m["block"], m["model"]) for m in both] == [("default", "standin-model"), ("default-explore", "cheap-model")]
    bad_role = ultrawork("model", "set", "--role", "planner", "--provider", "openai", "--model", "m",
                         "--api-key-env", key_env)
    assert bad_role.returncode == 2 and "--role must be one of" in bad_role.stderr
    for output in (saved, shown, readable, run, role):
        assert SECRET not in output.stdout + output.stderr
