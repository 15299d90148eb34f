"""One run at a time per output: a lock file `<output>/_lock.json`.

Two runs writing one output (a scheduled job whose previous run is still going, say) would not
corrupt it, since every write is atomic and named by its pair, but the later compaction of one run
could drop parts the other wrote meanwhile, and both would spend GPUs on the same pairs. The lock
says who holds it and is refreshed every minute while the run lives; a lock left by a run that died
is taken over: on this host as soon as its process is gone, anywhere once it has not been refreshed
for `stale_after` seconds (15 minutes).

Taking the lock is a conditional create, so of two runs starting at once exactly one wins:
- local disk: a complete temporary file hard-linked to the lock's name (fails if the name exists);
- S3 and S3-compatible servers: a PUT with `If-None-Match: *` (s3fs `mode="create"`); GCS: gcsfs's
  `ifGenerationMatch=0`. A store that ignores the header (some old S3 emulators) makes it best effort;
- other fsspec stores: fsspec's exists-then-write, best effort.
Taking over a stale lock is conditional too: on S3 a PUT with `If-Match: <ETag of the stale lock>`,
locally a takeover under an flock of the output folder, so two runs that both judge one lock stale
cannot both win. On S3 the heartbeat is conditional on our own ETag, so a run that was judged dead
(stalled past `stale_after`) does not overwrite its successor's lock.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import tempfile
import threading
import time
from collections.abc import Iterator

from fsspec.implementations.local import LocalFileSystem

from anyv2v_batch.errors import AnyV2VError
from anyv2v_batch.operators.storage import filesystem, join
from anyv2v_batch.video_io import atomic_write_bytes


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _precondition_failed(e: OSError) -> bool:
    """s3fs raises a failed If-Match as OSError(EINVAL) caused by botocore's PreconditionFailed."""
    code = getattr(e.__cause__, "response", {}).get("Error", {}).get("Code")
    return code in ("PreconditionFailed", "412", "ConditionalRequestConflict") or e.errno == errno.EINVAL


@contextlib.contextmanager
def _folder_locked(folder: str) -> Iterator[None]:
    """An exclusive flock on a folder: local takeovers of one output's lock happen one at a time."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the flock


class OutputLock:
    def __init__(self, output: str, stale_after: float = 15 * 60, heartbeat: float = 60):
        self.url = join(output, "_lock.json")
        self.stale_after, self.heartbeat = stale_after, heartbeat
        self.fs, self.path = filesystem(self.url)
        self.local = isinstance(self.fs, LocalFileSystem)
        protocols = self.fs.protocol if isinstance(self.fs.protocol, tuple) else (self.fs.protocol,)
        self.s3 = "s3" in protocols  # conditional replace (If-Match on an ETag)
        now = time.time()
        self.mine = {"host": socket.gethostname(), "pid": os.getpid(), "started": now, "refreshed": now}
        self.tag: str | None = None  # S3: the ETag of our lock as we last wrote it
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _stale(self, held: dict) -> bool:
        if time.time() - float(held.get("refreshed", held.get("started", 0))) > self.stale_after:
            return True
        return held.get("host") == self.mine["host"] and not _alive(int(held.get("pid", -1)))

    def holder(self) -> dict | None:
        """Who holds the lock now (host, pid, times), or None when nobody does (no lock, or a stale one)."""
        data, _ = self._read()
        try:
            held = json.loads(data) if data is not None else None
        except ValueError:
            return None
        return held if isinstance(held, dict) and not self._stale(held) else None

    def _data(self) -> bytes:
        return json.dumps(self.mine).encode()

    def _read(self) -> tuple[bytes | None, str | None]:
        """The lock's bytes (None if there is none) and, on S3, its ETag (read first: if the lock
        changes in between, a replace conditional on the older ETag fails, which is the safe way)."""
        try:
            tag = self.fs.info(self.path, refresh=True)["ETag"] if self.s3 else None
            return self.fs.cat_file(self.path), tag
        except FileNotFoundError:
            return None, None

    def _create(self) -> bool:
        """Write our lock if there is none; False if one exists."""
        if self.local:
            folder = os.path.dirname(self.path)
            os.makedirs(folder, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".lock.", suffix=".tmp", dir=folder)
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(self._data())
                os.chmod(tmp, 0o644)
                os.link(tmp, self.path)  # atomic, and a reader never sees a half-written lock
            except FileExistsError:
                return False
            finally:
                os.unlink(tmp)
            return True
        try:  # S3: If-None-Match: *; GCS: ifGenerationMatch=0; elsewhere fsspec's exists-then-write
            self.fs.pipe_file(self.path, self._data(), mode="create")
        except FileExistsError:
            return False
        if self.s3:
            self.tag = self.fs.info(self.path, refresh=True)["ETag"]
        return True

    def _take_over(self, stale: bytes, tag: str | None) -> bool:
        """Replace the stale lock by ours unless another run replaced it first; True if we did."""
        if self.local:
            with _folder_locked(os.path.dirname(self.path)):
                current, _ = self._read()
                if current is not None:
                    if current != stale:
                        return False  # another run took it over meanwhile
                    os.unlink(self.path)
                return self._create()
        if self.s3 and tag is not None:
            try:
                self.fs.pipe_file(self.path, self._data(), IfMatch=tag)  # still the stale lock, or nothing
            except FileNotFoundError:
                return self._create()
            except OSError as e:
                if _precondition_failed(e):
                    return False
                raise
            self.tag = self.fs.info(self.path, refresh=True)["ETag"]
            return True
        # a store without conditional replace: delete, then create conditionally (best effort if two
        # runs take over the same stale lock at the same moment)
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm(self.path)
        return self._create()

    def _refresh(self) -> None:
        while not self._stop.wait(self.heartbeat):
            self.mine["refreshed"] = time.time()
            try:
                if self.local:
                    atomic_write_bytes(self.path, self._data())  # a reader never sees it half-written
                elif self.s3 and self.tag is not None:
                    self.fs.pipe_file(self.path, self._data(), IfMatch=self.tag)
                    self.tag = self.fs.info(self.path, refresh=True)["ETag"]
                else:
                    self.fs.pipe_file(self.path, self._data())
            except OSError as e:
                if self.s3 and _precondition_failed(e):
                    return  # another run took the lock over (we were judged dead): never overwrite it
                # otherwise a missed beat only brings the takeover closer

    def __enter__(self) -> OutputLock:
        for _ in range(3):
            taken = self._create()
            if not taken:
                held, tag = self._read()
                if held is None:
                    continue  # released meanwhile: try to create it again
                try:
                    owner = json.loads(held)
                except ValueError:
                    owner = {}  # not a lock we wrote (ours are written whole): stale
                if not self._stale(owner):
                    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(owner.get("started", 0))))
                    raise AnyV2VError(
                        f"output is being written by another run (pid {owner.get('pid')} on {owner.get('host')} "
                        f"since {since}); wait for it, or delete {self.url} if that run is gone"
                    )
                taken = self._take_over(held, tag)
            if taken:
                self._thread = threading.Thread(target=self._refresh, name="output-lock", daemon=True)
                self._thread.start()
                return self
        raise AnyV2VError(f"cannot take the lock {self.url}; another run keeps taking it")

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        held, _ = self._read()
        try:
            owner = json.loads(held) if held is not None else {}
        except ValueError:
            return
        if all(owner.get(k) == self.mine[k] for k in ("host", "pid", "started")):  # still ours: remove it
            self.fs.rm(self.path)
