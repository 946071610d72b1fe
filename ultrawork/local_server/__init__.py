"""The embedded Prefect server every ``ultrawork`` command shares when no ``PREFECT_API_URL`` is set.

``manager`` finds, starts and stops it (one per ``ULTRAWORK_HOME``); ``process`` is the server
process itself (``python -m ultrawork.local_server.process``).
"""
