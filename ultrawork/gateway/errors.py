"""Errors of the egress gateway.

``GatewayRulesError`` is bad input, refused before anything starts (fix the
profile); ``GatewayError`` is a gateway that failed or died at run time, which a
caller may recover from by starting it again.
"""

from __future__ import annotations


class GatewayRulesError(ValueError):
    """Rules the gateway refuses; names the field (``agents.explore.credentials[0]``)."""

    def __init__(self, field: str, reason: str):
        self.field, self.reason = field, reason
        super().__init__(f"{field}: {reason}")


class CredentialHostNotAllowed(GatewayRulesError):
    """A profile asks for a credential for a host that is not on its allowlist."""


class SecretUnavailable(GatewayRulesError):
    """A secret a credential names cannot be resolved (its value is never part of the message)."""


class GatewayError(RuntimeError):
    """The gateway is not serving: it failed to start, died, or the engine lost it. Restart it."""


class GatewayImageError(GatewayError):
    """The gateway image could not be built."""
