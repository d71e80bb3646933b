"""Blocking client for the control socket (used by wardctl and the demo)."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from controller.errors import CommandError, DaemonNotRunningError

DEFAULT_SOCKET = Path("/run/warding/control.sock")


class ControlClient:
    """One connection to the daemon's control socket."""

    def __init__(self, path: Path, timeout_s: float = 10.0) -> None:
        self.path = path
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
        except OSError as exc:
            self._sock.close()
            raise DaemonNotRunningError(f"cannot connect to {path}: {exc.strerror}") from exc
        self._file = self._sock.makefile("rb")

    def close(self) -> None:
        """Close the connection."""
        self._file.close()
        self._sock.close()

    def __enter__(self) -> ControlClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send(self, cmd: str, **args: Any) -> None:
        """Send one request."""
        self._sock.sendall(json.dumps({"cmd": cmd, **args}).encode() + b"\n")

    def read(self) -> dict[str, Any]:
        """Read one reply line."""
        line = self._file.readline()
        if not line:
            raise DaemonNotRunningError("the daemon closed the connection")
        obj = json.loads(line)
        if not isinstance(obj, dict):
            raise CommandError("malformed reply from daemon")
        return obj

    def call(self, cmd: str, **args: Any) -> dict[str, Any]:
        """Send a request and return its reply; CommandError if the daemon refused it."""
        self.send(cmd, **args)
        reply = self.read()
        if not reply.get("ok"):
            raise CommandError(str(reply.get("error", "request failed")))
        return reply

    def stream(self, cmd: str, **args: Any) -> Iterator[dict[str, Any]]:
        """Send a request and yield reply lines until the daemon closes the stream."""
        self._sock.settimeout(None)
        self.send(cmd, **args)
        first = self.read()
        if not first.get("ok"):
            raise CommandError(str(first.get("error", "request failed")))
        while True:
            line = self._file.readline()
            if not line:
                return
            obj = json.loads(line)
            if isinstance(obj, dict):
                yield obj
