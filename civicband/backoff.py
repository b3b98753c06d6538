"""The one backoff schedule: retried requests and retried database transactions wait alike."""

from __future__ import annotations

import random
from collections.abc import Callable


def backoff_delay(
    attempt: int,
    base: float,
    cap: float,
    jitter: float,
    rand: Callable[[], float] = random.random,
) -> float:
    """Wait before retry `attempt` (1 = first): base·2^(attempt−1), up to `jitter` more, ≤ cap."""
    if attempt < 1 or base <= 0:
        return 0.0
    nominal = base * 2.0 ** min(attempt - 1, 64)
    # Jitter only lengthens a wait, so the schedule is a floor the tests can check; at the cap
    # waits are equal, but by then their start times are already spread by earlier jitter.
    return min(cap, nominal * (1.0 + jitter * rand()))
