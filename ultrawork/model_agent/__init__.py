"""The built-in model agent: a tool-calling loop on the host whose every action runs in the agent's sandbox.

Plain core (no Prefect): `ModelAgent(config, on_turn=...).run(prompt, tools, role, writable)`
with a `ModelAgentConfig` (provider, model, key, prices, budgets) and a `SandboxTools`
(`GuardedSandboxTools` over a sandbox built with ``agent_files=SANDBOX_FILES``).
Names load on first use, so settings code (``ultrawork.model_agent.config``) does not import the model library.
"""

from importlib import import_module

_WHERE = {
    "AgentUsage": "accounting", "RunBudget": "accounting", "total_usage": "accounting", "ToolCallRecord": "accounting", "ToolResultRecord": "accounting",
    "TurnRecord": "accounting",
    "ModelAgent": "agent", "ModelAgentAnswer": "agent", "ModelAgentResult": "agent",
    "PROVIDERS": "config", "ModelAgentConfig": "config",
    "BudgetExceeded": "errors", "ModelAgentError": "errors", "ModelCallError": "errors", "ModelConfigError": "errors",
    "MAX_CONTENT_BYTES": "tools", "MAX_RESULT_CHARS": "tools", "SANDBOX_FILES": "tools",
    "GuardedSandboxTools": "tools", "SandboxTools": "tools",
}
__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module 'model_agent' has no attribute {name!r}")
    value = getattr(import_module(f".{_WHERE[name]}", __name__), name)
    globals()[name] = value
    return value
