"""Control socket server (JSON lines over a Unix socket)."""
