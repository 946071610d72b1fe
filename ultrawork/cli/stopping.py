"""Stopping ``ultrawork run`` from outside: Ctrl-C and SIGTERM end it with one line, no traceback.

The signal becomes :class:`StopRequested` in the main thread; the flow's cleanup (sandboxes,
gateway) runs as the run is cancelled, and Prefect's console handlers are silenced first
so its crash report does not print a traceback. The run's record stays: ``ultrawork resume``
continues it.
"""

from __future__ import annotations

import contextlib
import logging
import signal


class StopRequested(KeyboardInterrupt):
    """The process was asked to stop (SIGINT or SIGTERM)."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signal_name = signal.Signals(signum).name
        self.exit_code = 128 + signum


def silence_console() -> None:
    """Drop console log output from here on (the logs still reach the Prefect server)."""
    loggers = [logging.getLogger()] + [logging.getLogger(name) for name in list(logging.root.manager.loggerDict)]
    for logger in loggers:
        for handler in getattr(logger, "handlers", []):
            if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
                handler.setLevel(logging.CRITICAL + 1)


@contextlib.contextmanager
def stop_on_signals():
    """Within: SIGINT and SIGTERM raise StopRequested; a second one while stopping acts as usual (forces it)."""
    def stop(signum, frame):
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        silence_console()
        raise StopRequested(signum)

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
