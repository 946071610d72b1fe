"""One TLS context per CA bundle for Prefect's API clients in this process.

Each Prefect client (the flow's, the result store's, the log and event workers',
the server version check) builds its own ``ssl.create_default_context(cafile=...)``,
which parses the whole CA bundle again: about 30 ms of CPU each, five times as a
run starts, whether the API is reached over TLS or not. The contexts are the same
each time, and httpx shares one context between clients safely, so one is built
per bundle (and again when the bundle file changes) and handed to all of them.
Verification is unchanged: same bundle, same settings.
"""

from __future__ import annotations

import os
import ssl
import threading
import types

_lock = threading.Lock()
_contexts: dict[tuple, ssl.SSLContext] = {}


def _stamp(path) -> tuple:
    try:
        st = os.stat(path)
        return (st.st_mtime_ns, st.st_size)
    except (OSError, TypeError, ValueError):
        return ()


def shared_default_context(purpose=ssl.Purpose.SERVER_AUTH, *, cafile=None, capath=None, cadata=None):
    """``ssl.create_default_context`` with its result kept per (bundle, its mtime and size)."""
    key = (purpose, cafile, _stamp(cafile) if cafile else (), capath,
           cadata if isinstance(cadata, (str, bytes, type(None))) else id(cadata))
    with _lock:
        ctx = _contexts.get(key)
        if ctx is None:
            ctx = _contexts[key] = ssl.create_default_context(purpose, cafile=cafile, capath=capath, cadata=cadata)
        return ctx


class _SharedSSL(types.ModuleType):
    """The ``ssl`` module as the Prefect client modules see it: everything as it is,
    except that ``create_default_context`` hands out the shared contexts."""

    def __getattr__(self, name):
        return getattr(ssl, name)


_shim = _SharedSSL("ssl")
_shim.create_default_context = shared_default_context

# Prefect modules that build a client's context; each makes the same context for the
# same settings (a verified one from a bundle, or one made unverified the same way).
_MODULES = ("prefect.client.orchestration", "prefect._internal.version_checking")


def share_tls_contexts() -> list[str]:
    """Point the Prefect client modules at the shared contexts; returns the modules changed."""
    import importlib

    changed = []
    for name in _MODULES:
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        if getattr(module, "ssl", None) is ssl:
            module.ssl = _shim
            changed.append(name)
    return changed
