"""Command-line entry points: ``warding`` and ``wardctl``."""
