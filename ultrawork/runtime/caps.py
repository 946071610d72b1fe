"""One cap on live sandboxes across every run, worker, CLI command and MCP session.

Each sandbox holds one slot of Prefect's global concurrency limit ``ultrawork-sandboxes``
from just before its container is created until it is removed, so however many runs
and workers share a Prefect server, at most ``limit`` sandboxes exist at once; the
others wait for a slot. The limit is created on first use with the size of the sandbox
settings block (``SandboxSettings.max_sandboxes``) and follows that block when it changes.

A slot is a Prefect lease renewed in the background while the sandbox lives: a process
that dies without releasing it frees it when the lease runs out (``LEASE_SECONDS``).
Without a Prefect API (``PREFECT_API_URL`` unset: an MCP server on its own) there is no
server to count on and no cap is held.
"""

from __future__ import annotations

import contextvars
import threading
import time

from ultrawork.runtime.logs import get_logger

LIMIT_NAME = "ultrawork-sandboxes"
LEASE_SECONDS = 120.0          # renewed every 90 s; a dead holder's slot is free again within this
RESYNC_SECONDS = 60.0          # how often a process compares the limit with the block
_SYNCED: dict[str, float] = {}  # API URL -> when this process last matched the limit to the block
_SYNC_LOCK = threading.Lock()


class SlotUnavailable(RuntimeError):
    """The sandbox cap could not be taken (the limit is missing or the server refused)."""


def api_url() -> str | None:
    from prefect.settings import get_current_settings

    url = get_current_settings().api.url
    return str(url).rstrip("/") if url else None


def configured_size(block_name: str | None = None) -> int:
    """``max_sandboxes`` of the sandbox settings block (its default when no block is saved)."""
    from ultrawork.blocks import DEFAULT_BLOCK_NAME, SandboxSettings

    try:
        return SandboxSettings.load(block_name or DEFAULT_BLOCK_NAME, _sync=True).max_sandboxes
    except ValueError as exc:
        if "Unable to find block document" not in str(exc):
            raise
        return SandboxSettings.model_fields["max_sandboxes"].default


def ensure_limit(size: int | None = None) -> int:
    """Create ``ultrawork-sandboxes`` if it is missing, or resize it to the block's size; its size."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate, GlobalConcurrencyLimitUpdate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    size = size if size is not None else configured_size()
    with get_client(sync_client=True) as client:
        try:
            limit = client.read_global_concurrency_limit_by_name(LIMIT_NAME)
        except ObjectNotFound:
            try:
                client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=LIMIT_NAME, limit=size))
                get_logger().info("created the global concurrency limit %s: %d sandboxes", LIMIT_NAME, size)
                return size
            except ObjectAlreadyExists:          # another process created it meanwhile
                limit = client.read_global_concurrency_limit_by_name(LIMIT_NAME)
        if limit.limit != size or not limit.active:
            client.update_global_concurrency_limit(LIMIT_NAME, GlobalConcurrencyLimitUpdate(limit=size, active=True))
            get_logger().info("global concurrency limit %s resized from %d to %d sandboxes",
                              LIMIT_NAME, limit.limit, size)
    return size


def _synced() -> None:
    """Match the limit to the block at most every ``RESYNC_SECONDS`` per process and server."""
    url = api_url() or ""
    with _SYNC_LOCK:
        if time.monotonic() - _SYNCED.get(url, -RESYNC_SECONDS) < RESYNC_SECONDS:
            return
        ensure_limit()
        _SYNCED[url] = time.monotonic()


class SandboxSlot:
    """One held slot of ``ultrawork-sandboxes``: taken by :meth:`take`, given back by :meth:`release`.

    Prefect's ``concurrency()`` holds it (and renews its lease) in a thread of its own, so the
    slot outlives the task or call that took it: it belongs to the sandbox, not to a step.
    """

    def __init__(self, label: str):
        self.label = label
        self._taken = threading.Event()
        self._release = threading.Event()
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None

    @classmethod
    def take(cls, label: str) -> "SandboxSlot | None":
        """Wait for a free slot (as long as it takes); None when no Prefect API is configured."""
        if not api_url():
            get_logger().warning("%s: no Prefect API configured: this sandbox is outside the %s cap",
                                 label, LIMIT_NAME)
            return None
        _synced()
        slot = cls(label)
        context = contextvars.copy_context()      # this run's Prefect settings
        slot._thread = threading.Thread(target=context.run, args=(slot._hold,), daemon=True,
                                        name=f"sandbox-slot {label}")
        started = time.monotonic()
        slot._thread.start()
        while not slot._taken.wait(30):
            if not slot._thread.is_alive():
                break
            get_logger().info("%s: waiting %.0f s for one of the %s slots", label, time.monotonic() - started,
                              LIMIT_NAME)
        if slot._error is not None or not slot._taken.is_set():
            raise SlotUnavailable(f"{label}: no slot of {LIMIT_NAME}: {slot._error}") from slot._error
        get_logger().info("%s: holds a %s slot (after %.1f s)", label, LIMIT_NAME, time.monotonic() - started)
        return slot

    def _hold(self) -> None:
        from prefect.concurrency.context import ConcurrencyContext
        from prefect.concurrency.sync import concurrency

        try:   # a context of its own: the task that took the slot would release it when it ends
            with ConcurrencyContext(), concurrency(LIMIT_NAME, occupy=1, lease_duration=LEASE_SECONDS, strict=True,
                             raise_on_lease_renewal_failure=False):
                self._taken.set()
                self._release.wait()
        except BaseException as exc:  # noqa: BLE001 - handed to the waiting caller
            if not self._taken.is_set():
                self._error = exc
            else:
                get_logger().warning("%s: releasing its %s slot failed (%s); its lease frees it within %.0f s",
                                     self.label, LIMIT_NAME, exc, LEASE_SECONDS)

    def release(self, wait: float = 30.0) -> None:
        """Give the slot back (idempotent)."""
        self._release.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(wait)


def release(slot: SandboxSlot | None) -> None:
    """Give ``slot`` back if there is one; None, to clear the holder's field."""
    if slot is not None:
        slot.release()
    return None
