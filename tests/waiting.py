"""Waiting for a condition with a deadline: what tests use instead of sleeps."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class WaitTimeout(AssertionError):
    """The condition did not hold before the deadline."""


def _held(result: object, deadline: float, timeout: float, message: str) -> bool:
    """Whether `result` is truthy; WaitTimeout once `deadline` (monotonic) has passed without it."""
    if result:
        return True
    if time.monotonic() >= deadline:
        raise WaitTimeout(message or f"condition not met within {timeout}s (last value: {result!r})")
    return False


def wait_for(predicate: Callable[[], T], timeout: float = 5.0, interval: float = 0.01, message: str = "") -> T:
    """Poll `predicate` until it returns something truthy, and return that; fail after `timeout` seconds.

    Exceptions raised by the predicate propagate (a broken check should fail loudly, not time out).
    """
    deadline = time.monotonic() + timeout
    while not _held(result := predicate(), deadline, timeout, message):
        time.sleep(interval)
    return result


async def async_wait_for(
    predicate: Callable[[], T], timeout: float = 5.0, interval: float = 0.01, message: str = ""
) -> T:
    """`wait_for` for coroutines: polls without blocking the event loop."""
    deadline = time.monotonic() + timeout
    while not _held(result := predicate(), deadline, timeout, message):
        await asyncio.sleep(interval)
    return result
