"""Doors: the pure per-door state machine and the door service that drives the boards."""
