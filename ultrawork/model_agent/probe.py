"""One small request that shows the configured model answers (``ultrawork model set --check``)."""

from __future__ import annotations

import asyncio
import time

from pydantic import BaseModel

from .config import ModelAgentConfig
from .errors import ModelCallError

PROBE_PROMPT = "Reply with the single word OK."
PROBE_SECONDS = 60.0


class ProbeAnswer(BaseModel):
    seconds: float
    input_tokens: int
    output_tokens: int
    text: str


async def check_model(config: ModelAgentConfig, seconds: float = PROBE_SECONDS) -> ProbeAnswer:
    """Send `PROBE_PROMPT` once (no tools, a few output tokens); `ModelCallError` says why it failed."""
    from pydantic_ai import Agent
    from pydantic_ai.exceptions import ModelAPIError, UnexpectedModelBehavior, UsageLimitExceeded
    from pydantic_ai.usage import UsageLimits

    from .agent import _redact, build_model, close_model

    model = build_model(config)
    agent = Agent(model, output_type=str, name="ultrawork-check")
    started = time.monotonic()
    try:
        async with asyncio.timeout(seconds), agent:
            result = await agent.run(PROBE_PROMPT, usage_limits=UsageLimits(request_limit=1),
                                     model_settings={"max_tokens": 16})
    except TimeoutError:
        raise ModelCallError(f"the model did not answer within {seconds:g}s") from None
    except (ModelAPIError, UnexpectedModelBehavior, UsageLimitExceeded) as exc:
        raise ModelCallError(_redact(f"{type(exc).__name__}: {str(exc)[:500]}", config)) from None
    finally:
        await close_model(model)
    usage = result.usage
    return ProbeAnswer(seconds=round(time.monotonic() - started, 3), input_tokens=usage.input_tokens,
                       output_tokens=usage.output_tokens, text=str(result.output)[:200])
