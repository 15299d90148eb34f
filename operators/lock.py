"""One run at a time per output: a lock file `<output>/_lock.json`.

Two runs writing one output (a scheduled job whose previous run is still going, say) would not
corrupt it, since every write is atomic and named by its pair, but the later compaction of one run
could drop parts the other wrote meanwhile, and both would spend GPUs on the same pairs. The lock
says who holds it and is refreshed every minute while the run lives; a lock left by a run that died
is taken over: on this host as soon as its process is gone, anywhere once it has not been refreshed
for `stale_after` seconds (15 minutes).
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time

from fsspec.implementations.local import LocalFileSystem

from anyv2v_batch.errors import AnyV2VError
from anyv2v_batch.operators.storage import filesystem, join


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class OutputLock:
    def __init__(self, output: str, stale_after: float = 15 * 60, heartbeat: float = 60):
        self.url = join(output, "_lock.json")
        self.stale_after, self.heartbeat = stale_after, heartbeat
        self.fs, self.path = filesystem(self.url)
        now = time.time()
        self.mine = {"host": socket.gethostname(), "pid": os.getpid(), "started": now, "refreshed": now}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _stale(self, held: dict) -> bool:
        if time.time() - float(held.get("refreshed", held.get("started", 0))) > self.stale_after:
            return True
        return held.get("host") == self.mine["host"] and not _alive(int(held.get("pid", -1)))

    def _create(self) -> bool:
        """Write our lock if there is none; False if one exists."""
        data = json.dumps(self.mine).encode()
        parent = self.path.rsplit("/", 1)[0]
        self.fs.makedirs(parent, exist_ok=True)
        if isinstance(self.fs, LocalFileSystem):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                return False
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            return True
        if self.fs.exists(self.path):  # object stores: best effort (no atomic create-if-absent)
            return False
        self.fs.pipe_file(self.path, data)
        return True

    def _refresh(self) -> None:
        while not self._stop.wait(self.heartbeat):
            self.mine["refreshed"] = time.time()
            try:
                self.fs.pipe_file(self.path, json.dumps(self.mine).encode())
            except OSError:
                pass  # a missed beat only brings the takeover closer

    def __enter__(self) -> OutputLock:
        for _ in range(2):
            if self._create():
                self._thread = threading.Thread(target=self._refresh, name="output-lock", daemon=True)
                self._thread.start()
                return self
            try:
                held = json.loads(self.fs.cat_file(self.path))
            except (OSError, ValueError):
                held = {}
            if not self._stale(held):
                since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(held.get("started", 0))))
                raise AnyV2VError(
                    f"output is being written by another run (pid {held.get('pid')} on {held.get('host')} since "
                    f"{since}); wait for it, or delete {self.url} if that run is gone"
                )
            self.fs.rm(self.path)  # a dead run's lock
        raise AnyV2VError(f"cannot take the lock {self.url}; another run keeps taking it")

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        try:
            held = json.loads(self.fs.cat_file(self.path))
        except (OSError, ValueError):
            return
        if held.get("pid") == self.mine["pid"] and held.get("host") == self.mine["host"]:
            self.fs.rm(self.path)
