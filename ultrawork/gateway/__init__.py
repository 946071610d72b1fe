"""The egress gateway: deny-by-default HTTP(S) egress for sandboxes, holding the credentials (no Prefect)."""

from .errors import CredentialHostNotAllowed, GatewayError, GatewayImageError, GatewayRulesError, SecretUnavailable
from .gateway import AgentNetwork, EgressGateway, EgressSummary, GatewayRules, check_rules
from .image import build_gateway_image, gateway_image
from .rules import PLACEHOLDER, AgentProfile, Credential, HostRule, Route, env_resolver

__all__ = [
    "AgentNetwork", "AgentProfile", "Credential", "CredentialHostNotAllowed", "EgressGateway", "EgressSummary",
    "GatewayError", "GatewayImageError", "GatewayRules", "GatewayRulesError", "HostRule", "PLACEHOLDER", "Route",
    "SecretUnavailable", "build_gateway_image", "check_rules", "env_resolver", "gateway_image",
]
