"""Disk caps at write time: every folder a sandbox can write is bounded while the agent writes.

The folders are an agent's work tree (``workspace_mb``), its Plan.md folder (``plan_mb``, every
role) and its scratch folder at ``/agent`` (``agent_mb``). One way per host, chosen once
(:func:`disk_backend`, shown by ``ultrawork sandboxes disk`` and logged when a run starts):

* ``loop`` -- root, ``losetup``, ``mkfs.ext4``, ``/dev/loop-control``, mounting an image works and the
  Docker daemon shares this process's mount namespace: each folder is a sparse ext4 image of exactly
  its cap, loop-mounted on the folder (``nosuid,nodev``). A write past the cap fails with ENOSPC inside
  the sandbox, and the host's disk never holds more than the image's size. The filesystem's root gets
  its owner and mode from ``mkfs`` (``root_owner``) and ``chmod``, before any sandbox mounts it.
* ``monitor`` -- anywhere else: the folder is a plain one; a bounded walk during each step stops the
  step within seconds of crossing the cap, and the folder is then brought back under it.

Either way ``ultrawork.sandbox.disk_use.over_cap`` tells whether a step hit a cap (a full filesystem,
or a walk over the cap): the step then ends with ``DiskLimitExceeded``. A record per cap
(``$ULTRAWORK_HOME/disk/caps/<key>.json``: folder, size, image, run, the creating process) lets the
run's end (:func:`release_run`), the engine's cleanup and the reaper (:func:`reap`) release every
cap: unmounted, image removed, and of a Plan.md folder only Plan.md kept.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import hashlib
import json
import logging
import os
import secrets
import shutil
import stat
import subprocess
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable, Iterable, Mapping

from ultrawork.settings import ultrawork_home

from .procs import owner_alive, owner_token
from .spec import SANDBOX_UID

log = logging.getLogger("ultrawork.disk")

BACKEND_ENV = "ULTRAWORK_DISK_BACKEND"     # "monitor" forces the fallback (tests, hosts without loop devices)
KEEP_LIMIT = 16 << 20                      # most a kept file (Plan.md) may hold when its folder is released
MOUNT_OPTIONS = "loop,nosuid,nodev,noatime,noinit_itable"   # inode tables stay unwritten (sparse)


@dataclass(frozen=True)
class DiskBackend:
    kind: str       # "loop" or "monitor"
    why: str        # one sentence, for logs and the doctor

    def sentence(self) -> str:
        if self.kind == "loop":
            return ("disk caps: each agent folder is a loop-mounted ext4 image of its cap; writes past it "
                    f"fail with ENOSPC ({self.why})")
        return ("disk caps: no loop-mounted images here, so a monitor stops a step within seconds of crossing a cap "
                f"(the host's disk may briefly hold more; {self.why})")


def _probe() -> DiskBackend:
    forced = os.environ.get(BACKEND_ENV, "").strip()
    if forced == "monitor":
        return DiskBackend("monitor", f"{BACKEND_ENV}=monitor")
    missing = [tool for tool in ("losetup", "mkfs.ext4", "mount", "umount") if shutil.which(tool) is None
               and not any(os.access(f"{d}/{tool}", os.X_OK) for d in ("/sbin", "/usr/sbin"))]
    if os.geteuid() != 0:
        return DiskBackend("monitor", "not running as root")
    if missing:
        return DiskBackend("monitor", "missing " + ", ".join(missing))
    if not os.path.exists("/dev/loop-control"):
        return DiskBackend("monitor", "no /dev/loop-control")
    daemon = _docker_daemon_pid()
    if daemon is not None:
        try:
            if os.readlink(f"/proc/{daemon}/ns/mnt") != os.readlink("/proc/self/ns/mnt"):
                return DiskBackend("monitor", "the Docker daemon runs in another mount namespace, "
                                              "so it would not see a folder mounted here")
        except OSError:
            pass
    try:
        _try_mount()
    except (OSError, subprocess.SubprocessError) as exc:
        return DiskBackend("monitor", f"mounting a loop image failed: {str(exc)[:200]}")
    return DiskBackend("loop", "root, loop devices, mkfs.ext4 and mount work here")


def _docker_daemon_pid() -> int | None:
    for pidfile in ("/var/run/docker.pid", "/run/docker.pid"):
        try:
            return int(Path(pidfile).read_text().strip())
        except (OSError, ValueError):
            continue
    return None


def _try_mount() -> None:
    """Make, mount and unmount a 4 MiB image once: being root does not always mean mounting works."""
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix="ultrawork-disk-probe-"))
    image, target = folder / "probe.img", folder / "mnt"
    try:
        target.mkdir()
        _make_image(image, 4, 0)
        _mount(image, target)
        _unmount(target)
    finally:
        if os.path.ismount(target):
            _libc().umount2(os.fsencode(target), 2)
        shutil.rmtree(folder, ignore_errors=True)


@lru_cache(maxsize=4)
def _backend_for(forced: str) -> DiskBackend:
    return _probe()


def disk_backend() -> DiskBackend:
    """The host's way of capping disk (probed once per value of ``$ULTRAWORK_DISK_BACKEND``)."""
    return _backend_for(os.environ.get(BACKEND_ENV, ""))


def _tool(name: str) -> str:
    for folder in ("/usr/sbin", "/sbin", "/usr/bin", "/bin"):
        if os.access(f"{folder}/{name}", os.X_OK):
            return f"{folder}/{name}"
    return shutil.which(name) or name


def _run(argv: list[str], timeout: float = 60) -> None:
    done = subprocess.run([_tool(argv[0]), *argv[1:]], capture_output=True, text=True, timeout=timeout)
    if done.returncode:
        raise OSError(f"{' '.join(argv)} failed ({done.returncode}): {(done.stderr or done.stdout).strip()[-300:]}")


# -- records -------------------------------------------------------------------------------
def disk_dir() -> Path:
    """``$ULTRAWORK_HOME/disk``: records, images and scratch folders; host-private (0700)."""
    root = ultrawork_home() / "disk"
    for sub in ("caps", "images", "scratch"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    os.chmod(root, 0o700)
    return root


def _key(path: Path) -> str:
    return hashlib.sha256(os.fsencode(os.path.realpath(path))).hexdigest()[:24]


@dataclass
class DiskCap:
    """One capped folder, as its record has it."""

    key: str
    path: Path
    size_mb: int
    kind: str               # workspace | plan | scratch
    backend: str            # loop | monitor
    run_id: str
    owner: str
    created: float
    image: Path | None = None
    keep: tuple[str, ...] = ()
    sandbox: str = ""       # scratch: the container it serves

    def as_json(self) -> dict:
        return {**self.__dict__, "path": str(self.path), "image": str(self.image) if self.image else None,
                "keep": list(self.keep)}

    @classmethod
    def from_json(cls, data: Mapping) -> "DiskCap":
        return cls(**{**data, "path": Path(data["path"]), "image": Path(data["image"]) if data.get("image") else None,
                      "keep": tuple(data.get("keep") or ())})


def record_path(key: str) -> Path:
    return disk_dir() / "caps" / f"{key}.json"


def _save(cap: DiskCap) -> None:
    tmp = record_path(cap.key).with_suffix(".tmp")
    tmp.write_text(json.dumps(cap.as_json()))
    os.replace(tmp, record_path(cap.key))


def records() -> list[DiskCap]:
    found = []
    for path in sorted((ultrawork_home() / "disk" / "caps").glob("*.json")):
        try:
            found.append(DiskCap.from_json(json.loads(path.read_text())))
        except (OSError, ValueError, TypeError, KeyError):
            continue
    return found


def record_for(path: Path) -> DiskCap | None:
    try:
        return DiskCap.from_json(json.loads((ultrawork_home() / "disk" / "caps" / f"{_key(path)}.json").read_text()))
    except (OSError, ValueError, TypeError, KeyError):
        return None


def mounted(path: Path) -> bool:
    return os.path.ismount(path)


# -- creating ------------------------------------------------------------------------------
def _empty_dir(path: Path) -> bool:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    if not stat.S_ISDIR(st.st_mode):
        raise OSError(f"{path} is not a folder")
    with os.scandir(path) as entries:
        return next(entries, None) is None


def cap_folder(path: Path, size_mb: int, *, run_id: str, kind: str, keep: Iterable[str] = (),
               mode: int = 0o775, sandbox: str = "") -> DiskCap:
    """Make ``path`` (absent or empty) a folder that holds at most ``size_mb`` MiB; idempotent.

    Its root is owned by the host with the sandbox user's group (``root:1000``, ``mode``) from the
    start; as a non-root host it is made writable for others instead (as the grant would)."""
    path = Path(path)
    existing = record_for(path)
    if existing is not None and (existing.backend == "monitor" or mounted(path)):
        return existing
    if (existing is not None and existing.image is not None and existing.image.is_file()
            and os.path.isdir(path) and not os.path.islink(path) and _empty_dir(path)):
        try:                                  # its image outlived the mount (a reboot): mounted again as it was
            _mount(existing.image, path)
            return existing
        except OSError:
            pass
    if existing is not None:                  # recorded but not mounted (a crash between): start again
        release(existing)
    if not (not os.path.lexists(path) or _empty_dir(path)):
        raise OSError(f"{path} is not empty: a capped folder starts empty (see move_into_cap)")
    backend = disk_backend()
    key = _key(path)
    cap = DiskCap(key=key, path=path, size_mb=int(size_mb), kind=kind, backend=backend.kind, run_id=run_id,
                  owner=owner_token(), created=time.time(), keep=tuple(keep), sandbox=sandbox,
                  image=disk_dir() / "images" / f"{key}.img" if backend.kind == "loop" else None)
    _save(cap)                                # first: a crash from here on leaves something the reaper finds
    try:
        path.mkdir(parents=True, exist_ok=True)
        gid = SANDBOX_UID if os.geteuid() == 0 else -1
        if cap.image is not None:
            _new_image(cap.image, cap.size_mb, gid, inode_ratio=8192 if kind == "workspace" else None)
            _mount(cap.image, path)
            os.rmdir(path / "lost+found")
        if os.geteuid() == 0:
            os.chown(path, 0, SANDBOX_UID)
            os.chmod(path, mode)
        else:
            os.chmod(path, mode | 0o007)
    except BaseException:
        release(cap)
        raise
    return cap


def _new_image(image: Path, size_mb: int, gid: int, inode_ratio: int | None = None) -> None:
    """A fresh filesystem image: a sparse copy of the one ``mkfs`` made once for this size (a few
    hundred KiB of metadata copied instead of a ``mkfs`` per folder; ext4 minds no shared UUID)."""
    template = disk_dir() / "templates" / f"ext4-{size_mb}m-i{inode_ratio or 0}-g{max(gid, 0)}.img"
    if not template.is_file():
        template.parent.mkdir(exist_ok=True)
        scratch = template.with_name(f".{template.name}.{secrets.token_hex(4)}")
        try:
            _make_image(scratch, size_mb, gid, inode_ratio)
            os.replace(scratch, template)
        finally:
            scratch.unlink(missing_ok=True)
    _copy_sparse(template, image)


def _copy_sparse(source: Path, target: Path) -> None:
    """Copy only the data extents of ``source`` (``SEEK_DATA``/``SEEK_HOLE``): the copy stays sparse."""
    target.unlink(missing_ok=True)
    src = os.open(source, os.O_RDONLY | os.O_NOFOLLOW)
    try:
        dst = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        try:
            size = os.fstat(src).st_size
            os.ftruncate(dst, size)
            at = 0
            while at < size:
                try:
                    start = os.lseek(src, at, os.SEEK_DATA)
                except OSError:          # ENXIO: no data past ``at``
                    break
                end = os.lseek(src, start, os.SEEK_HOLE)
                while start < end:
                    chunk = os.pread(src, min(end - start, 1 << 20), start)
                    if not chunk:
                        break
                    os.pwrite(dst, chunk, start)
                    start += len(chunk)
                at = end
        finally:
            os.close(dst)
    finally:
        os.close(src)


def _make_image(image: Path, size_mb: int, gid: int, inode_ratio: int | None = None) -> None:
    image.unlink(missing_ok=True)
    fd = os.open(image, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        os.ftruncate(fd, size_mb << 20)   # sparse: takes blocks only as the agent writes
    finally:
        os.close(fd)
    # -m 0: no blocks reserved for root; no journal: nothing to replay, less to write. A work tree gets
    # one inode per 8 KiB (131072 for 1 GiB: a large repository's checkout fits; 3% of the image)
    ratio = ["-i", str(inode_ratio)] if inode_ratio else []
    _run(["mkfs.ext4", "-q", "-F", "-m", "0", "-O", "^has_journal", *ratio,
          "-E", f"lazy_itable_init=1,root_owner=0:{max(gid, 0)}", str(image)])


def move_into_cap(path: Path, size_mb: int, *, run_id: str, kind: str, keep: Iterable[str] = ()) -> DiskCap:
    """``cap_folder`` for a folder that already holds host-written files (no sandbox has it mounted):
    the files move into the capped filesystem. Used when a folder made before (a resumed run, a
    folder released at a run's failure) is mounted again."""
    path = Path(path)
    existing = record_for(path)
    if existing is not None and (existing.backend == "monitor" or mounted(path)):
        return existing
    if not os.path.lexists(path) or _empty_dir(path):
        return cap_folder(path, size_mb, run_id=run_id, kind=kind, keep=keep)
    aside = path.with_name(f".{path.name}.uncapped-{secrets.token_hex(3)}")
    os.rename(path, aside)
    try:
        cap = cap_folder(path, size_mb, run_id=run_id, kind=kind, keep=keep)
        for entry in os.scandir(aside):
            owner = entry.stat(follow_symlinks=False)
            shutil.move(entry.path, path / entry.name)    # a copy across file systems: the owner goes with it
            os.lchown(path / entry.name, owner.st_uid, owner.st_gid)
    except BaseException:
        if not os.path.lexists(path) or (not mounted(path) and _empty_dir(path)):
            shutil.rmtree(path, ignore_errors=True)
            os.rename(aside, path)
        raise
    shutil.rmtree(aside, ignore_errors=True)
    return cap


def cap_scratch(run_id: str, sandbox: str, size_mb: int) -> DiskCap:
    """A new capped folder for one sandbox's ``/agent``, in the host-private disk folder."""
    path = disk_dir() / "scratch" / f"{run_id[:40]}-{secrets.token_hex(6)}"
    return cap_folder(path, size_mb, run_id=run_id, kind="scratch", mode=0o775, sandbox=sandbox)


def cap_agent_folders(ws, limits, workspace_mode: str) -> None:
    """Cap an agent's Plan.md folder (every role: ``limits.plan_mb``, only Plan.md outlives the run)
    and, when the sandbox may write it, its work tree (``limits.workspace_mb``), before any sandbox
    mounts them. Idempotent; folders that already hold host-written files move into their caps."""
    move_into_cap(ws.plan_path.parent, limits.plan_mb, run_id=ws.run.run_id, kind="plan", keep=("Plan.md",))
    if workspace_mode == "rw":
        move_into_cap(ws.path, limits.workspace_mb, run_id=ws.run.run_id, kind="workspace")


# -- releasing -----------------------------------------------------------------------------
def _read_kept(path: Path, names: Iterable[str]) -> dict[str, tuple[bytes, int, int]]:
    """Regular files named ``names`` directly in ``path``, opened without following links, capped."""
    kept = {}
    for name in names:
        try:
            fd = os.open(path / name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except OSError:
            continue
        try:
            st = os.fstat(fd)
            if stat.S_ISREG(st.st_mode):
                chunks, left = [], KEEP_LIMIT
                while left > 0:
                    chunk = os.read(fd, min(left, 1 << 20))
                    if not chunk:
                        break
                    chunks.append(chunk)
                    left -= len(chunk)
                kept[name] = (b"".join(chunks), stat.S_IMODE(st.st_mode) & 0o775, st.st_gid)
        finally:
            os.close(fd)
    return kept


def _write_kept(path: Path, kept: Mapping[str, tuple[bytes, int, int]]) -> None:
    for name, (data, mode, gid) in kept.items():
        target = path / name
        if os.path.lexists(target):
            continue
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        try:
            os.write(fd, data)
            if os.geteuid() == 0:
                os.fchown(fd, 0, gid)
            os.fchmod(fd, mode)
        finally:
            os.close(fd)


def _unmount(path: Path) -> None:
    """``umount2(2)`` (no ``umount`` process); busy -- a host process inside it -- detaches it now,
    freed when that process lets go. The loop device goes with the last mount (autoclear)."""
    if not mounted(path):
        return
    libc = _libc()
    if libc.umount2(os.fsencode(path), 0) == 0:
        return
    if libc.umount2(os.fsencode(path), 2) != 0:        # MNT_DETACH
        error = ctypes.get_errno()
        if error != errno.EINVAL or mounted(path):     # EINVAL: no longer a mount point (released meanwhile)
            raise OSError(error, f"unmounting {path} failed: {os.strerror(error)}")


def unmount_under(folder: Path) -> list[str]:
    """Unmount every capped folder below ``folder`` (deepest first): what a killed process left there,
    before the folder itself is removed (a scratch home, a benchmark's or a test's)."""
    base = os.path.realpath(folder) + os.sep
    try:
        points = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()]
    except OSError:
        return []
    done = []
    for point in sorted((p for p in points if p.startswith(base)), key=len, reverse=True):
        try:
            _unmount(Path(point))
            done.append(point)
        except OSError:
            pass
    return done


class _LoopInfo64(ctypes.Structure):
    _fields_ = [("lo_device", ctypes.c_uint64), ("lo_inode", ctypes.c_uint64), ("lo_rdevice", ctypes.c_uint64),
                ("lo_offset", ctypes.c_uint64), ("lo_sizelimit", ctypes.c_uint64), ("lo_number", ctypes.c_uint32),
                ("lo_encrypt_type", ctypes.c_uint32), ("lo_encrypt_key_size", ctypes.c_uint32),
                ("lo_flags", ctypes.c_uint32), ("lo_file_name", ctypes.c_uint8 * 64),
                ("lo_crypt_name", ctypes.c_uint8 * 64), ("lo_encrypt_key", ctypes.c_uint8 * 32),
                ("lo_init", ctypes.c_uint64 * 2)]


class _LoopConfig(ctypes.Structure):
    _fields_ = [("fd", ctypes.c_uint32), ("block_size", ctypes.c_uint32), ("info", _LoopInfo64),
                ("reserved", ctypes.c_uint64 * 8)]


_LOOP_CTL_GET_FREE, _LOOP_CONFIGURE, _LO_FLAGS_AUTOCLEAR = 0x4C82, 0x4C0A, 4
_MS_NOSUID, _MS_NODEV, _MS_NOATIME = 2, 4, 1024


def _mount(image: Path, target: Path) -> None:
    """``mount -o loop,nosuid,nodev,noatime`` by system calls (no processes started): a free loop
    device bound to ``image`` with autoclear (it goes with the last mount), then ext4 on ``target``.
    Falls back to ``mount(8)`` where ``LOOP_CONFIGURE`` is missing (kernels before 5.8)."""
    import fcntl

    libc = _libc()
    backing = os.open(image, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        control = os.open("/dev/loop-control", os.O_RDWR | os.O_CLOEXEC)
        try:
            for _ in range(16):               # another process may take the free device first: ask again
                number = fcntl.ioctl(control, _LOOP_CTL_GET_FREE)
                device = f"/dev/loop{number}"
                loop = os.open(device, os.O_RDWR | os.O_CLOEXEC)
                config = _LoopConfig(fd=backing)
                config.info.lo_flags = _LO_FLAGS_AUTOCLEAR
                try:
                    fcntl.ioctl(loop, _LOOP_CONFIGURE, config)
                except OSError as exc:
                    os.close(loop)
                    if exc.errno == errno.EBUSY:
                        continue
                    if exc.errno in (errno.EINVAL, errno.ENOTTY):
                        _run(["mount", "-t", "ext4", "-o", MOUNT_OPTIONS, str(image), str(target)])
                        return
                    raise
                try:
                    flags = _MS_NOSUID | _MS_NODEV | _MS_NOATIME
                    if libc.mount(device.encode(), os.fsencode(target), b"ext4", flags, b"noinit_itable") != 0:
                        error = ctypes.get_errno()
                        raise OSError(error, f"mounting {image} on {target} failed: {os.strerror(error)}")
                finally:
                    os.close(loop)           # the mount holds the device now; on failure autoclear frees it
                return
            raise OSError(errno.EBUSY, "no free loop device")
        finally:
            os.close(control)
    finally:
        os.close(backing)


@lru_cache(maxsize=1)
def _libc():
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def remove_all_but(path: Path, keep: Iterable[str]) -> list[str]:
    """Remove what ``path`` holds but its regular files named in ``keep`` (by descriptor); what went."""
    from . import agent_tree

    try:
        return agent_tree.remove_except(path, tuple(keep))
    except (FileNotFoundError, NotADirectoryError):
        return []


def release(cap: DiskCap | Path, *, empty: bool | None = None) -> None:
    """Unmount ``cap`` and remove its image and record, keeping only its ``keep`` files (Plan.md).

    The folder itself stays, empty but for those (a scratch folder goes). ``empty`` (default:
    a scratch folder) removes what was in a monitored folder too."""
    if not isinstance(cap, DiskCap):
        found = record_for(cap)
        if found is None:
            return
        cap = found
    path = cap.path
    if cap.backend == "loop":
        kept = _read_kept(path, cap.keep) if cap.keep and mounted(path) else {}
        _unmount(path)
        if cap.image is not None:
            cap.image.unlink(missing_ok=True)
        if os.path.isdir(path) and not os.path.islink(path):
            remove_all_but(path, ())      # what a failed mount or an unmounted folder held
            _write_kept(path, kept)
    elif cap.keep or (cap.kind == "scratch" if empty is None else empty):
        remove_all_but(path, cap.keep)
    if cap.kind == "scratch":
        from . import agent_tree

        agent_tree.remove(path)          # a sandbox's /agent: written by the agent
    record_path(cap.key).unlink(missing_ok=True)


def release_key(key: str) -> None:
    """Release the cap recorded under ``key`` (a sandbox's /agent folder, named by its label)."""
    if not key or not key.isalnum():
        return
    try:
        data = json.loads(record_path(key).read_text())
        release(DiskCap.from_json(data))
    except FileNotFoundError:
        return
    except (OSError, ValueError, TypeError, KeyError) as exc:
        log.warning("could not release disk cap %s: %s", key, exc)


def release_run(run_id: str, kinds: Iterable[str] = ("workspace", "plan")) -> list[DiskCap]:
    """Release the caps of run ``run_id`` (its work trees and Plan.md folders; Plan.md is kept)."""
    kinds = set(kinds)
    done = []
    for cap in records():
        if cap.run_id == run_id and cap.kind in kinds:
            release(cap)
            done.append(cap)
    return done


def reap(stale: Callable[[DiskCap], bool]) -> list[DiskCap]:
    """Release every cap ``stale`` says is no longer needed (see ``ultrawork.sandbox.reaper``)."""
    done = []
    for cap in records():
        try:
            if stale(cap):
                release(cap)
                done.append(cap)
        except OSError as exc:
            log.warning("could not release the disk cap of %s: %s", cap.path, exc)
    return done


def owner_gone(cap: DiskCap) -> bool:
    return not owner_alive(cap.owner)
