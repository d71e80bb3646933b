"""Pseudo-terminals standing in for serial adapters, and the device symlinks pointing at them."""

from __future__ import annotations

import contextlib
import fcntl
import os
import pty
import stat
import tty
from pathlib import Path


class PathInUseError(FileExistsError):
    """A path the simulator would have to replace holds something that is not its own."""


def set_nonblocking(fd: int) -> None:
    """Put ``fd`` in non-blocking mode."""
    flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    fcntl.fcntl(fd, fcntl.F_SETFL, flags | os.O_NONBLOCK)


class PtyPair:
    """A raw pty pair; the slave stays open too, so the master never reads EIO."""

    def __init__(self) -> None:
        self.master, self.slave = pty.openpty()
        tty.setraw(self.slave)
        set_nonblocking(self.master)
        self.name = os.ttyname(self.slave)

    def close(self) -> None:
        """Close both ends (a peer reading the slave sees the adapter vanish)."""
        for fd in (self.master, self.slave):
            with contextlib.suppress(OSError):
                os.close(fd)


def check_device(device: Path | None) -> None:
    """PathInUseError if ``device`` exists and is not a symlink (a file we must never replace)."""
    if device is None:
        return
    try:
        mode = os.lstat(device).st_mode
    except FileNotFoundError:
        return
    except OSError as exc:
        raise PathInUseError(f"{device}: cannot use it ({exc.strerror or exc})") from None
    if not stat.S_ISLNK(mode):
        raise PathInUseError(f"{device} exists and is not a symlink: not replacing it")


def plug(device: Path | None) -> PtyPair:
    """A new pty, with ``device`` (if given) atomically pointed at it; never replaces a file."""
    check_device(device)
    side = PtyPair()
    if device is not None:
        try:
            device.parent.mkdir(parents=True, exist_ok=True)
            tmp = device.with_name(f".{device.name}.{os.getpid()}.tmp")
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            tmp.symlink_to(side.name)
            tmp.replace(device)  # atomic, and replaces a stale link
        except BaseException:
            side.close()
            raise
    return side


def unlink_device(device: Path | None, target: str) -> None:
    """Remove ``device`` if it is our symlink to ``target`` (never someone else's line)."""
    if device is None:
        return
    with contextlib.suppress(OSError):
        if os.readlink(device) == target:
            device.unlink()
