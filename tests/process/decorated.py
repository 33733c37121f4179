"""A module with a decorated task, as application code would have one.

``client`` is a placeholder the tests rebind to their own OmniQ; in a worker, importing
this module only builds the decorator, it never starts anything.
"""

from __future__ import annotations

from omniq_mp import OmniQ

client = OmniQ(backend="memory")


@client.task(timeout=10, max_retries=0)
def square(x: int) -> int:
    return x * x
