"""Every setting ultrawork reads from the environment, in one typed object (``ULTRAWORK_*`` variables).

Prefect's own settings (``PREFECT_*``) stay Prefect's; the blocks saved in Prefect
(``blocks/``) are what a run uses for its sandboxes, agents and GitHub, and these
variables are the fallback and the machine's own facts (where its home is).
:func:`settings` reads the environment each time it is called, so a process that
changes a variable (a test, the CLI's ``--home``) sees it at once.
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ULTRAWORK_", extra="ignore")

    home: Path = Field(Path("~/.ultrawork"),
                       description="Where runs, logs, the local Prefect server and state live.")
    workspace_roots: str = Field("", description=f"More folders sandboxes may mount, separated by {os.pathsep!r}.")
    github_repository: str | None = Field(None, description="owner/name: open pull requests there.")
    github_token: SecretStr | None = Field(
        None, validation_alias=AliasChoices("ULTRAWORK_GITHUB_TOKEN", "GITHUB_TOKEN"),
        description="The token for pull requests (ULTRAWORK_GITHUB_TOKEN, else GITHUB_TOKEN).")
    github_api_url: str = "https://api.github.com"
    github_push_url: str | None = None
    github_base: str | None = None
    faults: str | None = Field(None, description="The chaos harness's rules (JSON); unset in normal use.")
    faults_state: str | None = None

    @property
    def home_path(self) -> Path:
        return self.home.expanduser().resolve()

    @property
    def extra_workspace_roots(self) -> list[Path]:
        return [Path(p) for p in self.workspace_roots.split(os.pathsep) if p]


def settings() -> Settings:
    """The settings as the environment says now."""
    return Settings()


def ultrawork_home() -> Path:
    """Where runs, logs and state live (``$ULTRAWORK_HOME``, default ``~/.ultrawork``), resolved."""
    value = os.environ.get("ULTRAWORK_HOME")      # the hot path: no model built for the one field
    return Path(value or "~/.ultrawork").expanduser().resolve()
