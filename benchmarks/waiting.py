"""One bounded wait for tests and benchmarks: poll a condition until it holds or time runs out.

Lives beside the benchmarks, which run as scripts from this folder; pytest puts this folder
on its path (pyproject's `pythonpath`), so tests import it as `from waiting import wait_until`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_until(condition: Callable[[], T], timeout: float, interval: float = 0.1,
               message: str | Callable[[], str] = "", raise_on_timeout: bool = True) -> T:
    """Call `condition` every `interval` seconds until it returns something truthy, and
    return that. After `timeout` seconds (the condition is always tried once more at the
    end), raise AssertionError with `message` (a string, or a callable that says what
    was seen), or return the last falsy value when `raise_on_timeout` is False."""
    deadline = time.monotonic() + timeout
    while True:
        last = time.monotonic() >= deadline
        value = condition()
        if value or last:
            break
        time.sleep(max(0.0, min(interval, deadline - time.monotonic())))
    if value or not raise_on_timeout:
        return value
    said = message() if callable(message) else message
    raise AssertionError(f"not within {timeout:g} s" + (f": {said}" if said else ""))
