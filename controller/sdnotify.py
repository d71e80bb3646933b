"""sd_notify(3) over an AF_UNIX datagram socket, without libsystemd.

systemd passes ``NOTIFY_SOCKET`` (a path, or ``@name`` for the Linux abstract namespace) and, when
``WatchdogSec=`` is set, ``WATCHDOG_USEC`` (+ ``WATCHDOG_PID``). A notification is one datagram of
newline-separated ``KEY=value`` fields. Outside systemd every call is a no-op returning ``False``;
a failed send is logged at debug level and returns ``False``, it never raises.
"""

from __future__ import annotations

import os
import re
import socket
import threading
import time
from collections.abc import Mapping
from types import TracebackType
from typing import Self

import structlog

__all__ = ["SdNotifier"]

_log = structlog.get_logger(__name__)

_DIGITS = re.compile(r"[0-9]+")
_FIELD = re.compile(r"[A-Z_][A-Z0-9_]*=[^\n]*")
_DEFAULT_SEND_TIMEOUT_S = 0.5


def _parse_positive_int(value: str | None) -> int | None:
    """Return ``value`` as a positive decimal integer, or None if unset, empty or malformed."""
    if value is None or not _DIGITS.fullmatch(value):
        return None
    number = int(value)
    return number if number > 0 else None


def _socket_address(value: str | None) -> bytes | None:
    """Map ``NOTIFY_SOCKET`` to an AF_UNIX address: ``@name`` is abstract (leading NUL)."""
    if not value:
        return None
    if value.startswith("@") and len(value) > 1:
        return b"\0" + os.fsencode(value[1:])
    if value.startswith("/"):
        return os.fsencode(value)
    return None  # relative paths and other schemes (e.g. vsock:) are not supported


class SdNotifier:
    """Send service state notifications to systemd; safe no-op when not started by systemd."""

    def __init__(
        self,
        address: bytes | None,
        watchdog_usec: int | None = None,
        *,
        send_timeout_s: float = _DEFAULT_SEND_TIMEOUT_S,
    ) -> None:
        """Notify ``address`` (None: disabled); ``watchdog_usec`` is the systemd watchdog period."""
        self._address = address
        self._watchdog_usec = watchdog_usec if address is not None else None
        self._send_timeout_s = send_timeout_s
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> SdNotifier:
        """Build from NOTIFY_SOCKET and WATCHDOG_USEC (ignored if WATCHDOG_PID is another pid)."""
        address = _socket_address(env.get("NOTIFY_SOCKET"))
        watchdog_usec = _parse_positive_int(env.get("WATCHDOG_USEC"))
        pid_value = env.get("WATCHDOG_PID")
        if pid_value is not None and _parse_positive_int(pid_value) != os.getpid():
            watchdog_usec = None
        return cls(address, watchdog_usec)

    @property
    def enabled(self) -> bool:
        """True when running under systemd with a notification socket."""
        return self._address is not None

    def watchdog_interval_s(self) -> float | None:
        """Seconds between WATCHDOG=1 pings (half the systemd period), or None if no watchdog."""
        if self._watchdog_usec is None:
            return None
        return self._watchdog_usec / 2_000_000

    def notify(self, *fields: str) -> bool:
        """Send ``fields`` as one datagram; True if systemd got it (ValueError: bad field)."""
        for field in fields:
            if not _FIELD.fullmatch(field):
                raise ValueError(f"not a KEY=value notification field: {field!r}")
        if self._address is None or not fields:
            return False
        payload = "\n".join(fields).encode()
        with self._lock:
            # One retry on a fresh socket: the peer may have been re-created since we connected.
            for attempt in (1, 2):
                try:
                    sock = self._connected()
                    sent = sock.send(payload)
                except OSError as exc:
                    self._close_locked()
                    _log.debug("sd_notify failed", attempt=attempt, error=str(exc))
                    continue
                if sent == len(payload):
                    return True
                _log.debug("sd_notify short send", sent=sent, size=len(payload))
                return False
        return False

    def ready(self, status: str | None = None) -> bool:
        """READY=1 (with an optional STATUS=): every door is under control."""
        if status is None:
            return self.notify("READY=1")
        return self.notify("READY=1", _status_field(status))

    def stopping(self) -> bool:
        """STOPPING=1: shutdown has begun."""
        return self.notify("STOPPING=1")

    def reloading(self) -> bool:
        """RELOADING=1 with MONOTONIC_USEC= (the latter is required by Type=notify-reload)."""
        now_usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.notify("RELOADING=1", f"MONOTONIC_USEC={now_usec}")

    def watchdog(self) -> bool:
        """WATCHDOG=1: the main loop is healthy."""
        return self.notify("WATCHDOG=1")

    def status(self, text: str) -> bool:
        """STATUS=text, shown by ``systemctl status`` (newlines become spaces)."""
        return self.notify(_status_field(text))

    def close(self) -> None:
        """Close the socket; idempotent (a later notify reopens it)."""
        with self._lock:
            self._close_locked()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"SdNotifier(address={self._address!r}, watchdog_usec={self._watchdog_usec!r})"

    def _connected(self) -> socket.socket:
        """Return the connected socket, creating it on first use (caller holds the lock)."""
        if self._sock is None:
            if self._address is None:
                raise OSError("no NOTIFY_SOCKET")
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            try:
                sock.settimeout(self._send_timeout_s)  # never stall the event loop for long
                sock.connect(self._address)
            except OSError:
                sock.close()
                raise
            self._sock = sock
        return self._sock

    def _close_locked(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def _status_field(text: str) -> str:
    return "STATUS=" + text.replace("\r", " ").replace("\n", " ")
