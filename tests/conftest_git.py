"""Fixtures for the workspace tests: real git repositories in tmp_path.

Imported explicitly by the ``test_workspace_*`` modules (not a conftest.py,
so it cannot collide with fixtures other parts of the suite define).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

TEST_GIT_ENV = {
    "GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": "/dev/null",
    "GIT_AUTHOR_NAME": "Test User", "GIT_AUTHOR_EMAIL": "user@example.invalid",
    "GIT_COMMITTER_NAME": "Test User", "GIT_COMMITTER_EMAIL": "user@example.invalid",
}


def git(cwd: Path, *args: str, check: bool = True) -> str:
    """Plain git for test setup and inspection (the code under test uses its own runner)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    env.update(TEST_GIT_ENV)
    proc = subprocess.run(["git", "-c", "protocol.file.allow=always", *args], cwd=str(cwd), env=env,
                          capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"git {args} failed: {proc.stderr}")
    return proc.stdout.rstrip("\n")


def make_repo(path: Path, files: dict[str, str] | None = None) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    git(path, "init", "-q", "-b", "main")
    for name, text in (files or {"README.md": "# target\n", "src/app.py": "print('hi')\n"}).items():
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        (path / name).write_text(text)
    git(path, "add", "-A")
    git(path, "commit", "-q", "-m", "initial")
    return path


def refs(repo: Path) -> list[str]:
    return git(repo, "for-each-ref", "--format=%(refname)").splitlines()


@pytest.fixture
def ultrawork_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "uw-home"
    monkeypatch.setenv("ULTRAWORK_HOME", str(home))
    return home


@pytest.fixture
def target_repo(tmp_path: Path) -> Path:
    return make_repo(tmp_path / "target")


@pytest.fixture
def run(ultrawork_home: Path, target_repo: Path):
    from ultrawork.workspace import RunSuperproject
    return RunSuperproject.create("run-1", target_repo, "Make the app say hello.\n")


def craft_index_with_path(repo: Path, extra_path: str, blob_sha: str, index: Path | None = None) -> None:
    """Write a v2 index holding `repo`'s entries plus `extra_path` (which git itself refuses to add).

    Plain ``git add -A`` with such an index reads the file at that path, even
    outside the work tree; the host commit must not.
    """
    import hashlib
    import struct
    entries = []
    for line in filter(None, git(repo, "ls-files", "-s").split("\n")):
        meta, path = line.split("\t", 1)
        mode, sha, _ = meta.split()
        entries.append((path.encode(), int(mode, 8), bytes.fromhex(sha)))
    entries.append((extra_path.encode(), 0o100644, bytes.fromhex(blob_sha)))
    entries.sort()
    body = b"DIRC" + struct.pack(">II", 2, len(entries))
    for path, mode, sha in entries:
        entry = struct.pack(">10I", 0, 0, 0, 0, 0, 0, mode, 0, 0, 0) + sha + struct.pack(">H", len(path)) + path
        body += entry + b"\0" * (8 - len(entry) % 8)
    (index or repo / ".git" / "index").write_bytes(body + hashlib.sha1(body).digest())
