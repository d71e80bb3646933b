"""warding controller: the daemon, its services, policy, journal, control API and CLIs."""

__version__ = "0.1.0"
