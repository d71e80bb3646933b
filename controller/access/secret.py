"""The site secret: the HMAC key that card numbers and PINs are hashed with.

The secret is 32 random bytes stored as 64 lower-case hex digits and a newline in a file that
only the daemon's user may read (mode 0600, owned by that user). Anyone who holds both the
secret and the credential store can recover every PIN (4-8 digits is a small space) and test
card numbers offline; without the secret the store's hashes are useless to them. Keep the
secret out of backups of the store, or encrypt such backups.

Rotation: a new secret changes every hash. The credential store records a fingerprint of the
secret it was built with and refuses to open with another one; card numbers and PINs cannot be
re-hashed (they are not stored), so after a rotation the store must be rebuilt from the source
of the card numbers (``wardctl credential import``) and PINs must be re-enrolled.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import secrets
import stat
from pathlib import Path
from typing import Final

from controller.errors import WardingError

__all__ = [
    "SECRET_BYTES",
    "SecretError",
    "load_or_create_secret",
    "load_secret",
    "secret_fingerprint",
]

SECRET_BYTES: Final = 32
"""Length of the site secret."""

_FILE_MODE: Final = 0o600
_DIR_MODE: Final = 0o700
_MAX_FILE_BYTES: Final = 4096


class SecretError(WardingError):
    """The site secret file is missing, unsafe (permissions, owner) or malformed; fix the file."""


def load_or_create_secret(path: Path) -> bytes:
    """Return the secret in ``path``, creating a new random one (mode 0600) if there is none."""
    if not os.path.lexists(path):
        try:
            _create(path)
        except FileExistsError:
            pass  # created by someone else meanwhile: read theirs
        except OSError as exc:
            raise SecretError(f"cannot create site secret {path}: {exc.strerror or exc}") from exc
    return load_secret(path)


def load_secret(path: Path) -> bytes:
    """Return the secret in ``path``; raise SecretError if it is absent, unsafe or malformed."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        raise SecretError(f"site secret {path} does not exist") from None
    except OSError as exc:
        raise SecretError(f"cannot open site secret {path}: {exc.strerror or exc}") from exc
    try:
        info = os.fstat(fd)
        _check_safe(path, info)
        data = os.read(fd, _MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise SecretError(f"cannot read site secret {path}: {exc.strerror or exc}") from exc
    finally:
        os.close(fd)
    return _parse(path, data)


def secret_fingerprint(secret: bytes) -> str:
    """A short public identifier of ``secret`` (16 hex digits), safe to store and to log."""
    return hmac.new(secret, b"warding:secret-fingerprint", hashlib.sha256).hexdigest()[:16]


def _check_safe(path: Path, info: os.stat_result) -> None:
    """Refuse anything but a regular file, owned by us, that no one else may read or write."""
    if not stat.S_ISREG(info.st_mode):
        raise SecretError(f"site secret {path} is not a regular file")
    if info.st_uid != os.geteuid():
        raise SecretError(
            f"site secret {path} is owned by uid {info.st_uid}, not by this user "
            f"(uid {os.geteuid()}); chown it to the daemon's user"
        )
    mode = stat.S_IMODE(info.st_mode)
    if mode & 0o077:
        raise SecretError(
            f"site secret {path} has mode {mode:04o}: group or others may access it; "
            f"run 'chmod 600 {path}' (and consider the secret leaked if others could read it)"
        )


def _parse(path: Path, data: bytes) -> bytes:
    """Decode the file's content: exactly 64 hex digits, optionally followed by one newline."""
    text = data[:-1] if data.endswith(b"\n") else data
    expected = f"{SECRET_BYTES * 2} hex digits and a newline"
    if len(text) != SECRET_BYTES * 2:
        raise SecretError(
            f"site secret {path} is malformed: expected {expected}, found {len(data)} bytes"
        )
    try:
        secret = bytes.fromhex(text.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        raise SecretError(f"site secret {path} is malformed: expected {expected}") from None
    if len(secret) != SECRET_BYTES:  # pragma: no cover - fromhex of 64 hex digits is 32 bytes
        raise SecretError(f"site secret {path} is malformed: expected {expected}")
    return secret


def _create(path: Path) -> None:
    """Write a fresh secret with O_EXCL and mode 0600, fsync it and its directory."""
    parent = path.parent
    if not parent.exists():
        parent.mkdir(mode=_DIR_MODE, parents=True, exist_ok=True)
    secret = secrets.token_bytes(SECRET_BYTES)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        os.fchmod(fd, _FILE_MODE)
        data = memoryview((secret.hex() + "\n").encode("ascii"))
        while data:
            data = data[os.write(fd, data) :]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            path.unlink()
        raise
    os.close(fd)
    with contextlib.suppress(OSError):
        dir_fd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
