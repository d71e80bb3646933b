"""Wiegand-to-serial / ASCII badge readers: sans-I/O codec (codec.py) and asyncio driver."""

from drivers.serial_reader.codec import Framing
from drivers.serial_reader.driver import SerialReaderBus, SerialReaderBusConfig, SerialReaderConfig

__all__ = ["Framing", "SerialReaderBus", "SerialReaderBusConfig", "SerialReaderConfig"]
