"""Orchestration: the Sisyphus flow, one agent's subflow, the sweep, and the CLI."""

import os

# Prefect's SQLite server answers lock contention with 503; the local server replays those itself
# for 5 s and then sends a short Retry-After, and the client's default of 5 retries may still run
# out on a busy server. Retry more (set before Prefect reads its settings), but not without end:
# a refused connection backs off 2**n seconds, so 8 retries give up on a server gone for ~8 min
# (20 would wait for weeks, e.g. at exit when the server was stopped first).
os.environ.setdefault("PREFECT_CLIENT_MAX_RETRIES", "8")
