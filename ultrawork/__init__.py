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
