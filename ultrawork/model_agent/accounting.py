"""Usage, cost and budgets of one model agent, and the per-turn record callers log.

Counting is pydantic-ai's (`RunUsage`: requests, tokens as the provider
reported them); the cost is ours, from the configured per-million prices, so it
is the same whatever pricing table the library ships.
"""

from __future__ import annotations

import re
import time

from typing import TYPE_CHECKING

from pydantic import BaseModel, Field

from .config import ModelAgentConfig

if TYPE_CHECKING:   # the model library loads with the first model agent, not with every run
    from pydantic_ai.usage import RunUsage, UsageLimits

# pydantic-ai's limit names (in its UsageLimitExceeded messages) -> ours
_LIMIT_NAMES = {"request_limit": "max_requests", "input_tokens_limit": "max_input_tokens",
                "output_tokens_limit": "max_output_tokens"}
_LIMIT_IN_MESSAGE = re.compile(r"\b(" + "|".join(_LIMIT_NAMES) + r")\b")


class AgentUsage(BaseModel):
    """What one agent spent: model requests, tokens, tool calls, time and (when priced) cost."""

    requests: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    tool_calls: int = 0
    seconds: float = 0.0
    cost: float | None = Field(None, description="In the prices' currency; None when no price is set.")


class ToolCallRecord(BaseModel):
    """One tool call the model asked for (arguments cut to a few hundred characters)."""

    name: str
    arguments: str


class ToolResultRecord(BaseModel):
    """What a tool sent back to the model (an excerpt)."""

    name: str
    excerpt: str
    retry: bool = False   # the call was refused by argument validation and the model asked to retry


class TurnRecord(BaseModel):
    """One model turn: the request sent (with the tool results it carried) and the response."""

    role: str
    turn: int
    model: str | None = None
    tool_results: list[ToolResultRecord] = Field(default_factory=list)
    tool_calls: list[ToolCallRecord] = Field(default_factory=list)
    text: str = ""
    input_tokens: int = 0
    output_tokens: int = 0
    seconds: float = 0.0
    usage: AgentUsage = Field(default_factory=AgentUsage, description="The run's totals after this turn.")

    def summary(self) -> str:
        calls = ", ".join(c.name for c in self.tool_calls) or "no tool call"
        return (f"{self.role} turn {self.turn}: {calls}; tokens in {self.input_tokens} out {self.output_tokens} "
                f"(total in {self.usage.input_tokens} out {self.usage.output_tokens}, "
                f"{self.usage.requests} request(s))")


def usage_limits(config: ModelAgentConfig, spent: AgentUsage | None = None) -> UsageLimits:
    """The token budgets as pydantic-ai enforces them, less what earlier attempts spent. Requests are
    counted and refused by the transport's `RequestMeter` (every HTTP request, retries included);
    time is a run timeout."""
    from pydantic_ai.usage import UsageLimits

    def left(limit: int | None, used: int) -> int | None:
        return None if limit is None else max(1, limit - used)

    return UsageLimits(request_limit=None,
                       input_tokens_limit=left(config.max_input_tokens, spent.input_tokens if spent else 0),
                       output_tokens_limit=left(config.max_output_tokens, spent.output_tokens if spent else 0))


def cost_of(config: ModelAgentConfig, input_tokens: int, output_tokens: int) -> float | None:
    """Tokens times the per-million prices; a price left unset counts as zero, no price at all is None."""
    if not config.priced:
        return None
    return round((input_tokens * (config.input_price_per_million or 0.0)
                  + output_tokens * (config.output_price_per_million or 0.0)) / 1_000_000, 8)


def agent_usage(config: ModelAgentConfig, usage: RunUsage, seconds: float, requests: int | None = None,
                spent: AgentUsage | None = None) -> AgentUsage:
    """One attempt's usage (``requests``: the HTTP requests its meter counted), plus ``spent`` (earlier
    attempts of the same agent)."""
    spent = spent or AgentUsage()
    input_tokens, output_tokens = spent.input_tokens + usage.input_tokens, spent.output_tokens + usage.output_tokens
    return AgentUsage(requests=usage.requests if requests is None else requests, input_tokens=input_tokens,
                      output_tokens=output_tokens, tool_calls=spent.tool_calls + usage.tool_calls,
                      seconds=round(spent.seconds + seconds, 3), cost=cost_of(config, input_tokens, output_tokens))


def exceeded_limit(message: str) -> str:
    """Our budget name for pydantic-ai's UsageLimitExceeded message (``max_requests``...)."""
    found = _LIMIT_IN_MESSAGE.search(message)
    return _LIMIT_NAMES[found.group(1)] if found else "usage_limit"


class RunBudget:
    """Limits shared by every model agent of one run (requests, tokens, seconds since the run began).

    Requests are counted by ``meter`` as they are sent (each agent's and the planner's meters go
    through it, so ``run_max_requests`` is never passed); tokens are charged after each response, and
    the first charge past a limit stops that agent with ``BudgetExceeded`` naming ``run_max_...``.
    Thread-safe: agents run side by side.
    """

    def __init__(self, max_requests: int | None = None, max_tokens: int | None = None,
                 max_seconds: float | None = None, spent: AgentUsage | None = None) -> None:
        import threading

        from .transport import RequestMeter

        self.max_requests, self.max_tokens, self.max_seconds = max_requests, max_tokens, max_seconds
        self.started = time.monotonic()
        self.meter = RequestMeter(limit=max_requests, name="run_max_requests",
                                  sent=spent.requests if spent else 0)    # earlier attempts of the run count too
        self.tokens = (spent.input_tokens + spent.output_tokens) if spent else 0
        self._lock = threading.Lock()

    @property
    def requests(self) -> int:
        return self.meter.sent

    @property
    def limited(self) -> bool:
        return any(v is not None for v in (self.max_requests, self.max_tokens, self.max_seconds))

    def seconds_left(self) -> float | None:
        return None if self.max_seconds is None else self.max_seconds - (time.monotonic() - self.started)

    def exhausted(self) -> str | None:
        """The run limit already reached, or None."""
        with self._lock:
            return self._over()

    def charge(self, tokens: int) -> str | None:
        """Count one response's tokens; the run limit reached (``run_max_tokens``...), or None."""
        with self._lock:
            self.tokens += tokens
            return self._over()

    def _over(self) -> str | None:
        if self.max_requests is not None and self.meter.sent >= self.max_requests:
            return "run_max_requests"
        if self.max_tokens is not None and self.tokens >= self.max_tokens:
            return "run_max_tokens"
        left = self.seconds_left()
        if left is not None and left <= 0:
            return "run_max_seconds"
        return None


def total_usage(usages: list[AgentUsage | dict | None]) -> AgentUsage:
    """The run's totals over its agents' usage (a cost only when some agent has one)."""
    items = [u if isinstance(u, AgentUsage) else AgentUsage.model_validate(u) for u in usages if u]
    costs = [u.cost for u in items if u.cost is not None]
    return AgentUsage(requests=sum(u.requests for u in items), input_tokens=sum(u.input_tokens for u in items),
                      output_tokens=sum(u.output_tokens for u in items), tool_calls=sum(u.tool_calls for u in items),
                      seconds=round(sum(u.seconds for u in items), 3), cost=round(sum(costs), 8) if costs else None)
