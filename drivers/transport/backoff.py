"""Pure exponential backoff with full jitter and a cap."""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass
class Backoff:
    """Delays for reconnect attempts: uniform in [0, min(cap, base * 2**attempt)].

    ``rng`` is injectable so tests are deterministic; ``reset()`` after a success.
    """

    base_s: float
    cap_s: float
    rng: random.Random = field(default_factory=random.Random)
    attempt: int = 0

    def next_delay(self) -> float:
        """Return the delay before the next attempt and count the attempt."""
        ceiling = min(self.cap_s, self.base_s * float(1 << min(self.attempt, 62)))
        self.attempt += 1
        return float(self.rng.uniform(0.0, ceiling))

    def ceiling(self) -> float:
        """Return the current upper bound without counting an attempt."""
        return min(self.cap_s, self.base_s * float(1 << min(self.attempt, 62)))

    def saturate(self) -> None:
        """Jump to the cap (used for errors retrying cannot fix soon, e.g. bad config)."""
        while self.ceiling() < self.cap_s:
            self.attempt += 1

    def reset(self) -> None:
        """Forget previous failures."""
        self.attempt = 0
