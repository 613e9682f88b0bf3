"""SIGTERM with requests longer than the drain: /health says draining at once, new
requests get a 503, and when the drain runs out every open request ends with a word (an
error event on streams, a 503 otherwise) before the server exits DRAIN_CUT_EXIT."""

from __future__ import annotations

import json
import signal
import threading
import time

import httpx
import pytest
from conftest import MODEL

from entropy_serve.server.api.drain import DRAIN_CUT_EXIT
from entropy_serve.server.process import ServerProcess

pytestmark = pytest.mark.e2e  # drives a real server process

LONG = {"model": MODEL, "prompt": "Once upon a time", "max_tokens": 1500, "ignore_eos": True}


def test_a_drain_that_runs_out_ends_every_request_with_a_word():
    with ServerProcess("--max-model-len", "2048", "--drain-timeout-s", "3", kv_cache_gib=1) as server:
        stream_lines: list[str] = []
        first_chunk = threading.Event()
        plain: dict = {}

        def stream():
            with httpx.stream(
                "POST", f"{server.url}/v1/completions", json={**LONG, "stream": True}, timeout=120
            ) as response:
                for line in response.iter_lines():
                    if line:
                        stream_lines.append(line)
                        first_chunk.set()

        def not_streamed():
            plain["response"] = httpx.post(f"{server.url}/v1/completions", json=LONG, timeout=120)

        threads = [threading.Thread(target=stream), threading.Thread(target=not_streamed)]
        for thread in threads:
            thread.start()
        assert first_chunk.wait(60)
        time.sleep(0.5)  # the non-streamed request is in the engine too
        server.process.send_signal(signal.SIGTERM)
        time.sleep(0.5)

        health = httpx.get(f"{server.url}/health", timeout=10)
        assert health.status_code == 503 and "draining" in health.json()["error"]["message"]
        refused = httpx.post(f"{server.url}/v1/completions", json={**LONG, "max_tokens": 2}, timeout=10)
        assert refused.status_code == 503 and refused.json()["error"]["type"] == "service_unavailable"

        for thread in threads:
            thread.join(60)
        last = json.loads(stream_lines[-1].removeprefix("data: "))
        assert last["error"]["type"] == "service_unavailable" and "drain of 3 s ran out" in last["error"]["message"]
        assert "data: [DONE]" not in stream_lines and len(stream_lines) > 2  # tokens, then the error event
        response = plain["response"]
        assert response.status_code == 503 and "drain of 3 s ran out" in response.json()["error"]["message"]
        assert server.process.wait(timeout=30) == DRAIN_CUT_EXIT
