"""Open a serial line by URL as asyncio streams: a device path (``/dev/ttyUSB0``, a pty or a
symlink to one) or ``socket://host:port`` (a serial device server / ser2net raw TCP port).

This and the drivers that use it are the only places that touch pyserial; pyserial and
pyserial-asyncio-fast are untyped, so they are called through the small typed surface below.
Errors are wrapped: ``DeviceConnectionError`` when retrying later may help (absent device,
unplugged adapter, port busy, connection refused), ``DeviceError`` when it will not until
someone changes something (permission denied, not a serial device, bad URL).
"""

from __future__ import annotations

import asyncio
import errno
import os
import socket
import urllib.parse
from dataclasses import dataclass
from typing import Any, Literal

from drivers.errors import DeviceConnectionError, DeviceError

__all__ = ["SerialUrl", "open_serial_url", "parse_serial_url"]

_CONFIG_ERRNOS = frozenset({errno.EACCES, errno.EPERM, errno.ENOTTY, errno.EISDIR})


@dataclass(frozen=True, slots=True)
class SerialUrl:
    """A parsed serial URL: a device path, or a TCP host and port."""

    kind: Literal["device", "socket"]
    url: str
    path: str = ""
    host: str = ""
    port: int = 0

    def __str__(self) -> str:
        return self.url


def parse_serial_url(url: str) -> SerialUrl:
    """Parse ``url``; ValueError for anything but a device path or ``socket://host:port``."""
    if not isinstance(url, str) or not url or url != url.strip() or "\x00" in url:
        raise ValueError(f"bad serial device {url!r}")
    if "://" not in url:
        return SerialUrl("device", url, path=url)
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme != "socket":
        raise ValueError(
            f"unsupported serial URL scheme {parsed.scheme!r} in {url!r} "
            "(use a device path or socket://host:port)"
        )
    try:
        port = parsed.port
    except ValueError:
        raise ValueError(f"bad port in serial URL {url!r}") from None
    if not parsed.hostname or port is None or port == 0 or parsed.path not in ("", "/"):
        raise ValueError(f"serial URL {url!r} must be socket://host:port")
    return SerialUrl("socket", url, host=parsed.hostname, port=port)


async def open_serial_url(
    url: str | SerialUrl,
    *,
    baudrate: int = 9600,
    bytesize: int = 8,
    parity: Literal["N", "E", "O"] = "N",
    stopbits: int = 1,
    exclusive: bool = True,
    timeout_s: float = 5.0,
    limit: int = 64 * 1024,
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Open the line and return its streams; the line settings are ignored for ``socket://``.

    A device is opened 8N1 raw (pyserial), exclusively locked (``flock``) unless told not to,
    with its input buffer flushed. A TCP connection gets keepalives, so a device server that
    vanishes without closing is noticed. ``timeout_s`` bounds the open / TCP connect.
    """
    try:
        target = url if isinstance(url, SerialUrl) else parse_serial_url(url)
    except ValueError as exc:
        raise DeviceError(str(exc)) from exc
    try:
        async with asyncio.timeout(timeout_s):
            if target.kind == "socket":
                reader, writer = await asyncio.open_connection(
                    target.host, target.port, limit=limit
                )
                _keepalive(writer)
                return reader, writer
            return await _open_device(
                target.path,
                baudrate=baudrate,
                bytesize=bytesize,
                parity=parity,
                stopbits=stopbits,
                exclusive=exclusive,
                limit=limit,
            )
    except TimeoutError as exc:
        raise DeviceConnectionError(f"{target}: open timed out after {timeout_s:g} s") from exc
    except OSError as exc:  # pyserial's SerialException is an OSError too
        raise _wrap(target, exc) from exc
    except ValueError as exc:  # pyserial rejects a setting (e.g. an impossible baud rate)
        raise DeviceError(f"{target}: {exc}") from exc


async def _open_device(
    path: str,
    *,
    baudrate: int,
    bytesize: int,
    parity: str,
    stopbits: int,
    exclusive: bool,
    limit: int,
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    import serial_asyncio_fast

    if not os.path.exists(path):  # noqa: ASYNC240 - one stat; spares a thread while unplugged
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), path)
    kwargs: dict[str, Any] = {
        "url": path,
        "baudrate": baudrate,
        "bytesize": bytesize,
        "parity": parity,
        "stopbits": stopbits,
        "exclusive": exclusive,
        "limit": limit,
    }
    reader, writer = await serial_asyncio_fast.open_serial_connection(**kwargs)
    assert isinstance(reader, asyncio.StreamReader)
    assert isinstance(writer, asyncio.StreamWriter)
    return reader, writer


def _keepalive(writer: asyncio.StreamWriter) -> None:
    """Detect a device server that vanished without closing (power cut) within ~25 s."""
    sock = writer.get_extra_info("socket")
    if sock is None:
        return
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for name, value in (("TCP_KEEPIDLE", 10), ("TCP_KEEPINTVL", 5), ("TCP_KEEPCNT", 3)):
        option = getattr(socket, name, None)
        if option is not None:
            sock.setsockopt(socket.IPPROTO_TCP, option, value)


def _wrap(target: SerialUrl, exc: OSError) -> DeviceError:
    code = exc.errno
    text = exc.strerror or str(exc)
    if code in _CONFIG_ERRNOS or (code is None and "configure port" in str(exc)):
        return DeviceError(f"{target}: {text}")
    if code == errno.ENOENT:
        return DeviceConnectionError(f"{target}: no such device")
    return DeviceConnectionError(f"{target}: {text}")
