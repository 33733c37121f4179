"""Task ids: unique, unguessable, and in creation order (stores append to their id index)."""

from __future__ import annotations

import os
import re
import time

from omniq_mp.models import Task


def new_id() -> str:
    return Task(func_name="f", payload=b"").id


def test_ids_are_32_hex_digits_and_never_repeat() -> None:
    ids = [new_id() for _ in range(20_000)]
    assert all(re.fullmatch("[0-9a-f]{32}", i) for i in ids)
    assert len(set(ids)) == len(ids)
    assert len({i[12:] for i in ids}) == len(ids)  # the random parts alone differ too


def test_ids_made_in_later_milliseconds_sort_later() -> None:
    earlier = [new_id() for _ in range(50)]
    time.sleep(0.002)
    later = [new_id() for _ in range(50)]
    assert max(earlier) < min(later)
    assert abs(int(later[0][:12], 16) / 1000 - time.time()) < 5  # they start with the time


def test_a_forked_child_does_not_reuse_the_ids_its_parent_has_yet_to_hand_out() -> None:
    new_id()  # the parent now holds unused random parts
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: write five ids and leave at once
        try:
            os.write(write, "".join(new_id()[12:] for _ in range(5)).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        data = pipe.read()
    os.waitpid(pid, 0)
    child = {data[i : i + 20] for i in range(0, len(data), 20)}
    parent = {new_id()[12:] for _ in range(5)}
    assert len(child) == 5 and not child & parent
