"""GitHub settings: where integration branches are pushed, pull requests opened and backlog issues read."""

from __future__ import annotations

from typing import ClassVar

from prefect.blocks.core import Block
from pydantic import Field, SecretStr

from ultrawork.workspace.github import GitHubTarget


class GitHubSettings(Block):
    """The GitHub repository runs open pull requests on (and a sweep may read its backlog from).

    The token is used on the host only (git push and the REST API); it never
    enters a sandbox, a log or a Plan.md. When no block named ``default`` is
    saved, runs fall back to the ``ULTRAWORK_GITHUB_*`` environment variables.

    Example:
        ```python
        from ultrawork.blocks import GitHubSettings

        GitHubSettings(repository="acme/widgets", token="ghp_...").save("default", overwrite=True)
        target = GitHubSettings.load("default").target()
        ```
    """

    _block_type_name: ClassVar[str] = "Ultrawork GitHub Settings"
    _block_type_slug: ClassVar[str] = "ultrawork-github-settings"
    _documentation_url: ClassVar[str] = "https://docs.github.com/en/rest"

    repository: str = Field(description="owner/name of the repository pull requests are opened on.",
                            pattern=r"^[\w.-]+/[\w.-]+$")
    token: SecretStr = Field(description="A token allowed to push branches, open pull requests and comment on issues.")
    api_url: str = Field("https://api.github.com", description="REST API base URL (GitHub Enterprise: https://HOST/api/v3).")
    push_url: str | None = Field(None, description="git URL to push to (default https://github.com/OWNER/NAME.git).")
    base_branch: str | None = Field(None, description="Branch pull requests target (default: the repository's default branch).")

    def target(self) -> GitHubTarget:
        return GitHubTarget(repository=self.repository, token=self.token, api_url=self.api_url,
                            push_url=self.push_url, base_branch=self.base_branch)
