"""Building the sandbox image: from the Dockerfile, or offline with debootstrap.

Both paths give the same contract: python3, git, user 1000 (``agent``),
``/workspace``, ``/plan`` and ``/agent`` owned by that user, and ``sleep`` as
the idle command. The offline path needs no registry: it bootstraps a minimal
Debian from the mirror the machine's apt is already configured with.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Callable, Literal

from .errors import SandboxError
from .spec import DEFAULT_IMAGE

PACKAGES = ("git", "python3", "ca-certificates", "procps")
IMPORT_CHANGES = (
    "ENV HOME=/home/agent",
    "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "USER 1000:1000",
    "WORKDIR /workspace",
    'LABEL ultrawork.image-contract="1"',
    'CMD ["sleep", "infinity"]',
)
DOCKERFILE = Path(__file__).with_name("Dockerfile")

Say = Callable[[str], None]


def apt_mirror_and_suite() -> tuple[str, str]:
    """The Debian mirror and release this machine's apt uses (never a hard-coded host)."""
    os_release = Path("/etc/os-release").read_text() if Path("/etc/os-release").exists() else ""
    match = re.search(r"^VERSION_CODENAME=(\w+)", os_release, re.M)
    suite = match.group(1) if match else "bookworm"
    texts = []
    for path in [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]:
        if path.is_file() and path.suffix in ("", ".list", ".sources"):
            texts.append(path.read_text(errors="replace"))
    for text in texts:
        for uris, suites in re.findall(r"^URIs:\s*(\S+).*?^Suites:\s*([^\n]+)", text, re.M | re.S):
            if suite in suites.split():
                return uris, suite
        for uri, line_suite in re.findall(r"^deb\s+(?:\[[^\]]*\]\s+)?(\S+)\s+(\S+)", text, re.M):
            if line_suite == suite:
                return uri, suite
    raise SandboxError("no Debian mirror found in /etc/apt/sources.list*; build with --method dockerfile")


def _add_agent_user(root: Path) -> None:
    etc = root / "etc"
    with open(etc / "passwd", "a") as f:
        f.write("agent:x:1000:1000:ultrawork agent:/home/agent:/bin/bash\n")
    with open(etc / "group", "a") as f:
        f.write("agent:x:1000:\n")
    if (etc / "shadow").exists():
        with open(etc / "shadow", "a") as f:
            f.write("agent:!:19000:0:99999:7:::\n")
    for name in ("workspace", "plan", "agent", "home/agent"):
        d = root / name
        d.mkdir(parents=True, exist_ok=True)
        os.chown(d, 1000, 1000)
    for junk in ("var/cache/apt/archives", "var/lib/apt/lists"):
        for p in (root / junk).glob("*"):
            if p.is_file():
                p.unlink()


def build_offline(tag: str = DEFAULT_IMAGE, say: Say = print) -> None:
    """debootstrap a minimal Debian and ``docker import`` it as ``tag``."""
    if os.geteuid() != 0:
        raise SandboxError("the offline image build needs root (debootstrap); run it as root or use --method dockerfile")
    if not shutil.which("debootstrap"):
        say("installing debootstrap from Debian's packages")
        subprocess.run(["apt-get", "install", "-y", "-qq", "debootstrap"], check=True,
                       env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"}, stdout=subprocess.DEVNULL)
    mirror, suite = apt_mirror_and_suite()
    with tempfile.TemporaryDirectory(prefix="ultrawork-rootfs-") as tmp:
        root = Path(tmp) / "rootfs"
        say(f"debootstrap {suite} (minbase + {', '.join(PACKAGES)}) from the configured mirror ...")
        started = time.monotonic()
        proc = subprocess.run(
            ["debootstrap", "--variant=minbase", f"--include={','.join(PACKAGES)}", suite, str(root), mirror],
            capture_output=True, text=True,
        )
        if proc.returncode != 0:
            raise SandboxError(f"debootstrap failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
        say(f"bootstrapped in {time.monotonic() - started:.0f}s; importing as {tag}")
        _add_agent_user(root)
        changes = [arg for change in IMPORT_CHANGES for arg in ("--change", change)]
        tar = subprocess.Popen(["tar", "-C", str(root), "--numeric-owner", "-c", "."], stdout=subprocess.PIPE)
        imp = subprocess.run(["docker", "import", *changes, "-", tag], stdin=tar.stdout, capture_output=True, text=True)
        tar.stdout.close()
        tar.wait()
        if imp.returncode != 0 or tar.returncode != 0:
            raise SandboxError(f"docker import failed: {imp.stderr.strip()}")


def build_dockerfile(tag: str = DEFAULT_IMAGE, say: Say = print) -> None:
    """``docker build`` the packaged Dockerfile (needs a reachable registry)."""
    say(f"docker build -t {tag} (needs debian:bookworm-slim from a registry)")
    proc = subprocess.run(["docker", "build", "-t", tag, "-f", str(DOCKERFILE), str(DOCKERFILE.parent)])
    if proc.returncode != 0:
        raise SandboxError("docker build failed; on a machine without a registry use --method offline")


def build_image(
    tag: str = DEFAULT_IMAGE,
    method: Literal["auto", "offline", "dockerfile"] = "auto",
    say: Say = print,
) -> str:
    """Build the sandbox image; ``auto`` builds offline when we are root on Debian."""
    if method == "auto":
        method = "offline" if os.geteuid() == 0 and Path("/etc/debian_version").exists() else "dockerfile"
    (build_offline if method == "offline" else build_dockerfile)(tag, say)
    return method
