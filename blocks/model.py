"""Model agent settings: which model the built-in model agent calls, with which key, prices and budgets."""

from __future__ import annotations

import os
from typing import ClassVar, Literal, Mapping

from prefect.blocks.core import Block
from pydantic import Field, SecretStr

from ultrawork.model_agent.config import ModelAgentConfig
from ultrawork.model_agent.errors import ModelConfigError


class ModelAgentSettings(Block):
    """The model behind the built-in model agent, and what one agent may spend.

    The key is given here (``api_key``, stored as a secret) or named as a host
    environment variable (``api_key_env``, read where the flow runs). It is used
    by the host-side loop only: it never enters a sandbox, a log or a Plan.md.
    Ollama and vLLM are ``openai-compatible`` with their ``/v1`` URL (no key needed).
    A run that reaches a budget stops with ``BudgetExceeded`` naming it, and is not retried.

    Example:
        Use a local Ollama model, at most 40 requests and 10 minutes per agent:
        ```python
        from ultrawork.blocks.model import ModelAgentSettings

        ModelAgentSettings(provider="openai-compatible", model="qwen2.5-coder:7b",
                           base_url="http://127.0.0.1:11434/v1", max_requests=40,
                           max_seconds=600).save("default", overwrite=True)
        config = ModelAgentSettings.load("default").config()
        ```
    """

    _block_type_name: ClassVar[str] = "Ultrawork Model Agent"
    _block_type_slug: ClassVar[str] = "ultrawork-model-agent"
    _documentation_url: ClassVar[str] = "https://docs.prefect.io/v3/develop/blocks"

    provider: Literal["openai", "anthropic", "openai-compatible"] = Field(
        "openai", description="openai, anthropic, or openai-compatible (Ollama, vLLM, other gateways).")
    model: str = Field(description="Model name as the provider knows it, e.g. gpt-4.1 or qwen2.5-coder:7b.")
    base_url: str | None = Field(None, description="API base URL (required for openai-compatible, e.g. "
                                 "http://127.0.0.1:11434/v1; empty: the provider's own).")
    api_key: SecretStr | None = Field(None, description="API key, stored as a secret. Leave empty to use api_key_env.")
    api_key_env: str | None = Field(None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
                                    description="Name of a host environment variable holding the API key "
                                    "(read where the flow runs), e.g. OPENAI_API_KEY.")
    input_price_per_million: float | None = Field(None, ge=0, description="Price of one million input tokens "
                                                  "(for the cost shown per agent).")
    output_price_per_million: float | None = Field(None, ge=0, description="Price of one million output tokens.")
    max_requests: int | None = Field(50, ge=1, description="Most model requests one agent may make.")
    max_input_tokens: int | None = Field(None, ge=1, description="Most input tokens one agent may use.")
    max_output_tokens: int | None = Field(None, ge=1, description="Most output tokens one agent may use.")
    max_seconds: float | None = Field(1800.0, gt=0, description="Longest one agent may run, in seconds.")
    run_max_requests: int | None = Field(None, ge=1, description="Most model requests all agents of one run "
                                         "may make together (planning included).")
    run_max_tokens: int | None = Field(None, ge=1, description="Most tokens (input + output) one run may use.")
    run_max_seconds: float | None = Field(None, gt=0, description="Longest the model agents of one run may "
                                          "work, from the run's start, in seconds.")
    connect_timeout: float = Field(10.0, gt=0, le=600, description="Seconds to connect to the provider, per attempt.")
    request_timeout: float = Field(300.0, gt=0, le=3600, description="Seconds to wait for a model's answer once "
                                   "connected, per attempt.")
    attempts: int = Field(3, ge=1, le=10, description="Tries of one model request (connection errors, timeouts, "
                          "429 and 5xx answers); every try counts against the request budgets.")
    plan_max_seconds: float = Field(120.0, gt=0, description="Longest planning may take (all its requests); then "
                                    "the built-in rules choose the agents.")
    plan_runs: bool = Field(True, description="Let the model plan a run (roles, one brief each, writer subtasks) "
                            "when no agents are chosen; off: the built-in rules choose the roles.")

    def run_budget(self, spent=None):
        """The limits one run's model agents share (``spent``: what earlier attempts of the run used)."""
        from ultrawork.model_agent.accounting import RunBudget

        return RunBudget(self.run_max_requests, self.run_max_tokens, self.run_max_seconds, spent)

    def config(self, environ: Mapping[str, str] | None = None) -> ModelAgentConfig:
        """The model agent's settings with the key resolved; `ModelConfigError` names what is missing."""
        if self.api_key is not None and self.api_key_env:
            raise ModelConfigError("model agent settings rejected: set api_key or api_key_env, not both")
        key = self.api_key
        if self.api_key_env:
            value = (os.environ if environ is None else environ).get(self.api_key_env, "")
            if not value:
                raise ModelConfigError(f"model agent settings rejected: api_key_env: the host environment "
                                       f"variable {self.api_key_env} is not set or empty")
            key = SecretStr(value)
        return ModelAgentConfig(provider=self.provider, model=self.model, base_url=self.base_url, api_key=key,
                                input_price_per_million=self.input_price_per_million,
                                output_price_per_million=self.output_price_per_million,
                                max_requests=self.max_requests, max_input_tokens=self.max_input_tokens,
                                max_output_tokens=self.max_output_tokens, max_seconds=self.max_seconds,
                                connect_timeout=self.connect_timeout, request_timeout=self.request_timeout,
                                attempts=self.attempts, plan_max_seconds=self.plan_max_seconds)
