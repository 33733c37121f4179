"""CPU-bound fan-out: count primes in 40 ranges on every core, with a progress bar.

python examples/cpu_fanout_map.py
"""

from __future__ import annotations

import os
import time

from omniq_mp import OmniQ


def count_primes(start: int, stop: int) -> int:
    """Deliberately naive, so each task burns real CPU."""
    return sum(
        1 for n in range(max(start, 2), stop) if all(n % d for d in range(2, int(n**0.5) + 1))
    )


if __name__ == "__main__":
    step = 5_000
    starts = range(0, 40 * step, step)
    began = time.perf_counter()
    with OmniQ(procs=os.cpu_count() or 2) as q:
        counts = q.map(count_primes, starts, [s + step for s in starts], progress=True)
    print(f"primes below {40 * step}: {sum(counts)} ({time.perf_counter() - began:.1f}s)")
