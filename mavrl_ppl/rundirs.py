"""Run directories: one run at a time per ``--out``, written atomically, and no left-overs of dead runs.

A run into ``OUT`` first *claims* it: it creates the claim directory ``.OUT.lock`` beside ``OUT`` and holds an
``fcntl.flock`` lock on the file ``.OUT.lock/owner`` (which records the owner's pid, host and start time) for as long
as it runs. The kernel drops the lock when the process ends, however it ends (SIGKILL included), so:

- a second run into the same ``OUT`` finds the lock held and stops at once, before any work, with one line naming
  the owner; runs into different directories never wait for each other;
- a claim whose lock is free belongs to a dead run: the next run into the same parent directory removes it (its
  half-written files included);
- whether ``OUT`` may be written is decided under the lock, before any fitting: an existing ``OUT`` needs
  ``overwrite`` (and must be a run directory: a file, or a directory without ``config.json``, is never replaced), and
  a parent directory the run cannot write to is reported right away.

The run writes into ``.OUT.lock/work``; at the end that directory is renamed to ``OUT`` (an existing ``OUT`` is first
moved aside into the claim, then removed), and the claim is removed while still locked. An interrupted or failed run
removes its claim, so nothing is left behind.

The lock protocol: after ``flock`` succeeds, the holder checks that ``.OUT.lock/owner`` is still the file it locked
(a run releasing its claim unlinks the file before it unlocks it); if not, it starts over. ``flock`` works on local
file systems and on NFS (where Linux maps it onto NFS byte-range locks).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shutil
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from mavrl_ppl.errors import UsageError

__all__ = ["claim_path", "claim_run_directory", "clean_stale_claims", "pid_alive"]

#: How long a run waits for a claim whose lock is held but whose owner record names no live process (a claim being
#: created, or a dead run's claim being cleaned: milliseconds); a claim of a live run is refused at once.
WAIT_SECONDS = 2.0
#: A claim directory without an owner record younger than this is being created right now: left alone.
YOUNG_SECONDS = 60.0
_SUFFIX = ".lock"


def claim_path(out: Path | str) -> Path:
    """The claim directory of run directory ``out``: ``.NAME.lock`` beside it."""
    out = Path(out)
    return out.parent / f".{out.name}{_SUFFIX}"


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` of this host is running (a zombie is not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _why(exc: OSError) -> str:
    return exc.strerror or type(exc).__name__


def _owner_record(claim: Path) -> tuple[int, str, float] | None:
    """``(pid, host, start time)`` from a claim's owner file, ``None`` if missing or not (yet) written."""
    try:
        pid, host, started = (claim / "owner").read_text().split()[:3]
        return int(pid), host, float(started)
    except (OSError, ValueError):
        return None


def _describe_owner(claim: Path) -> str:
    record = _owner_record(claim)
    if record is None:
        return "owner unknown"
    pid, host, started = record
    return f"pid {pid} on {host}, started {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(started))}"


def _same_file(path: Path, fd: int) -> bool:
    try:
        st = os.stat(path)
    except OSError:
        return False
    own = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (own.st_dev, own.st_ino)


def _lock(claim: Path, *, create: bool) -> int | None:
    """Lock ``claim/owner`` without waiting: its descriptor, or ``None`` if someone holds it or it is gone.

    Raises:
        OSError: the claim cannot be opened or locked at all (not "someone holds it").
    """
    flags = os.O_RDWR | os.O_CLOEXEC | (os.O_CREAT if create else 0)
    try:
        fd = os.open(claim / "owner", flags, 0o644)
    except (FileNotFoundError, NotADirectoryError):
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        if exc.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
            return None
        raise
    if not _same_file(claim / "owner", fd):  # released and removed by its last owner meanwhile
        os.close(fd)
        return None
    return fd


def _clear(claim: Path) -> None:
    """Remove everything in a claim we hold but its owner file."""
    with contextlib.suppress(OSError):
        for entry in list(claim.iterdir()):
            if entry.name == "owner":
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    entry.unlink()


def _remove_claim(claim: Path, fd: int) -> None:
    """Remove a claim we hold the lock of: its contents, then the owner file, then the directory; then unlock."""
    try:
        _clear(claim)
        with contextlib.suppress(OSError):
            (claim / "owner").unlink()
        with contextlib.suppress(OSError):  # not empty: another run has just created its owner file in it, keep it
            claim.rmdir()
    finally:
        os.close(fd)


def clean_stale_claims(parent: Path | str, *, keep: Path | None = None) -> list[Path]:
    """Remove the claims (and half-written run directories) of dead runs in ``parent``.

    A claim is stale when its lock is free (trying the lock of a live run's claim is harmless: the run holds it);
    a claim without an owner record that is younger than :data:`YOUNG_SECONDS` is being created right now and is
    left alone. Returns the claims removed.
    """
    parent, removed = Path(parent), []
    try:
        entries = [e for e in parent.iterdir() if e.name.startswith(".") and e.name.endswith(_SUFFIX)]
    except OSError:
        return removed
    for claim in entries:
        if claim == keep or not claim.is_dir() or claim.is_symlink():
            continue
        record = _owner_record(claim)
        if record is None:
            try:
                young = time.time() - claim.stat().st_mtime < YOUNG_SECONDS
            except OSError:
                continue
            if young:
                continue
        try:
            fd = _lock(claim, create=record is None)
        except OSError:
            continue
        if fd is None:
            continue
        _remove_claim(claim, fd)
        removed.append(claim)
    return removed


def _check_target(out: Path, overwrite: bool) -> None:
    """Refuse an ``out`` this run may not write: an existing one without ``overwrite``, a file, a directory that is
    not a run directory, or one the run could not replace."""
    if not os.path.lexists(out):
        return
    if out.is_symlink() or not out.is_dir():
        raise UsageError(f"{out} exists and is not a directory; --out names a run directory (remove the file or "
                         "choose another --out)")
    if not overwrite:
        raise UsageError(f"{out} already exists (pass --overwrite to replace it)")
    try:
        empty = not any(out.iterdir())
    except OSError as exc:
        raise UsageError(f"{out}: cannot read it to replace it: {_why(exc)}") from None
    if not empty and not (out / "config.json").is_file():
        raise UsageError(f"{out} is not a run directory (no config.json); --overwrite replaces run directories only")
    if not os.access(out, os.W_OK | os.X_OK):
        raise UsageError(f"{out}: cannot replace it: permission denied")


@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
    """Ignore Ctrl-C and SIGTERM while a claim is being cleaned up (a second Ctrl-C must not leave half of it)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def _make_parent(out: Path) -> None:
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except FileExistsError as exc:  # a file where a parent directory should be
        raise UsageError(f"cannot create the run directory {out}: {exc.filename} is not a directory") from None
    except OSError as exc:
        raise UsageError(f"cannot create the run directory {out}: {_why(exc)}") from None


def _acquire(claim: Path, out: Path, wait: float) -> tuple[int, bool]:
    """Create (or take over) the claim directory and hold its lock: ``(lock fd, created)``."""
    deadline = time.monotonic() + wait
    while True:
        try:
            claim.mkdir()
            created = True
        except FileExistsError:
            created = False
        except OSError as exc:
            raise UsageError(f"cannot write the run directory {out}: {_why(exc)}") from None
        try:
            fd = _lock(claim, create=True)
        except OSError as exc:
            raise UsageError(f"cannot lock {claim} for the run directory {out}: {_why(exc)}") from None
        if fd is not None:
            return fd, created
        record = _owner_record(claim)
        live = record is not None and (record[1] != socket.gethostname() or pid_alive(record[0]))
        if live or time.monotonic() > deadline:  # else a dead run's claim being cleaned, or one being created
            raise UsageError(f"{out}: another run is writing it ({_describe_owner(claim)}); wait for it to finish or "
                             "choose another --out")
        time.sleep(0.05)


@contextlib.contextmanager
def claim_run_directory(out: Path | str, *, overwrite: bool = False, wait: float = WAIT_SECONDS) -> Iterator[Path]:
    """Claim ``out`` for this run; yield the directory to write the run into; publish it as ``out`` at the end.

    If the block raises (or is interrupted), nothing is published and the claim is removed.

    Args:
        out: the run directory.
        overwrite: replace an existing ``out`` (a run directory) at the end.
        wait: seconds to wait for a claim whose lock is held but whose owner record names no live run (a claim
            being created, or a dead run's being removed); a live run's claim is refused at once.

    Raises:
        UsageError: ``out`` is being written by another run, exists (without ``overwrite``), is a file or not a run
            directory, or cannot be written; all found before the block runs.
    """
    out = Path(out)
    if out.name in ("", ".", ".."):
        raise UsageError(f"--out {out}: name the run directory itself")
    parent = out.parent
    _make_parent(out)
    _check_target(out, overwrite)
    claim = claim_path(out)
    fd, created = _acquire(claim, out, wait)
    try:
        if not created:  # a dead run's claim: its half-written files go
            _clear(claim)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()} {socket.gethostname()} {time.time():.3f}\n".encode())
        clean_stale_claims(parent, keep=claim)
        _check_target(out, overwrite)  # again, now that no other run of ours can change it
        work = claim / "work"
        work.mkdir()
    except BaseException:
        with _signals_held():
            _remove_claim(claim, fd)
        raise
    try:
        yield work
        _publish(work, out, claim, overwrite)
    finally:
        with _signals_held():
            _remove_claim(claim, fd)


def _publish(work: Path, out: Path, claim: Path, overwrite: bool) -> None:
    """Rename the finished ``work`` to ``out`` (an existing ``out`` is moved aside into the claim first)."""
    try:
        if os.path.lexists(out):
            _check_target(out, overwrite)  # made meanwhile by something other than a run of ours
            os.rename(out, claim / "replaced")
        os.rename(work, out)
    except OSError as exc:
        raise UsageError(f"cannot write the run directory {out}: {_why(exc)}") from None
