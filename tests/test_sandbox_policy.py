"""Every policy rejection names its field and creates nothing on the engine."""

from __future__ import annotations

from pathlib import Path

import pytest

from ultrawork.sandbox import Limits, Mount, SandboxPolicyError, SandboxSpec


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
    from ultrawork.sandbox import SandboxPolicy, validate_spec

    spec = SandboxSpec(role="explore", run_id="r1", env={"TOKENIZER_MODE": "fast"}, allow_env=["TOKENIZER_MODE"])
    validate_spec(spec, SandboxPolicy(workspace_roots=[sandbox_root]))
    with pytest.raises(SandboxPolicyError):
        validate_spec(spec.model_copy(update={"allow_env": []}), SandboxPolicy(workspace_roots=[sandbox_root]))


# -- credential locations: a source that is, holds or lies inside one ---------------------------
CREDENTIALS = (".ssh", ".gnupg", ".aws", ".azure", ".config/gcloud", ".kube", ".docker", ".config/gh", ".claude",
               ".claude.json", ".codex", ".config/opencode", ".local/share/opencode", ".netrc", ".git-credentials",
               ".npmrc", ".pypirc", ".config/git/credentials")


def _refusal(source: Path, root: Path) -> str:
    from ultrawork.sandbox import SandboxPolicy, validate_spec

    spec = SandboxSpec(role="explore", run_id="r1", mounts=[Mount(source=source, target="/m")])
    with pytest.raises(SandboxPolicyError) as info:
        validate_spec(spec, SandboxPolicy(workspace_roots=[root]))
    assert info.value.field == "mounts[0].source"
    return info.value.problem


def test_a_credential_location_is_refused_as_itself_inside_it_and_in_what_holds_it(sandbox_root, tmp_path,
                                                                                   monkeypatch):
    home = sandbox_root / "someone"                        # a home directory inside the workspace roots
    monkeypatch.setenv("HOME", str(home))
    for cred in CREDENTIALS:
        project = sandbox_root / "proj" / cred.replace("/", "_")
        location = project / cred
        (location / "inner").mkdir(parents=True)
        for source in (location, location / "inner"):      # is, inside
            assert "credential" in _refusal(source, sandbox_root), source
        for k in range(1, cred.count("/") + 1):             # holds: .config, .local, .local/share, .config/git
            holder = project / "/".join(cred.split("/")[:k])
            assert "contains a credential" in _refusal(holder, sandbox_root), holder
        link = sandbox_root / f"link{cred.replace('/', '_')}"  # reached through a link: checked where it points
        link.symlink_to(location)
        assert "credential" in _refusal(link, sandbox_root), link
    (home / "work").mkdir(parents=True)
    assert "home directory" in _refusal(home, sandbox_root)          # the home holds credentials
    looks_like_home = sandbox_root / "copy-of-a-home"
    (looks_like_home / ".ssh").mkdir(parents=True)
    assert "contains a credential location (.ssh)" in _refusal(looks_like_home, sandbox_root)
    _pinned_ok(home / "work", sandbox_root)                          # inside a home, away from credentials: fine


def test_system_locations_and_the_docker_socket_are_refused_with_their_names(sandbox_root):
    for source, words in (("/etc/ssl", "system directory (/etc)"), ("/proc/self", "system directory (/proc)"),
                          ("/sys/kernel", "system directory (/sys)"), ("/dev/shm", "system directory (/dev)"),
                          ("/run/lock", "system directory (/run)"), ("/var/run", "holds the Docker socket"),
                          ("/var", "holds the Docker socket"), ("/", "system directory"),
                          ("/var/run/docker.sock", "Docker socket"), ("/root", "home directory")):
        assert words in _refusal(Path(source), sandbox_root), source


def _pinned_ok(source: Path, root: Path) -> Path:
    from ultrawork.sandbox import SandboxPolicy, validate_spec

    spec = SandboxSpec(role="explore", run_id="r1", workspace=source)
    validate_spec(spec, SandboxPolicy(workspace_roots=[root]))
    return spec.workspace


def test_a_source_is_pinned_its_parents_may_not_be_links_or_sandbox_writable(sandbox_root, tmp_path):
    import os

    from ultrawork.sandbox.spec import SANDBOX_UID

    real = sandbox_root / "projects" / "app"
    real.mkdir(parents=True)
    (sandbox_root / "via").symlink_to(sandbox_root / "projects")
    assert _pinned_ok(sandbox_root / "via" / "app", sandbox_root) == real.resolve(), "Docker gets the resolved path"
    os.chown(real, SANDBOX_UID, SANDBOX_UID)
    real.chmod(0o777)
    assert _pinned_ok(real, sandbox_root) == real.resolve(), "the source itself may be the sandbox's"
    (real / "sub").mkdir()
    problem = _refusal(real / "sub", sandbox_root)
    assert f"its parent {real.resolve()} is writable by the sandbox user" in problem
    for mode, owner in ((0o757, None), (0o775, (0, SANDBOX_UID)), (0o755, (SANDBOX_UID, 0))):
        parent = sandbox_root / f"parent-{mode:o}-{owner}"
        (parent / "ws").mkdir(parents=True)
        if owner:
            os.chown(parent, *owner)
        parent.chmod(mode)
        assert "writable by the sandbox user" in _refusal(parent / "ws", sandbox_root), (mode, owner)
    sticky = sandbox_root / "shared-tmp"                  # like /tmp: all may write, none may rename others' entries
    (sticky / "mine").mkdir(parents=True)
    sticky.chmod(0o1777)
    assert _pinned_ok(sticky / "mine", sandbox_root) == (sticky / "mine").resolve()
    os.chown(sticky / "mine", SANDBOX_UID, SANDBOX_UID)   # an entry the sandbox user owns: it could rename it
    assert "writable by the sandbox user" in _refusal(sticky / "mine" / ".." / "mine", sandbox_root)
