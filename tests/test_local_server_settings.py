"""A process that imported Prefect before ultrawork ensured its server still talks to that server."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent("""
    import prefect                      # imported first, as any user script or worker would
    from prefect import flow
    from prefect.client.orchestration import get_client
    from ultrawork.local_server.manager import ensure_server, stop_server

    @flow(name="where-am-i")
    def where_am_i():
        return 1

    url = ensure_server(start_timeout=180)
    try:
        state = where_am_i(return_state=True)
        with get_client(sync_client=True) as client:
            print("API", client.api_url)
            print("FOUND", client.read_flow_run(state.state_details.flow_run_id).name)
        print("URL", url)
    finally:
        stop_server()
""")


def test_a_flow_after_prefect_was_imported_runs_on_the_ultrawork_server(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(ULTRAWORK_HOME=str(tmp_path / "home"), HOME=str(tmp_path))   # a throwaway server would live in ~/.prefect
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = dict(line.split(" ", 1) for line in done.stdout.splitlines() if " " in line)
    assert lines["API"].rstrip("/") == lines["URL"].rstrip("/")
    assert "FOUND" in lines
    assert not (tmp_path / ".prefect" / "prefect.db").exists()      # no throwaway server's database


def test_a_new_home_starts_on_the_migrated_template_and_serves_flows(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(XDG_CACHE_HOME=str(tmp_path / "cache"), HOME=str(tmp_path))
    built = subprocess.run([sys.executable, "-m", "ultrawork.local_server.template"], capture_output=True,
                           text=True, env=env, timeout=300)
    assert built.returncode == 0, built.stdout + built.stderr
    template = next((tmp_path / "cache" / "ultrawork").glob("prefect-*.db"))
    assert template.stat().st_mode & 0o077 == 0
    db = sqlite3.connect(template)                  # a mark that only a copy of the template carries
    db.execute("CREATE TABLE seeded_from_template (x INTEGER)")
    db.commit()
    db.close()
    for home in ("first", "second"):
        env["ULTRAWORK_HOME"] = str(tmp_path / home)
        done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, timeout=300)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "FOUND" in done.stdout
        database = tmp_path / home / "prefect" / "prefect.db"
        assert database.stat().st_mode & 0o077 == 0
        with sqlite3.connect(database) as db:
            assert db.execute("SELECT name FROM sqlite_master WHERE name = 'seeded_from_template'").fetchone()
    assert template.stat().st_size > 0      # the template itself is never served: still there, unchanged


def test_the_template_is_named_by_the_version_of_the_prefect_that_serves_it(tmp_path):
    """The template's name comes from Prefect's metadata (no import of Prefect): it must be the version
    that is imported, or a new Prefect would be served an old schema."""
    import prefect

    from ultrawork.local_server.template import prefect_version, template_path

    assert prefect_version() == prefect.__version__
    assert template_path().name == f"prefect-{prefect.__version__}.db"
