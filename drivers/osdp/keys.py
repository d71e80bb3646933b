"""OSDP Secure Channel base keys (SCBK) in key files: strict loading, atomic writing.

A key file holds one SCBK as 32 hex digits (whitespace around them is ignored). It must be a
regular file owned by the daemon's user with mode 0600 or 0640 (no write or execute bit beyond
the owner's write, nothing for others); anything else is refused, never used. An *empty* file
means "not provisioned yet": the reader is refused until a technician runs install mode, which
writes the new key here. The OSDP default install key SCBK-D is never accepted from a file.
"""

from __future__ import annotations

import contextlib
import os
import re
import stat
from pathlib import Path
from typing import Final

from drivers.errors import WardingError

__all__ = ["SCBK_D", "KeyFileError", "load_scbk", "write_scbk"]

SCBK_D: Final = bytes(range(0x30, 0x40))
"""The OSDP default install key (published in the standard; only for install mode)."""

_HEX32: Final = re.compile(r"[0-9A-Fa-f]{32}")
_ALLOWED_MODE: Final = 0o640  # rw for the owner, read for the group at most
_MAX_SIZE: Final = 256


class KeyFileError(WardingError):
    """A reader key file is missing, unsafe or malformed; fix the file (never used as is)."""


def load_scbk(path: Path | str) -> bytes | None:
    """Read the SCBK in ``path``; None if the file is empty (reader not provisioned)."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NOCTTY)
    except FileNotFoundError:
        raise KeyFileError(
            f"{path}: key file does not exist (create an empty file with mode 0600 to "
            "provision the reader in install mode)"
        ) from None
    except OSError as exc:
        raise KeyFileError(f"{path}: cannot open key file: {exc.strerror or exc}") from exc
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(handle.fileno())
        _check_owner_and_mode(path, info)
        raw = handle.read(_MAX_SIZE + 1)
    if len(raw) > _MAX_SIZE:
        raise KeyFileError(f"{path}: key file is too large to hold one SCBK")
    try:
        text = raw.decode("ascii").strip()
    except UnicodeDecodeError:
        raise KeyFileError(f"{path}: expected 32 hex digits (an SCBK), found binary data") from None
    if not text:
        return None
    if _HEX32.fullmatch(text) is None:
        raise KeyFileError(f"{path}: expected exactly 32 hex digits (a 16-byte SCBK)")
    key = bytes.fromhex(text)
    if key == SCBK_D:
        raise KeyFileError(
            f"{path}: holds the OSDP default install key SCBK-D; provision a unique key "
            "with install mode instead"
        )
    if len(set(key)) == 1:
        raise KeyFileError(f"{path}: a key of {len(key)} identical bytes is not a key")
    return key


def _check_owner_and_mode(path: Path, info: os.stat_result) -> None:
    if not stat.S_ISREG(info.st_mode):
        raise KeyFileError(f"{path}: key file is not a regular file")
    if info.st_uid != os.geteuid():
        raise KeyFileError(
            f"{path}: key file is owned by uid {info.st_uid}, not by this daemon "
            f"(uid {os.geteuid()}); refusing to use it"
        )
    mode = stat.S_IMODE(info.st_mode)
    if mode & ~_ALLOWED_MODE:
        raise KeyFileError(
            f"{path}: key file mode is {mode:04o}; it must be 0600 or 0640 (run: chmod 600 {path})"
        )


def write_scbk(path: Path | str, key: bytes) -> None:
    """Atomically replace ``path`` with ``key`` (mode 0600, fsynced, then renamed into place)."""
    path = Path(path)
    if len(key) != 16:
        raise ValueError("an SCBK is 16 bytes")
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), 0o600)  # whatever the umask
            handle.write(key.hex().encode("ascii") + b"\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
