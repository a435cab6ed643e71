"""A lease on one sweep trial: a lock file that also works across the nodes of a shared filesystem.

The file is created with O_CREAT | O_EXCL, which is atomic on local disks, NFS v3 and later, Lustre, CephFS and
GPFS (bucket mounts through FUSE, such as gcsfuse or s3fs, do not promise it: see docs/sweeps.md). It holds the owner
(host, pid, a random token) and a heartbeat counter that the owner rewrites every HEARTBEAT_S seconds. A waiter
breaks the lease when its owner is a dead process on the waiter's own host, or when its content has not changed for
STALE_S seconds of the waiter's clock (its owner's node died); clocks of different nodes are never compared.
"""
from __future__ import annotations

import json
import os
import secrets
import socket
import threading
import time
from pathlib import Path
from types import TracebackType

HEARTBEAT_S = 5.0
STALE_S = 60.0
POLL_S = 0.5


def _read(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


def _dead_here(content: bytes) -> bool:
    """Whether the lease's owner is a process of this host that no longer exists."""
    try:
        owner = json.loads(content)
        host, pid = owner["host"], int(owner["pid"])
    except (ValueError, KeyError, TypeError):  # a half-written heartbeat: judged on staleness alone
        return False
    if host != socket.gethostname():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False


class Lease:
    """`with Lease(path):` waits for the lease at `path`, holds it (heartbeat thread) and releases it."""

    def __init__(self, path: Path):
        self.path = path
        self.token = secrets.token_hex(8)
        self._beat = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _content(self) -> bytes:
        return json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "token": self.token,
                           "beat": self._beat}).encode()

    def _owned(self) -> bool:
        content = _read(self.path)
        return content is not None and f'"token": "{self.token}"'.encode() in content

    def try_acquire(self) -> bool:
        """Take the lease if it is free (or its owner is a dead process of this host); no waiting."""
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            content = _read(self.path)
            if content is None or not _dead_here(content):
                return False
            self._break(content)
            return self.try_acquire()
        with os.fdopen(fd, "wb") as handle:
            handle.write(self._content())
        self._stop.clear()
        self._thread = threading.Thread(target=self._heartbeat, name=f"lease {self.path}", daemon=True)
        self._thread.start()
        return True

    def acquire(self) -> None:
        """Wait until the lease is ours, breaking it once it is stale."""
        seen, since = None, time.monotonic()
        while not self.try_acquire():
            content = _read(self.path)
            if content != seen:
                seen, since = content, time.monotonic()
            elif content is not None and time.monotonic() - since > STALE_S:
                self._break(content)
            time.sleep(POLL_S)

    def _break(self, stale: bytes) -> None:
        """Move a stale lease aside; one that was taken meanwhile (its content changed) is put back."""
        aside = self.path.with_name(f"{self.path.name}.broken.{self.token}")
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:  # another waiter broke it first
            return
        if _read(aside) != stale:
            try:
                os.link(aside, self.path)
            except FileExistsError:
                pass
        aside.unlink(missing_ok=True)

    def _heartbeat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            self._beat += 1
            if not self._owned():
                return
            try:
                with open(self.path, "r+b") as handle:
                    content = self._content()
                    handle.write(content)
                    handle.truncate(len(content))
            except FileNotFoundError:
                return

    def release(self) -> None:
        """Stop the heartbeat and remove the lease if it is still ours."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._owned():
            self.path.unlink(missing_ok=True)

    def __enter__(self) -> Lease:
        self.acquire()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self.release()
