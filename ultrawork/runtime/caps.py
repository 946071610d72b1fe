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


class CapFull(SlotUnavailable):
    """No slot is free now (asked with ``wait=False``)."""


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


_CLIENTS: dict[str, object] = {}        # API URL -> the one client every slot of this process uses
_CLIENTS_LOCK = threading.Lock()


def _client():
    """This process's client for the slots' lease calls, made once per API URL: a client costs
    an SSL context and a connection pool, and a run takes and gives back a slot per sandbox."""
    from prefect.client.orchestration import get_client

    url = api_url() or ""
    with _CLIENTS_LOCK:
        client = _CLIENTS.get(url)
        if client is None:
            client = _CLIENTS[url] = get_client(sync_client=True).__enter__()
        return client


class SandboxSlot:
    """One held slot of ``ultrawork-sandboxes``: taken by :meth:`take`, given back by :meth:`release`.

    The slot is a lease of Prefect's global concurrency limit, taken, renewed and released through
    the server's lease endpoints by a thread of its own, so the slot outlives the task or call that
    took it: it belongs to the sandbox, not to a step. Every slot of the process shares one client
    (Prefect's ``concurrency()`` makes two per slot, most of the CPU a sandbox's setup cost here).
    """

    WAIT_LOG_SECONDS = 30.0     # a waiting slot says so this often
    MAX_RETRY_AFTER = 5.0       # a full cap is asked again at least this often

    def __init__(self, label: str, wait: bool = True):
        self.label = label
        self.wait = wait
        self._taken = threading.Event()
        self._release = threading.Event()
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None

    @classmethod
    def take(cls, label: str, wait: bool = True) -> "SandboxSlot | None":
        """Wait for a free slot (as long as it takes); None when no Prefect API is configured.
        With ``wait=False`` a cap with no free slot now raises :class:`CapFull` at once."""
        if not api_url():
            get_logger().warning("%s: no Prefect API configured: this sandbox is outside the %s cap",
                                 label, LIMIT_NAME)
            return None
        _synced()
        slot = cls(label, wait)
        context = contextvars.copy_context()      # this run's Prefect settings
        slot._thread = threading.Thread(target=context.run, args=(slot._hold,), daemon=True,
                                        name=f"sandbox-slot {label}")
        started = time.monotonic()
        slot._thread.start()
        while not slot._taken.wait(slot.WAIT_LOG_SECONDS):
            if not slot._thread.is_alive():
                break
            get_logger().info("%s: waiting %.0f s for one of the %s slots", label, time.monotonic() - started,
                              LIMIT_NAME)
        if isinstance(slot._error, CapFull):
            raise CapFull(f"{label}: every slot of {LIMIT_NAME} is held")
        if slot._error is not None or not slot._taken.is_set():
            raise SlotUnavailable(f"{label}: no slot of {LIMIT_NAME}: {slot._error}") from slot._error
        get_logger().info("%s: holds a %s slot (after %.1f s)", label, LIMIT_NAME, time.monotonic() - started)
        return slot

    def _acquire(self, client) -> str:
        """The lease id of one slot, asking again while the cap is full (the server says when)."""
        import httpx

        while not self._release.is_set():
            try:
                response = client.increment_concurrency_slots_with_lease(
                    names=[LIMIT_NAME], slots=1, mode="concurrency", lease_duration=LEASE_SECONDS)
            except httpx.HTTPStatusError as exc:
                if exc.response.status_code != 423:           # 423 Locked: every slot is held
                    raise
                if not self.wait:
                    raise CapFull("every slot is held") from None
                try:
                    wait = float(exc.response.headers.get("Retry-After", 1.0))
                except ValueError:
                    wait = 1.0
                self._release.wait(min(max(wait, 0.1), self.MAX_RETRY_AFTER))
                continue
            body = response.json()
            if not body.get("limits"):
                raise SlotUnavailable(f"the global concurrency limit {LIMIT_NAME} does not exist")
            return str(body["lease_id"])
        raise SlotUnavailable("released before a slot was free")

    def _hold(self) -> None:
        try:
            client = _client()
            lease = self._acquire(client)
        except BaseException as exc:  # noqa: BLE001 - handed to the waiting caller
            self._error = exc
            return
        self._taken.set()
        try:
            while not self._release.wait(LEASE_SECONDS * 0.75):
                try:
                    client.renew_concurrency_lease(lease, lease_duration=LEASE_SECONDS)
                except Exception as exc:  # noqa: BLE001 - the sandbox goes on; the lease may lapse
                    get_logger().warning("%s: renewing its %s lease failed (%s)", self.label, LIMIT_NAME, exc)
        finally:
            try:
                client.release_concurrency_slots_with_lease(lease)
            except Exception as exc:  # noqa: BLE001 - the lease frees it
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
