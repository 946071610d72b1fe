"""A migrated, empty Prefect database kept once per machine, so a new home's server starts in seconds.

The first start of Prefect's server on a new SQLite database spends most of its time
running every migration (about 8 of 12 s here). ``python -m ultrawork.local_server.template``
(run by ``scripts/provision.sh``) migrates an empty database once per Prefect version into
``$XDG_CACHE_HOME/ultrawork`` (default ``~/.cache/ultrawork``); :func:`seed` copies it
into a home that has no database yet. Without a template the server migrates as before.
The template holds no data of any run (it is never served), only Prefect's schema.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path


def prefect_version() -> str:
    """The installed Prefect's version, read from its distribution's metadata: importing Prefect
    for it would cost every start about 1.5 s (``prefect.__version__`` is this same string)."""
    from importlib.metadata import version

    return version("prefect")


def template_path() -> Path:
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "ultrawork"
    return cache / f"prefect-{prefect_version()}.db"


def build(timeout: float = 300) -> Path:
    """Migrate an empty database into the template (idempotent); its path."""
    path = template_path()
    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    with tempfile.TemporaryDirectory(dir=path.parent) as scratch:
        db = Path(scratch) / "prefect.db"
        env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
        env.update(PREFECT_HOME=scratch, PREFECT_SERVER_DATABASE_CONNECTION_URL=f"sqlite+aiosqlite:///{db}")
        done = subprocess.run([str(Path(sys.executable).with_name("prefect")), "server", "database", "upgrade", "-y"],
                              env=env, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
        if done.returncode != 0 or not db.is_file():
            raise RuntimeError(f"migrating the template database failed: {(done.stdout + done.stderr)[-2000:]}")
        os.chmod(db, 0o600)
        os.replace(db, path)           # whole or not at all
    return path


def seed(database: Path) -> bool:
    """Copy the template to ``database`` when it does not exist yet; whether it did."""
    template = template_path()
    if database.exists() or not template.is_file():
        return False
    partial = database.with_name(database.name + ".seeding")
    with open(template, "rb") as src, open(os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as dst:
        shutil.copyfileobj(src, dst)
    os.replace(partial, database)
    return True


if __name__ == "__main__":
    print(f"Prefect database template: {build()}")
