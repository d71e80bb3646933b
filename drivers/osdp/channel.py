"""SerialChannel: libosdp's Channel interface (read/write/flush) over an RS-485 serial device.

libosdp's C core calls ``read``, ``write`` and ``flush`` from inside ``refresh()``. An exception
raised there would be left pending inside the C extension (it surfaces later as a confusing
``SystemError``), so these methods never raise: a failing line is recorded in ``failure`` and
then behaves like a dead bus (nothing read, writes vanish) until the owner closes and reopens
it. The class is duck-typed rather than a subclass of ``osdp.Channel``: the C core only calls
these three methods, and the binding is untyped.

Every byte that crosses the line is also handed to ``on_rx`` / ``on_tx`` so the driver can
watch the protocol (see ``drivers.osdp.wire``).
"""

from __future__ import annotations

import contextlib
import errno
import os
import termios
from collections.abc import Callable
from typing import Any, Final

from drivers.errors import DeviceConnectionError, DeviceError

__all__ = ["SerialChannel"]

_CONFIG_ERRNOS: Final = frozenset({errno.EACCES, errno.EPERM, errno.ENOTTY, errno.EISDIR})
_MAX_PENDING: Final = 64 * 1024

ByteTap = Callable[[bytes], None]


def _no_tap(_data: bytes) -> None:
    return None


class SerialChannel:
    """An OSDP line on a serial device path (``/dev/ttyUSB0``, a pty, a symlink to either)."""

    def __init__(
        self,
        device: str,
        baudrate: int,
        *,
        on_rx: ByteTap = _no_tap,
        on_tx: ByteTap = _no_tap,
    ) -> None:
        self.device = device
        self.baudrate = baudrate
        self.on_rx = on_rx
        self.on_tx = on_tx
        self.failure = ""
        self._port: Any = None  # serial.Serial (untyped)
        self._fd = -1
        self._pending = bytearray()
        self.stats = {"rx_bytes": 0, "tx_bytes": 0, "opens": 0}

    @property
    def is_open(self) -> bool:
        """True while the device is open (it may still have failed: see ``failure``)."""
        return self._fd >= 0

    def open(self) -> None:
        """Open the device 8N1 raw, exclusively; DeviceConnectionError if retrying may help."""
        if self.is_open:
            return
        if "://" in self.device:
            raise DeviceError(f"{self.device}: OSDP needs a serial device path, not a URL")
        import serial  # pyserial is imported where it is used (untyped)

        if not os.path.exists(self.device):
            raise DeviceConnectionError(f"{self.device}: no such device")
        try:
            port = serial.Serial(
                port=self.device,
                baudrate=self.baudrate,
                bytesize=8,
                parity="N",
                stopbits=1,
                timeout=0,
                exclusive=True,
            )
        except OSError as exc:  # SerialException is an OSError
            code = exc.errno
            text = exc.strerror or str(exc)
            if code in _CONFIG_ERRNOS:
                raise DeviceError(f"{self.device}: {text}") from exc
            raise DeviceConnectionError(f"{self.device}: {text}") from exc
        except ValueError as exc:  # an impossible setting
            raise DeviceError(f"{self.device}: {exc}") from exc
        fd = int(port.fileno())
        os.set_blocking(fd, False)
        # pyserial leaves VMIN=0, where an empty read returns b"" like a hang-up does; with
        # VMIN=1 an idle non-blocking read is EAGAIN and b"" means the line is gone
        attrs = termios.tcgetattr(fd)
        attrs[6][termios.VMIN] = 1
        attrs[6][termios.VTIME] = 0
        termios.tcsetattr(fd, termios.TCSANOW, attrs)
        port.reset_input_buffer()
        self._port = port
        self._fd = fd
        self._pending.clear()
        self.failure = ""
        self.stats["opens"] += 1

    def close(self) -> None:
        """Close the device; idempotent."""
        port, self._port, self._fd = self._port, None, -1
        self._pending.clear()
        if port is not None:
            with contextlib.suppress(OSError):  # a vanished device is closed either way
                port.close()

    def detach(self) -> None:
        """Drop the taps (libosdp never releases its reference to the channel)."""
        self.on_rx = _no_tap
        self.on_tx = _no_tap

    def _fail(self, reason: str) -> None:
        if not self.failure:
            self.failure = reason

    # -- libosdp's Channel interface (called from refresh(); must never raise) -----------

    def read(self, max_bytes: int) -> bytes:
        """Return up to ``max_bytes`` received bytes, or b"" when there are none."""
        if self._fd < 0 or self.failure:
            return b""
        self._drain_pending()
        try:
            data = os.read(self._fd, max_bytes)
        except BlockingIOError:
            return b""
        except OSError as exc:
            self._fail(f"read failed: {exc.strerror or exc}")
            return b""
        if not data:  # EOF: the other end hung up (a pty master closed, a USB adapter gone)
            self._fail("line hung up")
            return b""
        self.stats["rx_bytes"] += len(data)
        self.on_rx(data)
        return data

    def write(self, buf: bytes) -> int:
        """Send all of ``buf`` (queueing what the device cannot take yet); return len(buf)."""
        data = bytes(buf)
        if self._fd < 0 or self.failure:
            return len(data)  # a dead line swallows what is sent; replies just never come
        self.on_tx(data)
        self._pending += data
        self._drain_pending()
        if len(self._pending) > _MAX_PENDING:
            self._fail("line stuck: the device accepts no more output")
        return len(data)

    def flush(self) -> None:
        """Nothing to do: received bytes are never discarded (the driver watches them)."""

    def _drain_pending(self) -> None:
        while self._pending and not self.failure:
            try:
                sent = os.write(self._fd, self._pending)
            except BlockingIOError:
                return
            except OSError as exc:
                self._fail(f"write failed: {exc.strerror or exc}")
                return
            self.stats["tx_bytes"] += sent
            del self._pending[:sent]
