"""The Prefect flows: ``sisyphus`` (one run), ``agent`` (one agent's subflow), ``review``,
``integrate`` and ``sweep`` (the nightly backlog)."""
