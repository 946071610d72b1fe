"""The model agent: a tool-calling loop on the host whose every action runs in the agent's sandbox.

The loop (pydantic-ai) and the API key stay in the calling process; the model
sees the workspace only through the tools of `ultrawork.model_agent.tools`, each a command
in the sandbox. Budgets (requests, tokens, seconds) stop it with
`BudgetExceeded`; every turn is reported to ``on_turn``; the result carries
the usage, the findings written, the structured answer and the message history
(JSON), so a resumed run can skip an agent that finished or continue one.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import time
from typing import Callable

from pydantic import BaseModel, Field
from pydantic_ai import Agent, ModelMessagesTypeAdapter, ToolOutput
from pydantic_ai.exceptions import ModelAPIError, RunTimedOut, UnexpectedModelBehavior, UsageLimitExceeded
from pydantic_ai.usage import RunUsage

from .accounting import (AgentUsage, RunBudget, ToolCallRecord, ToolResultRecord, TurnRecord, agent_usage,
                         exceeded_limit, usage_limits)
from .config import ModelAgentConfig
from .errors import BudgetExceeded, ModelCallError, ModelConfigError
from .history import cap_history, history_capability
from .tools import TOOLS, SandboxTools, ToolDeps, describe_call
from .transport import RequestMeter, RequestRefused, ResponseTooLarge

log = logging.getLogger("ultrawork.model_agent")

OUTPUT_TOOL = "final_answer"


class ModelAgentAnswer(BaseModel):
    """The agent's final answer: what it did, which files it changed, what it found."""

    summary: str = Field(description="What you did and what came of it, in a few sentences.")
    files_changed: list[str] = Field(default_factory=list, description="Files you changed, relative to /workspace.")
    findings: list[str] = Field(default_factory=list, description="Findings for the reviewer, one per item.")


class ModelAgentResult(BaseModel):
    """What one model agent run did; JSON-serializable so a resumed run can reuse it."""

    role: str
    provider: str
    model: str
    answer: ModelAgentAnswer | None = None
    stopped_by: str | None = Field(None, description="The budget or error that stopped the run; None if it finished.")
    usage: AgentUsage = Field(default_factory=AgentUsage)
    findings_written: list[str] = Field(default_factory=list, description="What write_findings added to Plan.md.")
    turns: list[TurnRecord] = Field(default_factory=list)
    messages_json: str = Field("[]", description="The message history (pydantic-ai's ModelMessagesTypeAdapter).")

    @property
    def finished(self) -> bool:
        return self.answer is not None and self.stopped_by is None

    def messages(self) -> list:
        return ModelMessagesTypeAdapter.validate_json(self.messages_json)


def instructions(role: str, writable: bool) -> str:
    access = ("You may change files in /workspace (write_file, apply_patch); keep the change to what the task "
              "needs." if writable else
              "Your workspace is mounted read-only: you cannot change files. Report what you find with "
              "write_findings.")
    return (f"You are the {role} agent of ultrawork. The repository to work on is at /workspace inside a "
            f"sandbox without network. {access} Every tool runs as a command in that sandbox and is recorded "
            f"in your Plan.md. When you are done, call {OUTPUT_TOOL} with a summary, the files you changed and "
            "your findings.")


def build_model(config: ModelAgentConfig, meter=None):
    """The pydantic-ai model for ``config``; the only place the API key is read.

    Every HTTP request goes through `transport.MeteredTransport` (``config``'s timeouts and
    attempts, counted by ``meter``); the SDK's own retries are off."""
    from .transport import http_client, timeouts

    key = config.api_key.get_secret_value() if config.api_key is not None else None
    client = dict(max_retries=0, timeout=timeouts(config), http_client=http_client(config, meter))
    if config.provider == "anthropic":
        from anthropic import AsyncAnthropic
        from pydantic_ai.models.anthropic import AnthropicModel
        from pydantic_ai.providers.anthropic import AnthropicProvider

        sdk = AsyncAnthropic(api_key=key, base_url=config.base_url, **client)
        return AnthropicModel(config.model, provider=AnthropicProvider(anthropic_client=sdk))
    from openai import AsyncOpenAI
    from pydantic_ai.models.openai import OpenAIChatModel

    sdk = AsyncOpenAI(base_url=config.base_url, api_key=key or "api-key-not-set", **client)
    if config.provider == "openai":
        from pydantic_ai.providers.openai import OpenAIProvider

        provider = OpenAIProvider(openai_client=sdk)
    else:   # Ollama, vLLM and other servers of the OpenAI Chat Completions API
        from pydantic_ai.providers.openai_compatible import OpenAICompatibleProvider

        provider = OpenAICompatibleProvider("openai-compatible", openai_client=sdk)
    return OpenAIChatModel(config.model, provider=provider)


async def close_model(model) -> None:
    """Close the SDK client (and its connections) that `build_model` made for ``model``."""
    client = getattr(model, "client", None)
    if client is not None:
        await client.close()


class ModelAgent:
    """Runs one role's task with a model; ``on_turn`` gets a `TurnRecord` after every model response."""

    def __init__(self, config: ModelAgentConfig, on_turn: Callable[[TurnRecord], None] | None = None,
                 budget: RunBudget | None = None, meter: RequestMeter | None = None,
                 spent: AgentUsage | None = None, on_history: Callable[[str], None] | None = None) -> None:
        self.config = config
        self.on_turn = on_turn
        self.budget = budget      # the run's shared limits, charged after every response
        # every HTTP request of this agent (all its attempts): ``config.max_requests`` and the run's
        self.meter = meter or RequestMeter(limit=config.max_requests,
                                           parent=budget.meter if budget is not None else None)
        self.spent = spent        # tokens, tool calls and seconds of this agent's earlier attempts
        self.on_history = on_history  # the conversation (capped JSON) before every request: a journal to continue

    def run(self, prompt: str | None, tools: SandboxTools, role: str, writable: bool, *,
            history: str | None = None) -> ModelAgentResult:
        """Run to a final answer; raises `BudgetExceeded` or `ModelCallError` with the result so far.

        ``history`` (a previous result's ``messages_json``, or what ``on_history`` saved) continues that
        conversation, with ``prompt`` as the next message; without a prompt, the saved conversation is
        sent as it was (a retried or resumed request). Callable from a thread with or without an event loop.
        """
        coro = self.run_async(prompt, tools, role, writable, history=history)
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(coro)
        with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix=f"model-agent-{role}") as pool:
            return pool.submit(asyncio.run, coro).result()

    async def run_async(self, prompt: str | None, tools: SandboxTools, role: str, writable: bool, *,
                        history: str | None = None) -> ModelAgentResult:
        """`run` inside an event loop. Tools run one at a time on a thread of this run; when the run
        ends (a budget included) it waits for a command still running (bounded by the deadline), so
        no step is recorded after it returns."""
        executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix=f"model-tools-{role}")
        model = build_model(self.config, self.meter)
        try:
            with Agent.using_thread_executor(executor):
                return await self._loop(model, prompt, tools, role, writable, history)
        finally:
            await close_model(model)
            await asyncio.to_thread(executor.shutdown, True)

    async def _loop(self, model, prompt: str | None, tools: SandboxTools, role: str, writable: bool,
                    history: str | None) -> ModelAgentResult:
        config = self.config
        past = _history(history)
        if prompt is None and not past:
            raise ModelConfigError("no prompt and no conversation to continue")
        started = time.monotonic()
        budget = self.budget
        seconds = _earliest(config.max_seconds, budget.seconds_left() if budget is not None else None)
        deps = ToolDeps(tools=tools, role=role, writable=writable,
                        deadline=None if seconds is None else started + max(0.0, seconds))
        meter, spent = self.meter, self.spent
        agent = Agent(model, output_type=ToolOutput(ModelAgentAnswer, name=OUTPUT_TOOL),
                      instructions=instructions(role, writable), deps_type=ToolDeps, tools=TOOLS, retries=3,
                      name=f"ultrawork-{role}", capabilities=[history_capability()])
        result = ModelAgentResult(role=role, provider=config.provider, model=config.model)
        agent_run = None

        def close(stopped_by: str | None, usage, messages) -> ModelAgentResult:
            result.stopped_by = stopped_by
            result.usage = agent_usage(config, usage, time.monotonic() - started, meter.sent, spent)
            result.findings_written = list(deps.findings)
            result.messages_json = ModelMessagesTypeAdapter.dump_json(cap_history(list(messages))).decode()
            return result

        try:
            if budget is not None and budget.exhausted():
                raise _RunLimit(budget.exhausted())
            async with agent:
                async with agent.iter(prompt, deps=deps, usage_limits=usage_limits(config, spent),
                                      timeout=None if seconds is None else max(0.001, seconds),
                                      message_history=past) as agent_run:
                    request, sent = None, time.monotonic()
                    async for node in agent_run:
                        if Agent.is_model_request_node(node):
                            if budget is not None and budget.exhausted():
                                raise _RunLimit(budget.exhausted())     # before the request is sent
                            request, sent = node.request, time.monotonic()
                            self._journal(agent_run.all_messages(), request)
                        elif Agent.is_call_tools_node(node):
                            response = node.model_response
                            if budget is not None:
                                budget.charge(response.usage.input_tokens + response.usage.output_tokens)
                            self._report(result, role, request, response, time.monotonic() - sent,
                                         agent_usage(config, agent_run.usage, time.monotonic() - started,
                                                     meter.sent, spent))
                    result.answer = agent_run.result.output
                    return close(None, agent_run.usage, agent_run.all_messages())
        except _RunLimit as exc:
            limit = exc.limit
            if agent_run is not None:
                close(limit, agent_run.usage, agent_run.all_messages())
            else:
                close(limit, RunUsage(), past or [])
            raise BudgetExceeded(limit, f"{role} agent stopped: the run's budget {limit} reached "
                                 f"(this agent: {_spent(result.usage)})", result) from None
        except UsageLimitExceeded as exc:
            limit = exceeded_limit(str(exc))
            close(limit, agent_run.usage, agent_run.all_messages())
            raise BudgetExceeded(limit, f"{role} agent stopped: budget {limit} reached "
                                 f"({_spent(result.usage)})", result) from None
        except RunTimedOut as exc:
            limit = "max_seconds" if seconds == config.max_seconds else "run_max_seconds"
            close(limit, exc.usage, exc.all_messages())
            raise BudgetExceeded(limit, f"{role} agent stopped: budget {limit} "
                                 f"({seconds:g}s) reached ({_spent(result.usage)})", result) from None
        except (ModelAPIError, UnexpectedModelBehavior, RequestRefused) as exc:
            usage, messages = ((agent_run.usage, agent_run.all_messages()) if agent_run is not None
                               else (RunUsage(), past or []))
            if meter.refused:     # the meter refused to send: a budget, not a failed call
                limit = meter.refused
                close(limit, usage, messages)
                raise BudgetExceeded(limit, f"{role} agent stopped: budget {limit} reached, the next request "
                                     f"was not sent ({_spent(result.usage)})", result) from None
            close(type(exc).__name__, usage, messages)
            detail = _redact(f"{type(exc).__name__}: {str(exc)[:500]}{_transport_cause(exc)}", config)
            raise ModelCallError(f"{role} agent: the model call failed: {detail}", result) from None

    def _journal(self, messages: list, request) -> None:
        """The conversation as it is about to be sent, to ``on_history`` (a failing journal stops the agent:
        a conversation that cannot be continued must not look as if it could)."""
        if self.on_history is None:
            return
        if not messages or messages[-1] is not request:
            messages = [*messages, request]
        self.on_history(ModelMessagesTypeAdapter.dump_json(cap_history(list(messages))).decode())

    def _report(self, result: ModelAgentResult, role: str, request, response, seconds: float,
                totals: AgentUsage) -> None:
        results = []
        for part in getattr(request, "parts", []):
            if part.part_kind == "tool-return":
                results.append(ToolResultRecord(name=part.tool_name, excerpt=part.model_response_str()[:300]))
            elif part.part_kind in ("retry-prompt", "retry-feedback") and getattr(part, "tool_name", None):
                results.append(ToolResultRecord(name=part.tool_name, excerpt=part.model_response()[:300], retry=True))
        calls = [ToolCallRecord(name=p.tool_name, arguments=describe_call(p.tool_name, p.args))
                 for p in response.parts if p.part_kind == "tool-call"]
        text = "".join(p.content for p in response.parts if p.part_kind == "text")
        turn = TurnRecord(role=role, turn=len(result.turns) + 1, model=response.model_name, tool_results=results,
                          tool_calls=calls, text=text[:1000], input_tokens=response.usage.input_tokens,
                          output_tokens=response.usage.output_tokens, seconds=round(seconds, 3), usage=totals)
        result.turns.append(turn)
        log.info("%s", turn.summary())
        if self.on_turn is not None:
            try:
                self.on_turn(turn)
            except Exception:  # noqa: BLE001 - a failing reporter must not stop the agent
                log.warning("on_turn callback failed for %s turn %d", role, turn.turn, exc_info=True)


class _RunLimit(Exception):
    """The run's shared budget is used up (internal: becomes `BudgetExceeded`)."""

    def __init__(self, limit: str) -> None:
        super().__init__(limit)
        self.limit = limit


def _transport_cause(exc: BaseException) -> str:
    """What the transport said, when it is why the call failed (the SDK says only "Connection error")."""
    seen = exc.__cause__ or exc.__context__
    for _ in range(8):
        if seen is None:
            return ""
        if isinstance(seen, ResponseTooLarge):
            return f" ({seen})"
        seen = seen.__cause__ or seen.__context__
    return ""


def _earliest(*seconds: float | None) -> float | None:
    given = [s for s in seconds if s is not None]
    return min(given) if given else None


def _history(history: str | None) -> list | None:
    """A previous result's ``messages_json``, checked before anything starts."""
    if not history:
        return None
    try:
        return ModelMessagesTypeAdapter.validate_json(history)
    except ValueError as exc:
        raise ModelConfigError(f"history is not a model agent message history: {str(exc)[:300]}") from None


def _redact(text: str, config: ModelAgentConfig) -> str:
    """A provider's error text with the key taken out, should a server echo it back."""
    key = config.api_key.get_secret_value() if config.api_key is not None else ""
    return text.replace(key, "[api key]") if key else text


def _spent(usage: AgentUsage) -> str:
    cost = "" if usage.cost is None else f", cost {usage.cost:g}"
    return (f"{usage.requests} request(s), {usage.input_tokens} input and {usage.output_tokens} output tokens, "
            f"{usage.seconds:g}s{cost}")
