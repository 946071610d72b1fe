"""The gateway image: the local sandbox image plus mitmproxy, built without an image registry.

mitmproxy is not a dependency of the project (its pins clash with the
project's): it is installed on the host with the machine's pip into a folder
(``pip install --target``; pip's index comes from the machine's pip
configuration) and COPYed onto ``ultrawork-sandbox:0.1.0``, whose python3 is
Debian bookworm's 3.11. The tag carries a hash of the inputs and the base
image's id, so building again is a no-op until one of them changes. After a
build the image is checked: mitmproxy must import in it.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

from .errors import GatewayImageError

MITMPROXY_VERSION = "11.0.2"          # the newest release that supports Python 3.11
BASE_IMAGE = "ultrawork-sandbox:0.1.0"
REPOSITORY = "ultrawork-gateway"
SITE = "/opt/ultrawork-gateway/site"   # mitmproxy and its dependencies
LABEL_BASE = "ultrawork.gateway-image.base"
GATEWAY_UID = 10081                    # not the sandbox user, not a likely host user

Say = Callable[[str], None]


def dockerfile(base: str = BASE_IMAGE) -> str:
    return "\n".join([
        f"FROM {base}",
        f"COPY site {SITE}",
        f"ENV PYTHONPATH={SITE} PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1",
        f'LABEL ultrawork.gateway-image.mitmproxy="{MITMPROXY_VERSION}"',
        f"USER {GATEWAY_UID}:{GATEWAY_UID}",
    ]) + "\n"


_ENGINE = []     # one Docker API client for the image lookups (each run's gateway start makes two)


def _inspected_id(name: str) -> str | None:
    """The image id of ``name``, None when there is no such image (asked of the engine's API:
    a ``docker image inspect`` process costs more than the answer)."""
    import docker
    import docker.errors

    if not _ENGINE:
        _ENGINE.append(docker.APIClient(**docker.utils.kwargs_from_env(), version="auto", timeout=60))
    try:
        return _ENGINE[0].inspect_image(name)["Id"]
    except docker.errors.ImageNotFound:
        return None
    except docker.errors.APIError as exc:
        if exc.status_code == 404:
            return None
        raise GatewayImageError(f"the Docker engine did not answer about image {name}: {exc}") from None


def _base_id(base: str) -> str:
    found = _inspected_id(base)
    if found is None:
        raise GatewayImageError(f"base image {base} is missing; build it first with 'ultrawork sandbox build'")
    return found


def gateway_image(base: str = BASE_IMAGE) -> str:
    """``ultrawork-gateway:<hash>`` of the build inputs and the base image's id."""
    inputs = json.dumps([MITMPROXY_VERSION, dockerfile(base), _base_id(base), "bytecode"])
    return f"{REPOSITORY}:{hashlib.sha256(inputs.encode()).hexdigest()[:16]}"


def _image_id(tag: str) -> str | None:
    return _inspected_id(tag)


def _run(argv: list[str], what: str, env: dict | None = None) -> str:
    proc = subprocess.run(argv, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise GatewayImageError(f"{what} failed ({proc.returncode}): {proc.stderr.strip()[-1500:]}")
    return proc.stdout


def build_gateway_image(base: str = BASE_IMAGE, say: Say = lambda _: None, force: bool = False) -> str:
    """The gateway image's tag, building it first unless it exists for the same inputs."""
    tag = gateway_image(base)
    replaced = _image_id(tag)
    if replaced and not force:
        return tag
    if sys.version_info[:2] != (3, 11):
        raise GatewayImageError(f"the gateway's mitmproxy is installed for the base image's Python 3.11; "
                                f"run this with a Python 3.11 (this is {sys.version.split()[0]})")
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="ultrawork-gateway-image-") as tmp:
        ctx = Path(tmp)
        say(f"installing mitmproxy {MITMPROXY_VERSION} with pip into the build context")
        _run([sys.executable, "-m", "pip", "install", "--quiet", "--no-compile", "--disable-pip-version-check",
              "--target", str(ctx / "site"), f"mitmproxy=={MITMPROXY_VERSION}"], "pip install mitmproxy")
        # bytecode made once here (the image's root is read-only): a gateway then starts without
        # compiling mitmproxy; unchecked-hash pycs do not depend on the copied files' times
        _run([sys.executable, "-m", "compileall", "-q", "-j", "0", "--invalidation-mode", "unchecked-hash",
              str(ctx / "site")], "compiling mitmproxy")
        (ctx / "Dockerfile").write_text(dockerfile(base))
        say(f"docker build -t {tag} (FROM {base}, no registry)")
        _run(["docker", "build", "--quiet", "-t", tag, "--label", f"{LABEL_BASE}={_base_id(base)}", str(ctx)],
             f"docker build of {tag}", env={**os.environ, "DOCKER_BUILDKIT": "0"})
    version = _run(["docker", "run", "--rm", "--network", "none", "--cap-drop", "ALL", "--read-only", tag,
                    "python3", "-c", "import mitmproxy.version as v, mitmproxy_rs; print(v.VERSION)"],
                   f"checking mitmproxy in {tag}").strip()
    if version != MITMPROXY_VERSION:
        subprocess.run(["docker", "image", "rm", tag], capture_output=True)
        raise GatewayImageError(f"{tag} has mitmproxy {version!r}, not {MITMPROXY_VERSION}")
    if replaced and replaced != _image_id(tag):   # a forced rebuild leaves no untagged image behind
        subprocess.run(["docker", "image", "rm", replaced], capture_output=True)
    say(f"built {tag} in {time.monotonic() - started:.0f}s")
    return tag
