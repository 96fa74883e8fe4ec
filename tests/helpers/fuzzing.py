"""How hard the property tests try.

``make test`` must stay under 15 minutes on two cores, so the costliest property tests take a modest
number of examples there; ``make fuzz`` runs the same suite with ``LOGLAKE_FUZZ_SCALE`` (4 by
default) times as many, to look further for what the fixed examples miss.
"""

from __future__ import annotations

import os

#: Multiplies every count given to :func:`examples`.
SCALE = float(os.environ.get("LOGLAKE_FUZZ_SCALE", "1"))


def examples(n: int) -> int:
    """``n`` examples in ``make test``, ``SCALE`` times as many under ``make fuzz``."""
    return max(1, round(n * SCALE))
