"""The hardened Docker sandbox engine (plain Python over the docker SDK, no Prefect)."""

from .engine import ExecResult, Sandbox, SandboxEngine, SandboxInfo, SandboxStats
from .errors import (
    ContainerGone,
    EngineUnavailable,
    ImageMissing,
    ResourceLimitExceeded,
    SandboxError,
    SandboxPolicyError,
    SandboxTimeout,
    McpError,
    UltraworkError,
)
from .policy import SandboxPolicy, validate_spec
from .spec import DEFAULT_IMAGE, Limits, Mount, SandboxSpec

__all__ = [
    "ContainerGone", "DEFAULT_IMAGE", "EngineUnavailable", "ExecResult", "ImageMissing", "Limits", "McpError", "Mount",
    "ResourceLimitExceeded", "Sandbox", "SandboxEngine", "SandboxError", "SandboxInfo", "SandboxPolicy",
    "SandboxPolicyError", "SandboxSpec", "SandboxStats", "SandboxTimeout", "UltraworkError", "validate_spec",
]
