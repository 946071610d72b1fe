"""Pull requests on GitHub (or a GitHub-compatible API) through PyGithub.

Host-side only: the token is read from configuration, passed to PyGithub and
to git through the environment of one subprocess, and never logged.
Opening a pull request is idempotent: an open pull request for the same head
branch is found and returned instead of opening a second one.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass

from pydantic import BaseModel, Field, SecretStr

from .errors import UltraworkError


class GitHubError(UltraworkError):
    """GitHub refused a call (bad token, missing repository, validation error)."""


class GitHubTarget(BaseModel):
    """Where integration branches are pushed and pull requests opened."""

    repository: str = Field(description="owner/name of the repository.", pattern=r"^[\w.-]+/[\w.-]+$")
    token: SecretStr = Field(description="A token allowed to push and open pull requests.")
    api_url: str = Field("https://api.github.com", description="REST API base URL (GitHub Enterprise: https://HOST/api/v3).")
    push_url: str | None = Field(None, description="git URL to push to; default https://github.com/OWNER/NAME.git.")
    base_branch: str | None = Field(None, description="Branch the pull request targets; default the repository's default branch.")

    @property
    def git_url(self) -> str:
        return self.push_url or f"https://github.com/{self.repository}.git"

    def git_auth_env(self) -> dict[str, str]:
        """Environment for one git subprocess that authenticates over HTTPS without argv or config files."""
        basic = base64.b64encode(f"x-access-token:{self.token.get_secret_value()}".encode()).decode()
        return {
            "GIT_CONFIG_COUNT": "1",
            "GIT_CONFIG_KEY_0": "http.extraHeader",
            "GIT_CONFIG_VALUE_0": f"Authorization: Basic {basic}",
        }


@dataclass
class PullRequestRef:
    number: int
    url: str
    created: bool


def _client(target: GitHubTarget) -> "Github":  # noqa: F821
    from github import Auth, Github      # here: PyGithub and its crypto cost a run ~20 MB; most runs never call it

    return Github(auth=Auth.Token(target.token.get_secret_value()), base_url=target.api_url, retry=None, timeout=30)


def open_pull_request(target: GitHubTarget, head: str, title: str, body: str) -> PullRequestRef:
    """Open a pull request from ``head``, or return the open one that already exists."""
    from github import GithubException

    gh = _client(target)
    try:
        repo = gh.get_repo(target.repository)
        base = target.base_branch or repo.default_branch
        owner = target.repository.split("/")[0]
        for pr in repo.get_pulls(state="open", head=f"{owner}:{head}", base=base):
            return PullRequestRef(pr.number, pr.html_url, created=False)
        pr = repo.create_pull(title=title, body=body, head=head, base=base)
        return PullRequestRef(pr.number, pr.html_url, created=True)
    except GithubException as exc:
        message = exc.data.get("message") if isinstance(exc.data, dict) else str(exc.data)
        raise GitHubError(f"GitHub refused the pull request for {head} on {target.repository}: "
                          f"{exc.status} {message}") from None
    finally:
        gh.close()


def github_target_from_env() -> GitHubTarget | None:
    """GitHub settings from ``ULTRAWORK_GITHUB_*`` variables; None when no repository is set."""
    from ultrawork.settings import settings

    s = settings()
    if not s.github_repository:
        return None
    if s.github_token is None or not s.github_token.get_secret_value():
        raise GitHubError("ULTRAWORK_GITHUB_REPOSITORY is set but no ULTRAWORK_GITHUB_TOKEN (or GITHUB_TOKEN)")
    return GitHubTarget(repository=s.github_repository, token=s.github_token.get_secret_value(),
                        api_url=s.github_api_url, push_url=s.github_push_url or None,
                        base_branch=s.github_base or None)
