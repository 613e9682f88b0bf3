"""Helpers the end-to-end tests share: the server's Prometheus metrics, running commands."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time

import httpx


def metric(server, name: str, default: float | None = None) -> float:
    """The value of one sample line of `server`'s metrics (see `metric_at`)."""
    return metric_at(server.url, name, default)


def metric_at(url: str, name: str, default: float | None = None) -> float:
    """The value of one sample line of the metrics at `url` (`name` may carry its labels);
    `default` when the line is absent (a labelled counter appears only once counted),
    else an error."""
    text = httpx.get(f"{url}/metrics", timeout=5).text
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


def command_env() -> dict[str, str]:
    """The environment engine-starting commands run in (a small CPU KV cache, as the servers')."""
    return {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "2"}


def cli_command(*args) -> list[str]:
    return [sys.executable, "-m", "entropy_serve", *map(str, args)]


def run_cli(*args, timeout_s: float = 600) -> subprocess.CompletedProcess:
    """Run an `entropy-serve` command to the end; its output is shown when it fails."""
    done = subprocess.run(cli_command(*args), env=command_env(), capture_output=True, text=True, timeout=timeout_s)
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stderr[-4000:]}"
    return done


def write_jsonl(path, records) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
