"""Start-up, engine death and SIGTERM, each on a server of its own."""

from __future__ import annotations

import signal
import threading
import time

import httpx
import psutil
from conftest import MODEL
from entropy_serve.server.process import ServerProcess

SMALL = ("--max-model-len", "2048")
CHAT = {"messages": [{"role": "user", "content": "Hi"}]}


def test_health_is_503_while_loading_then_engine_death_exits_non_zero():
    server = ServerProcess(*SMALL, kv_cache_gib=1)
    try:
        first = server.wait_until_listening()
        # uvicorn answers before the model has loaded.
        assert first.status_code == 503, first.text
        assert first.json()["error"]["type"] == "service_unavailable"
        for path, body in [("/v1/completions", {"prompt": "Hi"}), ("/v1/chat/completions", CHAT)]:
            early = httpx.post(f"{server.url}{path}", json={"model": MODEL, "max_tokens": 2, **body}, timeout=30)
            if server.health().status_code == 503:  # still loading after the request
                assert early.status_code == 503, early.text
        server.wait_until_ready()

        for child in psutil.Process(server.process.pid).children(recursive=True):
            child.kill()
        statuses = []
        deadline = time.monotonic() + 60
        while server.process.poll() is None and time.monotonic() < deadline:
            response = server.health()
            if response is not None:
                statuses.append(response.status_code)
            time.sleep(0.05)
        assert server.process.wait(timeout=30) == 1
        assert 503 in statuses
        assert "the engine died" in server.log()
    finally:
        server.terminate()


def test_sigterm_drains_in_flight_streams_and_exits_zero():
    server = ServerProcess(*SMALL, kv_cache_gib=1)
    try:
        server.wait_until_ready()
        num_tokens = 48
        body = {"model": MODEL, "prompt": "Once upon a time", "max_tokens": num_tokens, "stream": True,
                "ignore_eos": True, "logprobs": 0, "stream_options": {"include_usage": True}}
        first_chunk = threading.Event()
        lines: list[str] = []

        def stream():
            with httpx.stream("POST", f"{server.url}/v1/completions", json=body, timeout=120) as response:
                for line in response.iter_lines():
                    lines.append(line)
                    first_chunk.set()

        reader = threading.Thread(target=stream)
        reader.start()
        assert first_chunk.wait(60)
        server.process.send_signal(signal.SIGTERM)
        reader.join(120)
        events = [line for line in lines if line]
        assert events[-1] == "data: [DONE]"
        assert f'"completion_tokens":{num_tokens}' in events[-2]
        assert server.process.wait(timeout=60) == 0
    finally:
        server.terminate()
