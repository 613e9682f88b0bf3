"""Helpers the end-to-end tests share: reading the server's Prometheus metrics."""

from __future__ import annotations

import re
import time

import httpx


def metric(server, name: str, default: float | None = None) -> float:
    """The value of one sample line (`name` may carry its labels); `default` when the
    line is absent (a labelled counter appears only once counted), else an error."""
    text = httpx.get(f"{server.url}/metrics").text
    match = re.search(rf"^{re.escape(name)}(?:{{[^}}]*}})? (\S+)$", text, re.MULTILINE)
    if match is None and default is not None:
        return default
    assert match, f"{name} not in /metrics"
    return float(match.group(1))


def wait_for(condition, timeout_s: float = 20) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return False
