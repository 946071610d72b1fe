"""The model agent: a host-side loop whose every tool call is a guarded step in a real sandbox.

The model is a stand-in OpenAI server on loopback playing a script; the sandbox,
the run's superproject, the agent's clone and Plan.md are real.
"""

from __future__ import annotations

import json
import logging
import subprocess
from contextlib import contextmanager

import pytest
from pydantic import SecretStr

from ultrawork.model_agent import (SANDBOX_FILES, BudgetExceeded, GuardedSandboxTools, ModelAgent, ModelAgentConfig,
                         ModelAgentResult, ModelCallError, ModelConfigError)
from openai_standin import OpenAIStandIn, Reply, final_answer, tool_call
from ultrawork.workspace.plan import PlanDocument

pytestmark = pytest.mark.docker
pytest_plugins = ["conftest_git"]  # fixtures: ultrawork_home, target_repo

API_KEY = "sk-standin-7f3c9e1d5b2a4680"


@pytest.fixture
def sandbox_root(ultrawork_home):
    """The engine's workspace root is the runs folder, where agent clones live."""
    runs = ultrawork_home / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    return runs


@pytest.fixture
def model_run(ultrawork_home, target_repo, run_id, sandbox_root):
    from ultrawork.workspace import RunSuperproject
    return RunSuperproject.create(run_id, target_repo, "Make the app say hello.\n")


@contextmanager
def agent_sandbox(engine, run, role: str, mode: str):
    from ultrawork.sandbox.access import agent_sandbox_spec
    from ultrawork.sandbox.spec import DEFAULT_IMAGE, Limits

    ws = run.add_agent(role)
    spec = agent_sandbox_spec(ws, image=DEFAULT_IMAGE, workspace_mode=mode, network="none", limits=Limits(),
                              exec_timeout=60, agent_files=SANDBOX_FILES)
    sandbox = engine.create(spec)
    try:
        yield ws, sandbox
    finally:
        engine.cleanup(sandbox)


def config(server: OpenAIStandIn, **budgets) -> ModelAgentConfig:
    return ModelAgentConfig(provider="openai", model="standin-model", base_url=server.base_url,
                            api_key=SecretStr(API_KEY), **budgets)


def tool_messages(request) -> list[str]:
    return [m["content"] for m in request.body["messages"] if m["role"] == "tool"]


def test_writer_reads_then_edits_each_call_a_plan_step_tokens_counted_key_only_in_the_header(
        engine, model_run, caplog):
    script = [
        tool_call("read_file", prompt_tokens=120, completion_tokens=15, path="src/app.py"),
        tool_call("write_file", prompt_tokens=180, completion_tokens=40, path="src/app.py",
                  content="print('hello')\n"),
        final_answer("The app now says hello.", ["src/app.py"], ["greeting changed"], prompt_tokens=230,
                     completion_tokens=25),
    ]
    turns = []
    caplog.set_level(logging.DEBUG)
    with OpenAIStandIn(script) as server, agent_sandbox(engine, model_run, "frontend", "rw") as (ws, sandbox):
        agent = ModelAgent(config(server, input_price_per_million=2.0, output_price_per_million=10.0),
                           on_turn=turns.append)
        result = agent.run("Make the app say hello.", GuardedSandboxTools(engine, sandbox, ws, timeout=30),
                           "frontend", writable=True)
        env = engine.client.api.inspect_container(sandbox.id)["Config"]["Env"]
        requests = server.chat_requests()

    assert (ws.path / "src" / "app.py").read_text() == "print('hello')\n"
    assert result.answer.summary == "The app now says hello." and result.answer.files_changed == ["src/app.py"]
    assert result.finished and result.stopped_by is None
    # one Plan.md step per tool call (the final answer runs nothing), each the helper in the sandbox
    summary = PlanDocument(ws.plan_path).summary()
    assert (summary.steps, summary.failed_steps) == (2, 0)
    plan = ws.plan.text()
    assert "python3 /agent/model_tools.py read src/app.py 1 400" in plan
    assert "python3 /agent/model_tools.py write src/app.py replace" in plan
    # the model got the file's content back, numbered
    assert "print('hi')" in tool_messages(requests[1])[0]
    # tokens: the stand-in's usage numbers, summed; cost from the configured prices
    u = result.usage
    assert (u.requests, u.input_tokens, u.output_tokens, u.tool_calls) == (3, 530, 80, 2)
    assert u.cost == pytest.approx((530 * 2.0 + 80 * 10.0) / 1e6)
    assert [(t.turn, t.input_tokens, t.output_tokens) for t in turns] == [(1, 120, 15), (2, 180, 40), (3, 230, 25)]
    assert [[c.name for c in t.tool_calls] for t in turns] == [["read_file"], ["write_file"], ["final_answer"]]
    assert turns[-1].usage.input_tokens == 530 and turns[1].tool_results[0].name == "read_file"
    # the key: sent to the model server as the bearer token, and nowhere else
    assert len(requests) == 3
    assert all(r.headers["authorization"] == f"Bearer {API_KEY}" for r in requests)
    assert API_KEY not in json.dumps([r.body for r in requests])
    assert API_KEY not in plan
    assert not any(API_KEY in e for e in env), "the key reached the container's environment"
    assert API_KEY not in json.dumps(env)
    logged = [r.getMessage() for r in caplog.records]
    assert any("frontend turn 3: final_answer" in m for m in logged)
    assert not any(API_KEY in m for m in logged)
    assert API_KEY not in result.model_dump_json() and API_KEY not in repr(agent.config)
    assert all(API_KEY not in t.model_dump_json() for t in turns)
    # the history round-trips for a resumed run
    again = ModelAgentResult.model_validate_json(result.model_dump_json())
    assert len(again.messages()) == len(result.messages()) >= 6


def test_read_only_role_cannot_write_the_sandbox_refuses_and_plan_records_it(engine, model_run):
    script = [
        tool_call("write_file", path="src/app.py", content="print('pwned')\n"),
        tool_call("write_findings", markdown="- `src/app.py` prints a greeting"),
        final_answer("Could not edit: the workspace is read-only.", findings=["src/app.py prints a greeting"]),
    ]
    with OpenAIStandIn(script) as server, agent_sandbox(engine, model_run, "oracle", "ro") as (ws, sandbox):
        before = (ws.path / "src" / "app.py").read_text()
        result = ModelAgent(config(server)).run("Review the app.", GuardedSandboxTools(engine, sandbox, ws),
                                                "oracle", writable=False)
        requests = server.chat_requests()

    refusal = tool_messages(requests[1])[0]
    assert "Read-only file system" in refusal and "exit code 1" in refusal
    assert (ws.path / "src" / "app.py").read_text() == before == "print('hi')\n"
    summary = PlanDocument(ws.plan_path).summary()
    assert (summary.steps, summary.failed_steps) == (2, 1)
    plan = ws.plan.text()
    assert "Read-only file system" in plan and "- Exit code: 1" in plan
    # the findings went to Plan.md through the sandbox's /plan mount
    assert "#### Findings (model agent)" in plan and "`src/app.py` prints a greeting" in plan
    assert result.findings_written == ["- `src/app.py` prints a greeting"]
    assert "read-only" in requests[0].body["messages"][0]["content"]


def test_request_budget_stops_the_agent_with_its_usage(engine, model_run):
    script = [tool_call("list_files", path=".") for _ in range(4)] + [final_answer("done")]
    with OpenAIStandIn(script) as server, agent_sandbox(engine, model_run, "explore", "ro") as (ws, sandbox):
        with pytest.raises(BudgetExceeded) as caught:
            ModelAgent(config(server, max_requests=2)).run("Map the repository.",
                                                           GuardedSandboxTools(engine, sandbox, ws), "explore",
                                                           writable=False)
        sent = len(server.chat_requests())
    error = caught.value
    assert error.limit == "max_requests" and "max_requests" in str(error)
    assert sent == 2, "the third request must not be sent"
    assert (error.usage.requests, error.usage.input_tokens, error.usage.output_tokens) == (2, 200, 40)
    assert error.result.stopped_by == "max_requests" and error.result.answer is None
    assert PlanDocument(ws.plan_path).summary().steps == 2
    # prompt, two responses and the tool results of both calls: a resumed run continues from there
    kinds = [m.kind for m in error.result.messages()]
    assert kinds == ["request", "response", "request", "response", "request"]


def test_stopped_agent_continues_from_its_history(engine, model_run):
    with OpenAIStandIn([tool_call("list_files"), tool_call("read_file", path="README.md")]) as server:
        with agent_sandbox(engine, model_run, "explore", "ro") as (ws, sandbox):
            with pytest.raises(BudgetExceeded) as caught:
                ModelAgent(config(server, max_requests=2)).run("Map the repository.",
                                                               GuardedSandboxTools(engine, sandbox, ws), "explore",
                                                               writable=False)
    history = caught.value.result.messages_json
    with OpenAIStandIn([final_answer("mapped: README.md and src/app.py")]) as server:
        with agent_sandbox(engine, model_run, "oracle", "ro") as (ws, sandbox):
            result = ModelAgent(config(server)).run("Finish now.", GuardedSandboxTools(engine, sandbox, ws),
                                                    "explore", writable=False, history=history)
            sent = server.chat_requests()[0].body["messages"]
    assert result.finished and result.answer.summary.startswith("mapped")
    contents = [str(m.get("content")) for m in sent]
    assert "Map the repository." in contents and "Finish now." in contents
    assert any("src/app.py" in c for c in contents) and any("# target" in c for c in contents), \
        "both earlier tool results reach the model"
    assert result.usage.requests == 1


def test_output_token_budget_and_time_budget(engine, model_run):
    with OpenAIStandIn([tool_call("list_files", completion_tokens=500), final_answer("done")]) as server:
        with agent_sandbox(engine, model_run, "librarian", "ro") as (ws, sandbox):
            with pytest.raises(BudgetExceeded) as caught:
                ModelAgent(config(server, max_output_tokens=100)).run(
                    "List.", GuardedSandboxTools(engine, sandbox, ws), "librarian", writable=False)
    assert caught.value.limit == "max_output_tokens" and caught.value.usage.output_tokens == 500

    slow = [tool_call("run_command", argv=["sleep", "30"]), final_answer("done")]
    with OpenAIStandIn(slow) as server, agent_sandbox(engine, model_run, "explore", "ro") as (ws, sandbox):
        with pytest.raises(BudgetExceeded) as caught:
            ModelAgent(config(server, max_seconds=4)).run("Wait.", GuardedSandboxTools(engine, sandbox, ws),
                                                          "explore", writable=False)
        assert len(server.chat_requests()) == 1
        # the command was cut at the deadline, and its step was recorded before the agent stopped
        plan = PlanDocument(ws.plan_path).summary()
        assert (plan.steps, plan.failed_steps) == (1, 1)
    assert caught.value.limit == "max_seconds" and caught.value.usage.seconds < 15


PATCH = """\
--- a/src/app.py
+++ b/src/app.py
@@ -1 +1,2 @@
 print('hi')
+print('patched')
"""


def test_listing_search_patch_and_bounded_output(engine, model_run):
    from ultrawork.model_agent import MAX_CONTENT_BYTES, MAX_RESULT_CHARS

    script = [
        tool_call("list_files", path="."),
        tool_call("search", pattern=r"print\(", path="src"),
        tool_call("apply_patch", unified_diff=PATCH),
        tool_call("run_command", argv=["python3", "-c", "print('x' * 100000); print('the end')"]),
        tool_call("write_file", path="big.txt", content="y" * (MAX_CONTENT_BYTES + 1)),
        final_answer("patched", ["src/app.py"]),
    ]
    with OpenAIStandIn(script) as server, agent_sandbox(engine, model_run, "frontend", "rw") as (ws, sandbox):
        ModelAgent(config(server)).run("Patch it.", GuardedSandboxTools(engine, sandbox, ws), "frontend",
                                       writable=True)
        seen = [tool_messages(r)[-1] for r in server.chat_requests()[1:]]
    listing, found, patched, output, too_big = seen
    assert listing.splitlines() == ["README.md", "src/", "src/app.py"]
    assert found.strip() == "src/app.py:1: print('hi')"
    assert "Applied patch src/app.py cleanly" in patched
    assert (ws.path / "src" / "app.py").read_text() == "print('hi')\nprint('patched')\n"
    assert len(output) <= MAX_RESULT_CHARS + 100 and "characters left out" in output
    assert output.startswith("exit code: 0") and "the end" in output
    assert "over the 131072-byte limit" in too_big and not (ws.path / "big.txt").exists()
    # four commands ran (the oversized write was refused before the sandbox)
    assert PlanDocument(ws.plan_path).summary().steps == 4


@pytest.mark.parametrize("settings, named", [
    ({"provider": "gemini", "model": "m", "api_key": API_KEY}, "provider"),
    ({"provider": "openai", "model": "gpt-test"}, "needs an API key"),
    ({"provider": "anthropic", "model": "claude-test", "api_key": ""}, "needs an API key"),
    ({"provider": "openai-compatible", "model": "qwen"}, "needs base_url"),
    ({"provider": "openai", "model": "m", "api_key": API_KEY, "base_url": "file:///etc"}, "base_url"),
    ({"provider": "openai", "model": "m", "api_key": API_KEY, "max_requests": 0}, "max_requests"),
])
def test_bad_settings_fail_by_name_before_anything_starts(settings, named):
    with pytest.raises(ModelConfigError) as caught:
        ModelAgentConfig(**settings)
    assert named in str(caught.value) and API_KEY not in str(caught.value)


def test_sandbox_without_the_tool_helper_is_refused_before_any_step(engine, model_run):
    from ultrawork.sandbox import SandboxSpec

    ws = model_run.add_agent("explore")
    sandbox = engine.create(SandboxSpec(role="explore", run_id=model_run.run_id, workspace=ws.path))
    try:
        with pytest.raises(ModelConfigError, match="agent_files=model_agent.SANDBOX_FILES"):
            GuardedSandboxTools(engine, sandbox, ws)
    finally:
        engine.cleanup(sandbox)
    assert PlanDocument(ws.plan_path).summary().steps == 0


def test_key_stays_out_of_the_sandbox_process_environment(engine, model_run):
    """The model cannot find the key by looking: its commands see no such variable."""
    script = [tool_call("run_command", argv=["sh", "-c", "env; cat /proc/1/environ | tr '\\0' '\\n'"]),
              final_answer("looked")]
    with OpenAIStandIn(script) as server, agent_sandbox(engine, model_run, "explore", "ro") as (ws, sandbox):
        ModelAgent(config(server)).run("Look around.", GuardedSandboxTools(engine, sandbox, ws), "explore",
                                       writable=False)
        seen = tool_messages(server.chat_requests()[1])[0]
    assert "exit code: 0" in seen and "PATH=" in seen
    assert API_KEY not in seen and "OPENAI_API_KEY" not in seen
    assert API_KEY not in subprocess.run(["git", "-C", str(model_run.path), "log", "-p", "--all"],
                                         capture_output=True, text=True).stdout


def test_settings_block_resolves_the_key_from_the_host_environment_or_names_what_is_missing(monkeypatch):
    from ultrawork.blocks.model import ModelAgentSettings

    monkeypatch.setenv("UW_TEST_MODEL_KEY", API_KEY)
    config = ModelAgentSettings(model="gpt-test", api_key_env="UW_TEST_MODEL_KEY", max_requests=7).config()
    assert config.api_key.get_secret_value() == API_KEY and config.max_requests == 7
    assert API_KEY not in repr(config) and API_KEY not in str(config)
    monkeypatch.delenv("UW_TEST_MODEL_KEY")
    with pytest.raises(ModelConfigError, match="UW_TEST_MODEL_KEY is not set"):
        ModelAgentSettings(model="gpt-test", api_key_env="UW_TEST_MODEL_KEY").config()
    with pytest.raises(ModelConfigError, match="not both"):
        ModelAgentSettings(model="m", api_key=API_KEY, api_key_env="X").config()
    with pytest.raises(ModelConfigError, match="needs an API key"):
        ModelAgentSettings(provider="anthropic", model="claude-test").config()
    local = ModelAgentSettings(provider="openai-compatible", model="qwen", base_url="http://127.0.0.1:11434/v1")
    assert local.config().api_key is None


@pytest.mark.prefect
def test_settings_block_saved_on_the_server_keeps_the_key_secret(prefect_api):
    from prefect.client.orchestration import get_client

    from ultrawork.blocks.model import ModelAgentSettings

    name = f"model-agent-test-{API_KEY[-6:]}"
    ModelAgentSettings(model="gpt-test", api_key=API_KEY, input_price_per_million=2.5).save(name, overwrite=True)
    try:
        loaded = ModelAgentSettings.load(name)
        assert loaded.config().api_key.get_secret_value() == API_KEY and loaded.input_price_per_million == 2.5
        with get_client(sync_client=True) as client:
            stored = client.read_block_document_by_name(name, "ultrawork-model-agent", include_secrets=False)
            schema = client.get_most_recent_block_schema_for_block_type(
                client.read_block_type_by_slug("ultrawork-model-agent").id)
        assert API_KEY not in json.dumps(stored.data, default=str)
        assert "api_key" in schema.fields["secret_fields"]
        assert "host environment variable" in schema.fields["properties"]["api_key_env"]["description"]
    finally:
        ModelAgentSettings.delete(name)


def test_openai_compatible_server_without_a_key_never_gets_the_hosts_openai_key(monkeypatch):
    """An Ollama/vLLM server is sent no key at all, even when the host has OPENAI_API_KEY set."""
    monkeypatch.setenv("OPENAI_API_KEY", API_KEY)

    class NoSandbox:  # the script calls no tool
        def run(self, argv, timeout):
            raise AssertionError("no tool was scripted")

    with OpenAIStandIn([final_answer("nothing to do")]) as server:
        local = ModelAgentConfig(provider="openai-compatible", model="qwen2.5-coder", base_url=server.base_url)
        result = ModelAgent(local).run("Say hi.", NoSandbox(), "explore", writable=False)
        sent = server.chat_requests()[0]
    assert result.answer.summary == "nothing to do" and result.usage.requests == 1
    assert API_KEY not in json.dumps(sent.headers) and sent.body["model"] == "qwen2.5-coder"


def test_model_text_never_reaches_a_shell_and_denied_commands_are_refused_by_name(engine, model_run):
    """Shell syntax in paths, content, patterns and argv stays literal; a denied command never runs."""
    script = [
        tool_call("write_file", path="notes/$(touch /workspace/pwned1).txt",
                  content="`touch /workspace/pwned2`; $(touch /workspace/pwned3)\n"),
        tool_call("search", pattern="$(touch /workspace/pwned4)", path="; touch /workspace/pwned5"),
        tool_call("run_command", argv=["ls", "; touch /workspace/pwned6", "$(touch /workspace/pwned7)"]),
        tool_call("run_command", argv=["git", "push", "origin", "HEAD"]),
        final_answer("tried"),
    ]
    with OpenAIStandIn(script) as server, agent_sandbox(engine, model_run, "frontend", "rw") as (ws, sandbox):
        ModelAgent(config(server)).run("Try things.", GuardedSandboxTools(engine, sandbox, ws), "frontend",
                                       writable=True)
        wrote, searched, listed, pushed = [tool_messages(r)[-1] for r in server.chat_requests()[1:]]
    assert not [n for n in range(1, 8) if (ws.path / f"pwned{n}").exists()], "a payload ran"
    assert (ws.path / "notes" / "$(touch " / "workspace" / "pwned1).txt").read_text().startswith("`touch /workspace/")
    assert "wrote" in wrote and "exit code: 2" in listed
    assert "exit code 1" in searched and "no such folder: ; touch /workspace/pwned5" in searched
    assert "refused before it ran" in pushed and "git push" in pushed
    plan = ws.plan.text()
    assert "step refused before it ran" in plan
    assert PlanDocument(ws.plan_path).summary().steps == 3


def test_failing_model_server_is_a_model_call_error_that_never_shows_the_key(monkeypatch):
    class NoSandbox:
        def run(self, argv, timeout):
            raise AssertionError("no tool was scripted")

    with OpenAIStandIn([]) as server:   # every request is past the end of the script: HTTP 500
        with pytest.raises(ModelCallError) as caught:
            ModelAgent(config(server)).run("Hello.", NoSandbox(), "explore", writable=False)
        attempts = len(server.chat_requests())
    assert "500" in str(caught.value) and "past its end" in str(caught.value)
    assert attempts >= 1 and API_KEY not in str(caught.value)
    echo = [Reply(status=401, text="Incorrect API key provided: {authorization}")]
    with OpenAIStandIn(echo) as server:
        with pytest.raises(ModelCallError) as caught:
            ModelAgent(config(server)).run("Hello.", NoSandbox(), "explore", writable=False)
    assert "401" in str(caught.value) and "Bearer [api key]" in str(caught.value)
    assert API_KEY not in str(caught.value)
    with pytest.raises(ModelConfigError, match="not a model agent message history"):
        ModelAgent(config(server)).run("Hello.", NoSandbox(), "explore", writable=False, history='[{"x": 1}]')
