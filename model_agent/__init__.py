"""The built-in model agent: a tool-calling loop on the host whose every action runs in the agent's sandbox.

Plain core (no Prefect): `ModelAgent(config, on_turn=...).run(prompt, tools, role, writable)`
with a `ModelAgentConfig` (provider, model, key, prices, budgets) and a `SandboxTools`
(`GuardedSandboxTools` over a sandbox built with ``agent_files=SANDBOX_FILES``).
"""

from .accounting import AgentUsage, ToolCallRecord, ToolResultRecord, TurnRecord
from .agent import ModelAgent, ModelAgentAnswer, ModelAgentResult
from .config import PROVIDERS, ModelAgentConfig
from .errors import BudgetExceeded, ModelAgentError, ModelCallError, ModelConfigError
from .tools import MAX_CONTENT_BYTES, MAX_RESULT_CHARS, SANDBOX_FILES, GuardedSandboxTools, SandboxTools

__all__ = ["AgentUsage", "BudgetExceeded", "GuardedSandboxTools", "MAX_CONTENT_BYTES", "MAX_RESULT_CHARS",
           "ModelAgent", "ModelAgentAnswer", "ModelAgentConfig", "ModelAgentError", "ModelAgentResult",
           "ModelCallError", "ModelConfigError", "PROVIDERS", "SANDBOX_FILES", "SandboxTools", "ToolCallRecord",
           "ToolResultRecord", "TurnRecord"]
