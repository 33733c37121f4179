"""A producer: enqueue into ./omniq_data and wait for results computed elsewhere.

In one terminal:   omniq-mp workers --procs 2
In another:        python examples/producer.py
"""

from __future__ import annotations

from omniq_mp import OmniQ

q = OmniQ()  # no `with`: this process only enqueues and reads results
ids = [q.enqueue(pow, 2, n) for n in range(10)]
print([q.get_result(task_id, timeout=60) for task_id in ids])
q.close()
