"""Device simulators that speak the real wire protocols, for tests, rigs and the demo."""
