"""Atomic cell claims, so several sweep workers on one results folder run every cell once.

A worker claims a cell by creating ``<results>/claims/<cell_id>.claim`` with
``O_CREAT | O_EXCL`` (exactly one creator wins), holding its owner (host, pid, a random
token, start time). While the cell runs, a heartbeat thread touches the file's mtime every
``heartbeat_s``; when the cell's row is written the owner deletes its claim.

A claim is *stale* (its owner died mid-cell) when its mtime is older than ``stale_after_s``,
or at once when its owner ran on this host and its pid is gone (or is our own pid under
another token: a restarted container reusing the pid). A stale claim is taken over under a
short takeover lock (``<cell_id>.claim.takeover``, also ``O_EXCL``): the taker re-reads the
claim, and only if it is still the same stale owner replaces it (temp file + ``os.replace``)
with its own. A worker that finds its claim no longer holds its token has lost the cell
(it was presumed dead) and does not write the row.

What this relies on (POSIX local filesystems and NFSv3+/NFSv4 with Linux clients; Lustre and
GPFS give the same guarantees): exclusive create is atomic across hosts; rename within a
directory is atomic; and the hosts' clocks agree (NTP) to well within ``stale_after_s``, which
must also exceed the filesystem's attribute-cache time (NFS ``actimeo``, 60 s at most by
default). The default 600 s / 30 s heartbeat leaves room for both.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self

DEFAULT_STALE_AFTER_S = 600.0
# Tokens of the claims this process holds now: a claim under our own pid with another token
# was left by an earlier process that had the same pid.
_HELD_TOKENS: set[str] = set()


def owner_alive(owner: dict) -> bool:
    """False when ``owner`` is known dead: same host, and its pid is gone or is ours under another token."""
    if owner.get("host") != socket.gethostname():
        return True  # another host: only the heartbeat age tells
    pid = int(owner.get("pid", -1))
    if pid == os.getpid():
        return owner.get("token") in _HELD_TOKENS
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # a process of another user holds the pid: alive as far as we can tell
        return True
    return True


def read_owner(path: Path) -> dict | None:
    """The owner recorded in a claim file; None if it is gone. A torn or empty file reads as {}."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    try:
        owner = json.loads(text)
    except ValueError:
        return {}
    return owner if isinstance(owner, dict) else {}


def claim_age_s(path: Path) -> float | None:
    try:
        return time.time() - path.stat().st_mtime
    except FileNotFoundError:
        return None


@dataclass
class Claim:
    """A held claim; its heartbeat runs from ``start()`` until ``release()``."""

    path: Path
    owner: dict
    heartbeat_s: float
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def still_mine(self) -> bool:
        owner = read_owner(self.path)
        return owner is not None and owner.get("token") == self.owner["token"]

    def start(self) -> Self:
        _HELD_TOKENS.add(self.owner["token"])
        self._thread = threading.Thread(target=self._beat, name=f"heartbeat {self.path.name}", daemon=True)
        self._thread.start()
        return self

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            if not self.still_mine():
                return  # taken over: stop refreshing someone else's claim
            try:
                os.utime(self.path)
            except FileNotFoundError:
                return

    def release(self) -> None:
        """Stop the heartbeat and delete the claim if it is still ours."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self.still_mine():
            self.path.unlink(missing_ok=True)
        _HELD_TOKENS.discard(self.owner["token"])

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


class ClaimBoard:
    """The claims of one results folder, seen from one worker."""

    def __init__(self, folder: Path, stale_after_s: float = DEFAULT_STALE_AFTER_S, heartbeat_s: float | None = None):
        if stale_after_s <= 0:
            raise ValueError(f"stale_after_s must be positive, got {stale_after_s}")
        self.folder = Path(folder)
        self.stale_after_s = float(stale_after_s)
        self.heartbeat_s = float(heartbeat_s) if heartbeat_s is not None else self.stale_after_s / 20
        self.worker = f"{socket.gethostname()}:{os.getpid()}"

    def path(self, key: str) -> Path:
        return self.folder / f"{key}.claim"

    def _new_owner(self) -> dict:
        return {"host": socket.gethostname(), "pid": os.getpid(), "token": uuid.uuid4().hex, "started": time.time()}

    def is_stale(self, key: str, owner: dict) -> bool:
        age = claim_age_s(self.path(key))
        if age is None:
            return False  # released meanwhile
        return age > self.stale_after_s or not owner_alive(owner)

    def try_claim(self, key: str) -> Claim | None:
        """Claim ``key`` (fresh, or taken over from a dead owner); None if a live worker holds it."""
        self.folder.mkdir(parents=True, exist_ok=True)
        owner = self._new_owner()
        path = self.path(key)
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return self._take_over(key, owner)
        with os.fdopen(fd, "w") as handle:
            handle.write(json.dumps(owner))
        return Claim(path, owner, self.heartbeat_s).start()

    def _take_over(self, key: str, owner: dict) -> Claim | None:
        path = self.path(key)
        seen = read_owner(path)
        if seen is None or not self.is_stale(key, seen):
            return None
        lock = path.with_name(path.name + ".takeover")
        try:
            os.close(os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
        except FileExistsError:
            age = claim_age_s(lock)
            if age is not None and age > self.stale_after_s:  # a taker died inside the takeover
                lock.unlink(missing_ok=True)
            return None
        try:
            if read_owner(path) != seen:
                return None  # released or taken by another worker meanwhile
            tmp = path.with_name(f".{path.name}.{owner['token']}")
            tmp.write_text(json.dumps(owner))
            os.replace(tmp, path)
        finally:
            lock.unlink(missing_ok=True)
        return Claim(path, owner, self.heartbeat_s).start()
