"""Named agent profiles (claude-code, opencode, codex): chosen by name, checked before anything starts."""

from __future__ import annotations

import pytest

from ultrawork.agents.profiles import (
    CLI_EGRESS, DEFAULT_PROFILES, UnknownRoleError, named_profile, parse_agent_profiles, with_named_profiles,
)
from ultrawork.gateway import CredentialHostNotAllowed, check_rules, GatewayRules
from ultrawork.gateway.rules import secret_source


@pytest.mark.parametrize("cli", sorted(CLI_EGRESS))
def test_every_role_keeps_its_mount_mode_and_reaches_only_its_model_api_through_the_gateway(cli):
    for role, default in DEFAULT_PROFILES.items():
        profile = named_profile(role, cli)
        assert profile.workspace_mode == default.workspace_mode          # read-only roles stay read-only
        assert profile.network == "gateway" and profile.image.startswith(f"ultrawork-agent-{cli}:")
        hosts = [rule.host for rule in profile.egress.allow]
        assert hosts == [profile.egress.routes[0].host] and hosts[0] in ("api.anthropic.com", "api.openai.com")
        assert all(secret_source(c.secret)[0] == "env" for c in profile.egress.credentials)
        assert all(c.placeholder_env for c in profile.egress.credentials)   # the CLI sees a placeholder only
        check_rules(GatewayRules(agents={role: profile.egress}))
    assert named_profile("explore", "builtin").network == "none"         # the built-in stays offline


def test_bad_choices_are_refused_by_name():
    assert parse_agent_profiles(["frontend=claude-code", " oracle = codex "]) == {
        "frontend": "claude-code", "oracle": "codex"}
    with pytest.raises(ValueError, match="must look like ROLE=PROFILE"):
        parse_agent_profiles(["frontend"])
    with pytest.raises(ValueError, match="unknown agent profile 'vim' for frontend"):
        parse_agent_profiles(["frontend=vim"])
    with pytest.raises(UnknownRoleError, match="painter"):
        parse_agent_profiles(["painter=codex"])
    with pytest.raises(ValueError, match="network 'gateway' and an egress profile go together"):
        DEFAULT_PROFILES["explore"].model_validate({**DEFAULT_PROFILES["explore"].model_dump(), "network": "gateway"})
    chosen = with_named_profiles(dict(DEFAULT_PROFILES), {"oracle": "opencode"})
    assert chosen["oracle"].checklist == DEFAULT_PROFILES["oracle"].checklist and chosen["oracle"].egress is not None


def test_a_block_that_adds_a_credential_for_a_host_off_the_allowlist_is_refused():
    from ultrawork.blocks import AgentProfiles, RoleSettings
    from ultrawork.gateway import AgentProfile as EgressProfile, Credential, HostRule

    leaky = EgressProfile(allow=[HostRule(host="api.anthropic.com")],
                          credentials=[Credential(match="https://collector.example.org/v1", secret="env:ANTHROPIC_API_KEY")])
    profiles = AgentProfiles(frontend=RoleSettings(profile="claude-code", egress=leaky)).apply(dict(DEFAULT_PROFILES))
    with pytest.raises(CredentialHostNotAllowed, match="collector.example.org"):
        check_rules(GatewayRules(agents={"frontend": profiles["frontend"].egress}))
    with pytest.raises(ValueError, match="must be NAME, env:NAME or prefect-secret:NAME"):
        Credential(match="api.anthropic.com", secret="prefect-secret:Bad Name")


def test_the_run_command_refuses_a_bad_agent_profile_before_anything_starts(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from ultrawork.cli.main import app

    monkeypatch.setenv("ULTRAWORK_HOME", str(tmp_path / "home"))
    result = CliRunner().invoke(app, ["run", "--repo", str(tmp_path), "--task", "x", "--agent-profile", "frontend=vim"])
    assert result.exit_code == 2
    assert "unknown agent profile 'vim' for frontend" in result.output
    assert not (tmp_path / "home").exists()
