"""The ``ultrawork`` command: run, status, review, diff, integrate, sweep, server, sandbox."""
