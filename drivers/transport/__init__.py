"""Transports: serial-by-URL, pure backoff, link supervision."""
