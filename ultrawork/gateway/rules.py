"""Egress rules: per agent profile, the hosts it may reach, how, and with which credential.

Deny by default: a host not on a profile's allowlist, or a method not allowed
for its host, is refused by the gateway with 403. Credentials are named here
(an environment variable or a Prefect Secret block name) and resolved on the
host by a caller-given resolver only when the gateway starts; their values go
into the gateway's private rules file and nowhere else.

Example:
    >>> AgentProfile(
    ...     allow=[HostRule(host="api.anthropic.com", methods=["POST"]),
    ...            HostRule(host="*.pythonhosted.org", methods=["GET", "HEAD"])],
    ...     credentials=[Credential(match="api.anthropic.com", header="x-api-key",
    ...                             format="{secret}", secret="ANTHROPIC_API_KEY",
    ...                             placeholder_env="ANTHROPIC_API_KEY")],
    ...     routes=[Route(upstream="https://api.anthropic.com", base_url_env="ANTHROPIC_BASE_URL")])
"""

from __future__ import annotations

import ipaddress
import re
from typing import Callable
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator

from .errors import CredentialHostNotAllowed, GatewayRulesError, SecretUnavailable
from .policy import host_matches, normalise_host, pattern_covers

PLACEHOLDER = "ultrawork-placeholder"
ALL_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
AGENT_RE = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")
_LABEL = r"(?!-)[a-z0-9-]{1,63}(?<!-)"
HOST_RE = re.compile(rf"^(\*\.)?{_LABEL}(\.{_LABEL})*$")
HEADER_RE = re.compile(r"^[A-Za-z0-9-]{1,64}$")
ENV_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
METHOD_RE = re.compile(r"^[A-Z]{1,16}$")
SECRET_BLOCK_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")   # Prefect block names
PATH_RE = re.compile(r"^(/[A-Za-z0-9._~-]+)+$")
SECRET_SOURCES = ("env", "prefect-secret")

Resolver = Callable[[str], str]


class HostRule(BaseModel):
    """One allowed host (``api.x.com`` or ``*.x.com``) and the HTTP methods allowed there."""

    model_config = ConfigDict(extra="forbid")

    host: str = Field(description="Exact host name, or *.domain for any name below domain.")
    methods: list[str] = Field(default_factory=lambda: list(ALL_METHODS),
                               description="Allowed HTTP methods (a package index: GET and HEAD).")
    ports: list[int] = Field(default_factory=lambda: [443],
                             description="Ports a CONNECT tunnel to this host may name (routes have their own).")

    @field_validator("ports")
    @classmethod
    def _ports(cls, value: list[int]) -> list[int]:
        if not value or any(not 0 < p < 65536 for p in value):
            raise ValueError(f"{value!r} must be a non-empty list of TCP ports")
        return value

    @field_validator("host")
    @classmethod
    def _host(cls, value: str) -> str:
        value = normalise_host(value)
        if not HOST_RE.match(value) or value.count(".") < 1 and not value.startswith("*."):
            raise ValueError(f"{value!r} is not a host name or *.domain pattern")
        return value

    @field_validator("methods")
    @classmethod
    def _methods(cls, value: list[str]) -> list[str]:
        value = [m.upper() for m in value]
        if not value or any(not METHOD_RE.match(m) for m in value):
            raise ValueError(f"{value!r} must be a non-empty list of HTTP methods")
        return value


class Credential(BaseModel):
    """Which header carries which secret, in which format, for a host or a base-URL prefix."""

    model_config = ConfigDict(extra="forbid")

    match: str = Field(description="A host (api.x.com, *.x.com) or a URL prefix (https://api.x.com/v1/).")
    header: str = Field("Authorization", description="Header the gateway sets, e.g. Authorization or x-api-key.")
    format: str = Field("Bearer {secret}", description="Header value; {secret} is replaced by the secret.")
    secret: str = Field(description="Where the secret is read on the host: NAME or env:NAME (a host environment "
                                    "variable) or prefect-secret:NAME (a Prefect Secret block).")
    placeholder_env: str | None = Field(
        None, description=f"Variable set to {PLACEHOLDER!r} in the sandbox, for CLIs that insist on a key.")

    @field_validator("header")
    @classmethod
    def _header(cls, value: str) -> str:
        if not HEADER_RE.match(value):
            raise ValueError(f"{value!r} is not a header name")
        return value

    @field_validator("format")
    @classmethod
    def _format(cls, value: str) -> str:
        if value.count("{secret}") != 1 or any(c in value for c in "\r\n"):
            raise ValueError("must contain {secret} exactly once and no line breaks")
        return value

    @field_validator("placeholder_env")
    @classmethod
    def _env(cls, value: str | None) -> str | None:
        if value is not None and not ENV_RE.match(value):
            raise ValueError(f"{value!r} is not an environment variable name")
        return value

    @field_validator("secret")
    @classmethod
    def _secret(cls, value: str) -> str:
        source, name = secret_source(value)
        if not (ENV_RE if source == "env" else SECRET_BLOCK_RE).match(name):
            raise ValueError(f"{value!r} must be NAME, env:NAME or prefect-secret:NAME")
        return value

    def host(self) -> str:
        if "://" not in self.match:
            return normalise_host(self.match)
        parts = urlsplit(self.match)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"{self.match!r} is not an http(s) URL prefix")
        return normalise_host(parts.hostname)


class Route(BaseModel):
    """A base-URL route: plain HTTP to the gateway inside, HTTPS to ``upstream`` outside."""

    model_config = ConfigDict(extra="forbid")

    upstream: str = Field(description="https://host[:port] the route forwards to.")
    base_url_env: str | None = Field(None, description="Variable the sandbox gets, e.g. ANTHROPIC_BASE_URL.")
    base_url_path: str = Field("", description="Path the variable's URL ends with, e.g. /v1 for OPENAI_BASE_URL.")

    @field_validator("upstream")
    @classmethod
    def _upstream(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme != "https" or not parts.hostname or parts.path not in ("", "/") or parts.query:
            raise ValueError(f"{value!r} must be https://host[:port] (no path)")
        port = f":{parts.port}" if parts.port and parts.port != 443 else ""
        return f"https://{normalise_host(parts.hostname)}{port}"

    @field_validator("base_url_env")
    @classmethod
    def _env(cls, value: str | None) -> str | None:
        if value is not None and not ENV_RE.match(value):
            raise ValueError(f"{value!r} is not an environment variable name")
        return value

    @field_validator("base_url_path")
    @classmethod
    def _path(cls, value: str) -> str:
        if value and not PATH_RE.match(value):
            raise ValueError(f"{value!r} must be a path like /v1")
        return value

    @property
    def host(self) -> str:
        return urlsplit(self.upstream).hostname or ""


class AgentProfile(BaseModel):
    """Everything one agent may do on the network. Empty means nothing at all."""

    model_config = ConfigDict(extra="forbid")

    allow: list[HostRule] = Field(default_factory=list, description="Hosts the agent may reach.")
    credentials: list[Credential] = Field(default_factory=list, description="Credentials the gateway injects.")
    routes: list[Route] = Field(default_factory=list, description="Base-URL routes the sandbox is given.")


def check_profile(agent: str, profile: AgentProfile) -> None:
    """Raise a named :class:`GatewayRulesError` for the first thing in ``profile`` the gateway refuses."""
    if not AGENT_RE.match(agent):
        raise GatewayRulesError(f"agents.{agent}", f"agent names must match {AGENT_RE.pattern}")
    for i, cred in enumerate(profile.credentials):
        field = f"agents.{agent}.credentials[{i}]"
        try:
            host = cred.host()
        except ValueError as exc:
            raise GatewayRulesError(field, str(exc)) from None
        if not HOST_RE.match(host):
            raise GatewayRulesError(field, f"{cred.match!r} does not name a host")
        if not any(pattern_covers(rule.host, host) for rule in profile.allow):
            raise CredentialHostNotAllowed(
                field, f"a credential for {host} is asked for, but {host} is not on this agent's allowlist")
        # Keys are injected on routes only, where the upstream's scheme, host and port come from the
        # rules; through a tunnel the agent names them (and could send the key in plain HTTP).
        if not any(host_matches(host, route.host) for route in profile.routes):
            raise GatewayRulesError(field, f"a credential for {host} needs a route to {host} "
                                           f"(keys are injected only on routes, never through a tunnel)")
    for i, route in enumerate(profile.routes):
        if not any(host_matches(rule.host, route.host) for rule in profile.allow):
            raise GatewayRulesError(f"agents.{agent}.routes[{i}]",
                                    f"{route.host} is not on this agent's allowlist")


def resolve_credentials(agent: str, profile: AgentProfile, resolver: Resolver) -> list[dict]:
    """The credentials of ``profile`` with their header values, for the gateway's rules file only."""
    out = []
    for i, cred in enumerate(profile.credentials):
        try:
            secret = resolver(cred.secret)
        except Exception as exc:  # a resolver's own error type; its message may not be safe to repeat
            raise SecretUnavailable(f"agents.{agent}.credentials[{i}]",
                                    f"secret {cred.secret!r} could not be resolved ({type(exc).__name__})") from None
        if not isinstance(secret, str) or not secret or any(c in secret for c in "\r\n\x00"):
            raise SecretUnavailable(f"agents.{agent}.credentials[{i}]",
                                    f"secret {cred.secret!r} is empty or not a single-line string")
        out.append({"match": cred.match, "header": cred.header, "value": cred.format.replace("{secret}", secret)})
    return out


def secret_source(ref: str) -> tuple[str, str]:
    """``("env", NAME)`` or ``("prefect-secret", NAME)`` for a credential's ``secret`` field."""
    source, sep, name = ref.partition(":")
    if sep and source in SECRET_SOURCES:
        return source, name
    return "env", ref


def env_resolver(name: str) -> str:
    """The default resolver: a host environment variable (``NAME`` or ``env:NAME``)."""
    import os

    source, name = secret_source(name)
    if source != "env":
        raise KeyError(f"{source} secrets need a resolver that reads them")
    value = os.environ.get(name)
    if value is None:
        raise KeyError(name)
    return value


FIRST_ROUTE_PORT = 8081


class GatewayRules(BaseModel):
    """The whole gateway's configuration: a profile per agent plus upstream trust."""

    model_config = ConfigDict(extra="forbid")

    agents: dict[str, AgentProfile] = Field(description="Agent name -> what it may reach.")
    upstream_ca: str | None = Field(None, description="PEM of a CA the gateway trusts for upstream TLS "
                                                      "(a lab's own upstream); the system CAs otherwise.")
    allowed_private: list[str] = Field(default_factory=list, description="Private networks (CIDR) upstreams "
                                       "may live in; private addresses are refused otherwise.")


def check_rules(rules: GatewayRules) -> dict[str, int]:
    """Refuse bad rules by name; return the port of each route's upstream."""
    if not rules.agents:
        raise GatewayRulesError("agents", "no agent needs the gateway")
    for agent, profile in rules.agents.items():
        check_profile(agent, profile)
    for i, cidr in enumerate(rules.allowed_private):
        try:
            ipaddress.ip_network(cidr, strict=False)
        except ValueError:
            raise GatewayRulesError(f"allowed_private[{i}]", f"{cidr!r} is not a network") from None
    if rules.upstream_ca is not None and "-----BEGIN CERTIFICATE-----" not in rules.upstream_ca:
        raise GatewayRulesError("upstream_ca", "is not a PEM certificate")
    upstreams = sorted({route.upstream for p in rules.agents.values() for route in p.routes})
    return {upstream: FIRST_ROUTE_PORT + i for i, upstream in enumerate(upstreams)}
