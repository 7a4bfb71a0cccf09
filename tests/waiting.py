"""Waiting on other processes and threads without fixed sleeps: poll a condition until a deadline,
or sample while a process runs and stop the moment it exits.

A fixed `time.sleep(x)` is either too short on a loaded machine (a flaky failure) or too long
everywhere else (a slow suite); these return as soon as what they wait for has happened, and say
what they waited for when it never does."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Iterator
from typing import TypeVar

T = TypeVar("T")


def wait_until(predicate: Callable[[], T], timeout: float, what: str, every: float = 0.05) -> T:
    """Call `predicate` every `every` seconds until it returns something truthy, and return that.
    AssertionError naming `what` after `timeout` seconds. An assertion inside `predicate` (such as
    "the process is still running") fails at once."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(every)


def while_running(proc: subprocess.Popen, every: float) -> Iterator[None]:
    """Yield at once, then every `every` seconds while `proc` runs; ends as soon as it exits (the wait
    between samples is a wait on the process, not a sleep past its end)."""
    while proc.poll() is None:
        yield
        try:
            proc.wait(every)
        except subprocess.TimeoutExpired:
            pass
