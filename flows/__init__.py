"""Orchestration: the Sisyphus flow, one agent's subflow, the sweep, and the CLI."""

import os

# Prefect's SQLite server answers lock contention with 503; the client's default of 5 retries
# covers about a second of it. Runs are long: retry longer (set before Prefect reads its settings).
os.environ.setdefault("PREFECT_CLIENT_MAX_RETRIES", "20")
