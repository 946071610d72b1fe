"""ultrawork: parallel AI coding agents on one task, orchestrated by Prefect.

Every part of the project is imported under this one name, so installing it
into a shared worker environment adds no generic top-level names:

- ``ultrawork.flows``    the Prefect flows (folder ``flows/``): sisyphus, agent, review, integrate, sweep
- ``ultrawork.tasks``    the Prefect tasks and the retry table they are built from (``tasks/``)
- ``ultrawork.blocks``   the configuration blocks saved in Prefect (``blocks/``)
- ``ultrawork.sandbox``  the hardened Docker sandbox engine and its policy (``sandbox/``)
- ``ultrawork.workspace``, ``.agents``, ``.backlog``, ``.gateway``, ``.model_agent``  the plain core
- ``ultrawork.cli``      the ``ultrawork`` command; ``ultrawork.local_server`` the embedded Prefect server
- ``ultrawork.runtime``  what a flow run uses around its tasks: configuration, logger, artifacts
"""


def _fewer_malloc_arenas(arenas: int = 2) -> None:
    """Cap glibc's malloc arenas for this process (as ``MALLOC_ARENA_MAX=2`` would; a value set in the
    environment is kept).

    glibc gives each thread that allocates its own arena, up to eight per core, and memory freed in
    one is not reused by another: a run's many short-lived threads (sandbox calls, Prefect's
    workers) left a 16-agent run's orchestrator about 55 MB and the local server about 20 MB larger
    than with two arenas, for no measurable speed. Python threads allocate under the GIL, so two
    arenas are enough. Done on import of ``ultrawork``, before any of its threads start.
    """
    import os
    import sys

    if not sys.platform.startswith("linux") or "MALLOC_ARENA_MAX" in os.environ:
        return
    try:
        import ctypes

        ctypes.CDLL(None).mallopt(-8, arenas)      # M_ARENA_MAX; a C library without it (musl) is left as is
    except (OSError, AttributeError):
        pass


_fewer_malloc_arenas()
