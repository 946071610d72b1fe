"""What the model agent talks to and how much it may spend.

The API key arrives resolved, as a `SecretStr` (the caller reads it from a
Prefect Secret block or a host environment variable); it is read only where
the provider client is built and never enters a sandbox, a log or Plan.md.
"""

from __future__ import annotations

from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator

from .errors import ModelConfigError

PROVIDERS = ("openai", "anthropic", "openai-compatible")
Provider = Literal["openai", "anthropic", "openai-compatible"]
KEYED_PROVIDERS = ("openai", "anthropic")   # openai-compatible servers (Ollama, vLLM) often need none


class ModelAgentConfig(BaseModel):
    """One model agent's provider, model, key, prices and budgets.

    Example:
        >>> ModelAgentConfig(provider="openai-compatible", model="qwen2.5-coder:7b",
        ...                  base_url="http://127.0.0.1:11434/v1", max_requests=30)
        ModelAgentConfig(provider='openai-compatible', model='qwen2.5-coder:7b', ...)
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    provider: Provider = Field(description="openai, anthropic, or openai-compatible (Ollama, vLLM, gateways).")
    model: str = Field(min_length=1, description="Model name as the provider knows it.")
    base_url: str | None = Field(None, description="API base URL (required for openai-compatible; "
                                 "for the others, the provider's own when empty).")
    api_key: SecretStr | None = Field(None, description="API key (required for openai and anthropic).")
    input_price_per_million: float | None = Field(None, ge=0, description="Price of one million input tokens.")
    output_price_per_million: float | None = Field(None, ge=0, description="Price of one million output tokens.")
    max_requests: int | None = Field(50, ge=1, description="Most model requests one agent run may make.")
    max_input_tokens: int | None = Field(None, ge=1, description="Most input tokens one agent run may use.")
    max_output_tokens: int | None = Field(None, ge=1, description="Most output tokens one agent run may use.")
    max_seconds: float | None = Field(1800.0, gt=0, description="Longest one agent run may take, in seconds.")
    connect_timeout: float = Field(10.0, gt=0, le=600, description="Seconds to connect to the provider, per attempt.")
    request_timeout: float = Field(300.0, gt=0, le=3600, description="Seconds to wait for a model's answer once "
                                   "connected, per attempt.")
    attempts: int = Field(3, ge=1, le=10, description="Tries of one model request (connection errors, timeouts, "
                          "429 and 5xx answers); each one is a request counted against the budgets.")
    plan_max_seconds: float = Field(120.0, gt=0, description="Longest the planner may take before the built-in "
                                    "rules choose the agents.")

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as exc:   # names the fields and the problem, never the values given
            problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'settings'}: "
                                 f"{e['msg'].removeprefix('Value error, ')}"
                                 for e in exc.errors(include_input=False, include_url=False))
            raise ModelConfigError(f"model agent settings rejected: {problems}") from None

    def __repr__(self) -> str:
        return (f"ModelAgentConfig(provider={self.provider!r}, model={self.model!r}, base_url={self.base_url!r}, "
                f"api_key={'set' if self.api_key else None}, ...)")

    @model_validator(mode="after")
    def _usable(self) -> "ModelAgentConfig":
        if self.provider in KEYED_PROVIDERS and not (self.api_key and self.api_key.get_secret_value()):
            raise ValueError(f"provider {self.provider!r} needs an API key (api_key is missing or empty)")
        if self.provider == "openai-compatible" and not self.base_url:
            raise ValueError("provider 'openai-compatible' needs base_url (e.g. http://127.0.0.1:11434/v1)")
        if self.base_url:
            parts = urlsplit(self.base_url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError("base_url must be an http:// or https:// URL with a host")
            if parts.username or parts.password:
                raise ValueError("base_url must not carry credentials (give the key as api_key)")
        return self

    @property
    def priced(self) -> bool:
        return self.input_price_per_million is not None or self.output_price_per_million is not None
