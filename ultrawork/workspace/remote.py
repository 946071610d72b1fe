"""Repositories given by URL: a cache clone per worker, branches pushed back with a lease.

A run's ``repo`` may be a git URL (``file://``, ``https://``, ``ssh://``), so workers on
different machines share nothing but the Prefect server and the remote. Each worker keeps
one bare cache clone per URL under ``$ULTRAWORK_HOME/repos/`` (kept on purpose: the next
run only fetches). A run uses that clone as its target repository, exactly like a local
path, and pushes what it publishes -- each agent's branch ``ultrawork/<run>/<role>`` and the
integration branch -- back to the remote with ``--force-with-lease``: a branch someone else
moved is never overwritten (:class:`PushRejected`).

The URL is checked before anything starts: credentials in it would reach the run's record,
Prefect's parameters and logs, so they are refused. HTTPS authenticates with the GitHub
settings' token when the URL is on that host; ssh uses the worker's keys, never a prompt.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Mapping
from urllib.parse import urlsplit

from ultrawork.settings import ultrawork_home
from ultrawork.workspace.errors import GitError, WorkspaceError
from ultrawork.workspace.gitcmd import run_git
from ultrawork.workspace.locks import file_lock

SCHEMES = ("file", "https", "ssh")
# ssh for remote operations only: never prompts, never reads a password from a terminal
REMOTE_CONFIG = (("core.sshCommand", "ssh -o BatchMode=yes"),)
_UNSAFE = re.compile(r"[\x00-\x20\x7f]")


class RepositoryURLError(WorkspaceError):
    """The repository URL cannot be used (scheme, credentials, unreachable); nothing was created."""


def is_url(repo: object) -> bool:
    return isinstance(repo, str) and "://" in repo


def check_url(url: str) -> str:
    """``url`` if it is a repository URL ultrawork can use, else :class:`RepositoryURLError`."""
    parts = urlsplit(url)
    if parts.password is not None or (parts.scheme == "https" and parts.username):
        raise RepositoryURLError("the repository URL carries credentials, which would be recorded with the run; "
                                 "give the URL without them (HTTPS: the GitHub settings' token; ssh: the worker's keys)")
    if parts.scheme not in SCHEMES:
        raise RepositoryURLError(f"repository URL {url!r}: scheme {parts.scheme!r} is not one of "
                                 f"{', '.join(s + '://' for s in SCHEMES)}")
    if _UNSAFE.search(url) or url.startswith("-") or parts.path.startswith("-"):
        raise RepositoryURLError(f"repository URL {url!r} has spaces, control characters or a leading dash")
    if parts.scheme == "file" and (parts.netloc or not parts.path.startswith("/")):
        raise RepositoryURLError(f"repository URL {url!r}: a file URL is file:///absolute/path")
    if parts.scheme != "file" and not parts.hostname:
        raise RepositoryURLError(f"repository URL {url!r} names no host")
    if parts.scheme != "file" and (parts.hostname.startswith("-") or (parts.username or "").startswith("-")):
        raise RepositoryURLError(f"repository URL {url!r}: a host or user starting with a dash would be read "
                                 "as an ssh option")
    return url


def cache_path(url: str) -> Path:
    """This worker's cache clone of ``url``: ``$ULTRAWORK_HOME/repos/<name>-<hash>.git``."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(urlsplit(url).path).name.removesuffix(".git"))[:40] or "repo"
    return ultrawork_home() / "repos" / f"{name}-{hashlib.sha256(url.encode()).hexdigest()[:12]}.git"


def _auth(url: str) -> Mapping[str, str]:
    """HTTPS credentials for one git process, when the URL is on the GitHub settings' host (else none)."""
    if urlsplit(url).scheme != "https":
        return {}
    from ultrawork.workspace.github import github_target_from_env

    github = github_target_from_env()
    if github is None or urlsplit(github.git_url).hostname != urlsplit(url).hostname:
        return {}
    return github.git_auth_env()


def _remote_git(args: list[str], url: str, cwd: Path, **kwargs):
    return run_git(args, cwd=cwd, env=_auth(url), config=REMOTE_CONFIG, **kwargs)


def _lock(cache: Path):
    return file_lock(cache.with_name(cache.name + ".lock"))


def sync_cache(url: str) -> Path:
    """The cache clone of ``url``, cloned on first use and fetched (every branch) on each later one."""
    check_url(url)
    cache = cache_path(url)
    with _lock(cache):
        try:
            if not (cache / "HEAD").is_file():
                cache.parent.mkdir(parents=True, exist_ok=True)
                scratch = Path(tempfile.mkdtemp(prefix=cache.name + ".", dir=cache.parent))
                try:
                    _remote_git(["clone", "--quiet", "--bare", "--no-tags", "--template=", "--", url,
                                 str(scratch / "clone")], url, cwd=cache.parent)
                    os.replace(scratch / "clone", cache)
                finally:
                    shutil.rmtree(scratch, ignore_errors=True)
            else:
                _remote_git(["fetch", "--quiet", "--no-tags", "--no-write-fetch-head", "--", url,
                             "+refs/heads/*:refs/heads/*"], url, cwd=cache)
        except GitError as exc:
            raise RepositoryURLError(f"could not fetch {url}: {exc.stderr.strip()[-500:] or exc}") from None
    return cache


def local_repository(repo: str) -> str:
    """The path runs work in: ``repo`` itself, or this worker's cache clone when it is a URL."""
    return str(sync_cache(repo)) if is_url(repo) else repo


def _ref(cache: Path, branch: str) -> str:
    return run_git(["rev-parse", "--verify", "--quiet", f"refs/heads/{branch}^{{commit}}"], cwd=cache,
                   check=False).stdout.strip()


class LeasedPush:
    """Update ``branch`` in the cache and push it to the remote, leased on what the cache last saw there.

    Use as a context manager around the cache update: the remote's branch must still be where
    the cache had it before (absent for a new branch), else :class:`PushRejected`."""

    def __init__(self, cache: Path, url: str, branch: str):
        self.cache, self.url, self.branch = cache, url, branch
        self._held = _lock(cache)

    def __enter__(self) -> "LeasedPush":
        self._held.__enter__()
        self.expected = _ref(self.cache, self.branch)
        return self

    def __exit__(self, kind, exc, tb) -> None:
        try:
            if kind is None:
                push(self.cache, self.url, self.branch, self.expected)
        finally:
            self._held.__exit__(kind, exc, tb)


def push(cache: Path, url: str, branch: str, expected: str) -> bool:
    """Push the cache's ``branch`` to ``url``, leased on ``expected`` (what the remote had when the cache last
    saw it); False when the cache holds nothing new. A failed push puts the cache's branch back to
    ``expected``, so the cache never claims a commit the remote does not have."""
    from ultrawork.workspace.integration import PushRejected

    if not branch.startswith("ultrawork/"):
        raise WorkspaceError(f"refusing to push {branch!r} outside the ultrawork/ namespace")
    sha = _ref(cache, branch)
    if not sha or sha == expected:
        return False
    pushed = _remote_git(["push", "--quiet", "--no-verify", f"--force-with-lease=refs/heads/{branch}:{expected}",
                          "--", url, f"{sha}:refs/heads/{branch}"], url, cwd=cache, check=False)
    if pushed.returncode != 0:
        if expected:
            run_git(["update-ref", f"refs/heads/{branch}", expected], cwd=cache)
        else:
            run_git(["update-ref", "-d", f"refs/heads/{branch}"], cwd=cache)
        if "stale info" in pushed.stderr or "rejected" in pushed.stderr:
            raise PushRejected(f"{branch} on {url} moved since this worker last saw it; not forcing it")
        raise GitError(pushed.argv, pushed.returncode, pushed.stderr)
    return True

