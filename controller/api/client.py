"""Blocking client for the control socket (used by wardctl and the demo)."""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from controller.errors import CommandError, DaemonNotRunningError

DEFAULT_SOCKET = Path("/run/warding/control.sock")
SOCKET_PATH_MAX = 107  # bytes: the kernel's limit for a Unix socket path (sun_path, 108 with NUL)


class UnexpectedReplyError(DaemonNotRunningError):
    """What answers on the socket does not speak the daemon's protocol (wardctl exit 3)."""


class ControlClient:
    """One connection to the daemon's control socket.

    Every wait for a reply is bounded by ``timeout_s``, including the first reply of a stream;
    only once a stream has started does it wait without a limit (new entries may be rare).
    """

    def __init__(self, path: Path, timeout_s: float = 10.0) -> None:
        self.path = path
        self.timeout_s = timeout_s
        if len(os.fsencode(path)) > SOCKET_PATH_MAX:
            raise DaemonNotRunningError(
                f"cannot connect to {path}: the path is longer than {SOCKET_PATH_MAX} bytes"
            )
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.settimeout(timeout_s)
        try:
            self._sock.connect(str(path))
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            self._sock.close()
            raise DaemonNotRunningError(
                f"cannot reach the warding daemon at {path} (is it running?)"
            ) from exc
        except PermissionError as exc:
            self._sock.close()
            raise DaemonNotRunningError(
                f"permission denied on {path} (are you in the 'warding' group?)"
            ) from exc
        except TimeoutError as exc:
            self._sock.close()
            raise DaemonNotRunningError(
                f"cannot connect to {path}: no answer within {timeout_s:g}s"
            ) from exc
        except OSError as exc:
            self._sock.close()
            raise DaemonNotRunningError(f"cannot connect to {path}: {exc.strerror or exc}") from exc
        self._file = self._sock.makefile("rb")

    def close(self) -> None:
        """Close the connection."""
        self._file.close()
        self._sock.close()

    def __enter__(self) -> ControlClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def unexpected(self) -> UnexpectedReplyError:
        """The error for a reply this client cannot understand."""
        return UnexpectedReplyError(
            f"unexpected reply from {self.path} (not a warding control socket?)"
        )

    def send(self, cmd: str, **args: Any) -> None:
        """Send one request (DaemonNotRunningError if the daemon has closed the connection)."""
        try:
            self._sock.sendall(json.dumps({"cmd": cmd, **args}).encode() + b"\n")
        except OSError as exc:  # a broken pipe here is the daemon's side, never stdout's
            raise DaemonNotRunningError(
                f"lost the daemon connection: {exc.strerror or exc}"
            ) from None

    def _line(self) -> bytes:
        try:
            return self._file.readline()
        except TimeoutError:
            raise DaemonNotRunningError(
                f"no reply from {self.path} within {self.timeout_s:g}s"
            ) from None
        except OSError as exc:  # (a reset connection)
            raise DaemonNotRunningError(
                f"lost the daemon connection: {exc.strerror or exc}"
            ) from None

    def _decode(self, line: bytes) -> dict[str, Any]:
        try:
            obj = json.loads(line)
        except ValueError:  # not JSON, or not UTF-8
            raise self.unexpected() from None
        if not isinstance(obj, dict):
            raise self.unexpected()
        return obj

    def read(self) -> dict[str, Any]:
        """Read one reply line."""
        line = self._line()
        if not line:
            raise DaemonNotRunningError("the daemon closed the connection")
        return self._decode(line)

    def call(self, cmd: str, **args: Any) -> dict[str, Any]:
        """Send a request and return its reply; CommandError if the daemon refused it."""
        self.send(cmd, **args)
        reply = self.read()
        if not reply.get("ok"):
            raise CommandError(str(reply.get("error", "request failed")))
        return reply

    def stream(self, cmd: str, **args: Any) -> Iterator[dict[str, Any]]:
        """Send a request and yield reply lines until the daemon closes the stream.

        The first reply must come within the timeout (a socket that accepts and never answers
        is not a daemon); after it the stream may be quiet for as long as it likes.
        """
        self.send(cmd, **args)
        first = self.read()
        if not first.get("ok"):
            raise CommandError(str(first.get("error", "request failed")))
        self._sock.settimeout(None)
        while True:
            line = self._line()
            if not line:
                return
            yield self._decode(line)
