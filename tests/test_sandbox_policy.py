"""Every policy rejection names its field and creates nothing on the engine."""

from __future__ import annotations

from pathlib import Path

import pytest

from sandbox import Limits, Mount, SandboxPolicyError, SandboxSpec


def _bad_specs(root: Path, home: Path) -> list[tuple[str, dict, str]]:
    ws = root / "ws"
    cred = root / "proj" / ".ssh"
    cred.mkdir(parents=True)
    gh = root / "proj" / ".config" / "gh"
    gh.mkdir(parents=True)
    link = root / "link-to-root"
    link.symlink_to("/")
    return [
        ("docker socket", {"mounts": [Mount(source=Path("/var/run/docker.sock"), target="/d")]}, "mounts[0].source"),
        ("root", {"workspace": Path("/")}, "workspace"),
        ("proc", {"mounts": [Mount(source=Path("/proc"), target="/p")]}, "mounts[0].source"),
        ("sys", {"mounts": [Mount(source=Path("/sys"), target="/s")]}, "mounts[0].source"),
        ("etc", {"mounts": [Mount(source=Path("/etc"), target="/e")]}, "mounts[0].source"),
        ("home", {"workspace": home}, "workspace"),
        ("ssh folder", {"workspace": cred}, "workspace"),
        ("gh config", {"mounts": [Mount(source=gh, target="/gh")]}, "mounts[0].source"),
        ("symlink to root", {"workspace": link}, "workspace"),
        ("outside roots", {"workspace": Path("/usr/share")}, "workspace"),
        ("relative path", {"workspace": Path("ws")}, "workspace"),
        ("dotdot escape", {"workspace": ws / ".." / ".." / ".."}, "workspace"),
        ("privileged", {"privileged": True}, "privileged"),
        ("host network", {"network": "host"}, "network"),
        ("container network", {"network": "container:abc"}, "network"),
        ("pid host", {"pid_mode": "host"}, "pid_mode"),
        ("ipc host", {"ipc_mode": "host"}, "ipc_mode"),
        ("cap add", {"cap_add": ["SYS_ADMIN"]}, "cap_add"),
        ("seccomp unconfined", {"security_opt": ["seccomp=unconfined"]}, "security_opt"),
        ("apparmor unconfined", {"security_opt": ["apparmor:unconfined"]}, "security_opt"),
        ("memory above cap", {"limits": Limits(memory_mb=10**6)}, "limits.memory_mb"),
        ("cpus above cap", {"limits": Limits(cpus=512)}, "limits.cpus"),
        ("pids above cap", {"limits": Limits(pids=10**6)}, "limits.pids"),
        ("token env", {"env": {"GITHUB_TOKEN": "x"}}, "env.GITHUB_TOKEN"),
        ("secret env", {"env": {"MY_SECRET_THING": "x"}}, "env.MY_SECRET_THING"),
        ("password env", {"env": {"DB_PASSWORD": "x"}}, "env.DB_PASSWORD"),
        ("key env", {"env": {"OPENAI_API_KEY": "x"}}, "env.OPENAI_API_KEY"),
        ("bad role", {"role": "Bad Role"}, "role"),
        ("bad run id", {"run_id": "../x"}, "run_id"),
        ("reserved label", {"labels": {"ultrawork.run": "other"}}, "labels.ultrawork.run"),
        ("mount over etc", {"mounts": [Mount(source=ws, target="/etc/x")]}, "mounts[0].target"),
    ]


@pytest.mark.docker
def test_each_policy_rejection_names_its_field_and_creates_nothing(engine, sandbox_root, run_id, docker_client, monkeypatch, tmp_path):
    from conftest import managed_container_ids

    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    (sandbox_root / "ws").mkdir()
    before = managed_container_ids(docker_client)
    cases = _bad_specs(sandbox_root, home)
    for label, overrides, field in cases:
        spec = SandboxSpec(**{"role": "explore", "run_id": run_id, **overrides})
        with pytest.raises(SandboxPolicyError) as info:
            engine.create(spec)
        assert info.value.field == field, f"{label}: {info.value}"
        assert field in str(info.value)
    assert managed_container_ids(docker_client) == before
    assert len(cases) >= 30


def test_explicitly_allowed_secret_looking_env_passes(sandbox_root):
    from sandbox import SandboxPolicy, validate_spec

    spec = SandboxSpec(role="explore", run_id="r1", env={"TOKENIZER_MODE": "fast"}, allow_env=["TOKENIZER_MODE"])
    validate_spec(spec, SandboxPolicy(workspace_roots=[sandbox_root]))
    with pytest.raises(SandboxPolicyError):
        validate_spec(spec.model_copy(update={"allow_env": []}), SandboxPolicy(workspace_roots=[sandbox_root]))
