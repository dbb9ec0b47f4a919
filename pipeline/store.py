"""The run directory: the single source of truth of a run.

``outputs/<run>/`` holds:
- ``accepted.jsonl``: accepted records, append-only, in request order.
- ``rejected.jsonl``: every dropped candidate or unparseable completion, with its reason.
- ``run.json``: config (secrets masked), the commit point, counts, faults, token usage and timings.

Crash safety rests on one rule: ``run.json`` records, at each commit, the byte length of both JSONL files and
the next request index, and is replaced atomically only *after* both files are fsynced. On open, anything
past the committed lengths (a torn line, or records of requests after the commit point) is cut off, and the
run resumes at the committed request index. Requests are deterministic in their index, so redoing them gives
the same records: a resumed run ends byte-identical to an uninterrupted one.
"""

from __future__ import annotations

import copy
import errno
import fcntl
import json
import logging
import os
import socket
from pathlib import Path
from typing import Any, Iterator

from pipeline.files import jsonl_bytes, read_jsonl, write_json_atomic

log = logging.getLogger(__name__)

ACCEPTED = "accepted.jsonl"
REJECTED = "rejected.jsonl"
RUN_JSON = "run.json"
LOCK = ".lock"
#: Bytes of records buffered per file between commits before they are written out.
WRITE_BUFFER = 1 << 20


class RunLockedError(RuntimeError):
    """Another live process is writing this run directory."""


class RunDirectoryError(RuntimeError):
    """The run directory cannot be used (not writable, inconsistent, or made by a different config)."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RunStore:
    """Append-only record files plus an atomically committed ``run.json``, guarded by a lock file."""

    def __init__(self, run_dir: str | Path):
        self.run_dir = Path(run_dir)
        self.meta: dict[str, Any] = {}
        self._lock_fd: int | None = None
        self._accepted = None
        self._rejected = None
        self.resumed = False

    # ---- opening -------------------------------------------------------------------------------------------------
    def open(self) -> dict[str, Any]:
        """Lock the directory, cut uncommitted bytes, and return the committed ``run.json`` content ({} if new)."""
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            probe = self.run_dir / ".write-test"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            raise RunDirectoryError(f"{self.run_dir}: output directory is not writable ({exc.strerror})") from None
        self._acquire_lock()
        try:
            run_json = self.run_dir / RUN_JSON
            for leftover in self.run_dir.glob(f".{RUN_JSON}.*"):
                # A commit killed before its rename: the committed run.json is the one that counts.
                leftover.unlink()
            if run_json.exists():
                try:
                    self.meta = json.loads(run_json.read_text(encoding="utf-8"))
                except json.JSONDecodeError as exc:
                    raise RunDirectoryError(f"{run_json}: unreadable ({exc.msg}); move the directory away or pick another run_name") from None
                self.resumed = True
            progress = self.meta.get("progress", {})
            self._truncate(ACCEPTED, progress.get("accepted_bytes", 0))
            self._truncate(REJECTED, progress.get("rejected_bytes", 0))
            self._accepted = open(self.run_dir / ACCEPTED, "ab", buffering=WRITE_BUFFER)
            self._rejected = open(self.run_dir / REJECTED, "ab", buffering=WRITE_BUFFER)
        except BaseException:
            self.close()  # release the lock: a failed open must not leave the directory locked in this process
            raise
        return copy.deepcopy(self.meta)

    def _acquire_lock(self) -> None:
        path = self.run_dir / LOCK
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EAGAIN, errno.EACCES):
                holder = path.read_text(errors="replace").strip() or "unknown process"
                raise RunLockedError(f"{self.run_dir} is in use by {holder}; two runs cannot write one run directory") from None
            raise
        previous = os.pread(fd, 256, 0).decode(errors="replace").strip()
        if previous:
            try:
                pid = int(previous.split()[0].split("=")[1])
            except (IndexError, ValueError):
                pid = -1
            if pid != os.getpid() and not (pid > 0 and _pid_alive(pid)):
                log.warning("%s: taking over a stale lock left by %s (process no longer running)", self.run_dir, previous)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid={os.getpid()} host={socket.gethostname()}\n".encode(), 0)
        self._lock_fd = fd

    def _truncate(self, name: str, committed: int) -> None:
        path = self.run_dir / name
        size = path.stat().st_size if path.exists() else 0
        if size < committed:
            raise RunDirectoryError(
                f"{path}: {size} bytes on disk but {committed} were committed; the file was changed outside the run"
            )
        if size > committed:
            log.warning("%s: dropping %d uncommitted bytes after the last commit (redone on resume)", path, size - committed)
            with open(path, "r+b") as f:
                f.truncate(committed)
                f.flush()
                os.fsync(f.fileno())

    # ---- writing -------------------------------------------------------------------------------------------------
    def append(self, accepted: list[dict[str, Any]], rejected: list[dict[str, Any]]) -> None:
        """Append records to the files' buffers: written out when a buffer fills, and flushed, fsynced and
        committed at the next :meth:`commit`. Until then they are past the commit point, which a crash cuts off
        anyway, so writing them out per request (two system calls each) would buy nothing."""
        if accepted:
            self._accepted.write(jsonl_bytes(accepted))
        if rejected:
            self._rejected.write(jsonl_bytes(rejected))

    def commit(self, next_request_index: int, **sections: Any) -> None:
        """fsync both record files, then atomically record their lengths and the resume point in run.json."""
        self.write_commit(self.prepare_commit(next_request_index, **sections))

    def prepare_commit(self, next_request_index: int, **sections: Any) -> dict[str, Any]:
        """The first half of :meth:`commit`: hand both files' buffers to the OS and fold ``sections`` and the new
        commit point (the files' lengths now, ``next_request_index``) into :attr:`meta`. Returns the ``run.json``
        to write once those bytes are durable (:meth:`write_commit`); until then the old commit point stands."""
        for f in (self._accepted, self._rejected):
            f.flush()
        self.meta.update(copy.deepcopy(sections))
        self.meta["progress"] = {
            **self.meta.get("progress", {}),
            "next_request_index": next_request_index,
            "accepted_bytes": self._accepted.tell(),
            "rejected_bytes": self._rejected.tell(),
        }
        return copy.deepcopy(self.meta)

    def write_commit(self, meta: dict[str, Any]) -> None:
        """The second half of :meth:`commit`: fsync both files, then atomically replace run.json with ``meta``.

        Safe in a worker thread while records go on being appended: bytes appended after :meth:`prepare_commit`
        lie past the lengths ``meta`` records, where a resume cuts them off. One at a time, and finished before
        the store closes."""
        for f in (self._accepted, self._rejected):
            os.fsync(f.fileno())
        write_json_atomic(self.run_dir / RUN_JSON, meta)

    def update_meta(self, **sections: Any) -> None:
        """Rewrite run.json sections without moving the commit point (status, errors, exports)."""
        self.meta.update(copy.deepcopy(sections))
        write_json_atomic(self.run_dir / RUN_JSON, self.meta)

    def close(self) -> None:
        for f in (self._accepted, self._rejected):
            if f is not None:
                f.close()
        self._accepted = self._rejected = None
        if self._lock_fd is not None:
            os.ftruncate(self._lock_fd, 0)
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = None

    def __enter__(self) -> "RunStore":
        self.open()
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    # ---- reading -------------------------------------------------------------------------------------------------
    def accepted_records(self) -> Iterator[dict[str, Any]]:
        return read_jsonl(self.run_dir / ACCEPTED)
