"""`entropy-serve serve-replicas`: two replicas of the server behind Ray Serve on this
machine (one core and a small KV cache each, a Ray instance of the command's own).

Requests spread over both replicas; requests that share a long prompt prefix go to one
replica (Ray's prefix-affinity router); every replica's server is listed for Prometheus
and its /metrics scrapes; a client that leaves a stream has it aborted in the replica's
engine; when one replica's server is killed mid-load its in-flight
requests fail cleanly (a 503 in OpenAI's shape, or a stream's final error event), the
requests after go to the other, and Ray Serve starts a new replica in its place.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import signal
import subprocess
import time
import uuid

import httpx
import openai
import pytest
from conftest import MODEL
from helpers import cli_command, metric_at, wait_for

from entropy_serve.server.process import free_port

pytestmark = pytest.mark.e2e  # starts real server processes (two replicas)

STARTUP_S = 600
LONG_PREFIX = "You are a careful assistant who checks every step of every sum. " * 20


@pytest.fixture(scope="module")
def replicas(tmp_path_factory):
    port = free_port()
    log = (tmp_path_factory.mktemp("replicas") / "serve-replicas.log").open("w")
    flags = ["--max-model-len", "1024", "--kv-cache-gib", "1", "--max-n", "4", "--drain-timeout-s", "5"]
    # One core each, named (the suite's engines are told their cores; none are free to claim).
    command = cli_command("serve-replicas", "--replicas", "2", "--replica-cores", "0|1", "--port", port, "--", *flags)
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        up = wait_for(lambda: len(targets(url)) == 2 or process.poll() is not None, STARTUP_S)
        assert up and process.poll() is None, open(log.name).read()[-4000:]
        yield url, process
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(120)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        log.close()


def targets(url: str) -> list[str]:
    try:
        groups = httpx.get(f"{url}/replicas/targets", timeout=5).json()
    except (httpx.TransportError, ValueError):
        return []
    return [target for group in groups for target in group["targets"]]


def served_by_each(url: str) -> dict[str, float]:
    """Chat requests each replica's server has counted (its own /metrics, as Prometheus reads it)."""
    counts = {}
    for target in targets(url):
        text = httpx.get(f"http://{target}/metrics", timeout=5).text
        lines = [line for line in text.splitlines() if line.startswith("entropy_serve_requests_total{")]
        counts[target] = sum(float(line.split()[-1]) for line in lines)
    return counts


def client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0, timeout=300)


def ask(url: str, content: str, **fields):
    return client(url).chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": content}], max_tokens=8, temperature=0, **fields
    )


def test_targets_are_prometheus_service_discovery(replicas):
    url, _ = replicas
    assert client(url).models.list().data[0].id == MODEL  # a request without a prompt routes too
    groups = httpx.get(f"{url}/replicas/targets").json()
    assert isinstance(groups, list) and set(groups[0]) == {"targets", "labels"}
    assert all(":" in target for target in groups[0]["targets"])


def test_requests_spread_and_a_shared_prefix_sticks_to_one_replica(replicas):
    url, _ = replicas
    before = served_by_each(url)
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        replies = list(pool.map(lambda i: ask(url, f"{uuid.uuid4().hex}: what is {i} + {i}?"), range(8)))
    assert all(reply.choices[0].message.content for reply in replies)
    spread = {t: served_by_each(url)[t] - before[t] for t in before}
    assert all(count > 0 for count in spread.values()), spread  # both replicas answered
    # One conversation: the same long system prompt, four turns one after another.
    before = served_by_each(url)
    session = f"[{uuid.uuid4().hex}] {LONG_PREFIX}"
    for turn in range(4):
        ask(url, f"{session} Now: what is {turn} + 1?")
    turns = {t: served_by_each(url)[t] - before[t] for t in before}
    assert sorted(turns.values()) == [0, 4], turns  # all on one replica, the one holding the prefix


def aborted(url: str) -> float:
    """Requests the replicas' engines aborted because their client left."""
    return sum(metric_at(f"http://{target}", "entropy_serve_requests_aborted_total", 0.0) for target in targets(url))


def test_a_client_that_leaves_a_stream_has_it_aborted_in_the_replicas_engine(replicas):
    url, _ = replicas
    before = aborted(url)
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": f"{uuid.uuid4().hex} Tell a long story."}],
        "max_tokens": 900,
        "stream": True,
        "ignore_eos": True,
    }
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=60) as response:
        received = [line for line, _ in zip(response.iter_lines(), range(3))]
        assert all(line.startswith("data: ") for line in received if line)
    # Through the proxy, the ingress and the replica's forwarding: the engine stops generating.
    assert wait_for(lambda: aborted(url) > before)
    assert wait_for(lambda: sum(running(target) for target in targets(url)) == 0)


def server_pid(target: str) -> int:
    """The pid of the `entropy-serve serve` process listening at `target` (host:port)."""
    port = target.rsplit(":", 1)[1]
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            argv = open(f"/proc/{pid}/cmdline", "rb").read().split(b"\0")
        except OSError:
            continue
        if b"serve" in argv and b"--port" in argv and argv[argv.index(b"--port") + 1] == port.encode():
            return int(pid)
    raise LookupError(f"no server listens at {target}")


def stream_outcome(url: str, index: int) -> str:
    """'done' for a finished stream, 'cut' for one that ended with an error event, or
    'refused' for a 503 before it started: the three clean outcomes."""
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": f"{uuid.uuid4().hex} Tell a long story, part {index}."}],
        "max_tokens": 900,  # still generating when the replica is killed, 8 s in, on a fast core
        "stream": True,
        "ignore_eos": True,
    }
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=300) as response:
        if response.status_code == 503:
            assert response.read() and "error" in json.loads(response.read())
            return "refused"
        assert response.status_code == 200
        events = [line for line in response.iter_lines() if line.startswith("data: ")]
    if events[-1] == "data: [DONE]":
        return "done"
    assert "error" in json.loads(events[-1].removeprefix("data: "))
    return "cut"


def running(target: str) -> float:
    return metric_at(f"http://{target}", "entropy_serve_requests_running")


def test_a_killed_replica_fails_its_requests_cleanly_and_is_replaced(replicas):
    url, _ = replicas
    known = targets(url)
    assert len(known) == 2
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        streams = [pool.submit(stream_outcome, url, i) for i in range(6)]
        time.sleep(8)  # every stream under way
        # The router decides where they went (new prompts go to the replica it holds least
        # text for): kill the one with the most in flight, the engine and its server at once.
        # Found before the counts are read: the kill follows the reading at once.
        pids = {target: server_pid(target) for target in known}
        in_flight = {target: running(target) for target in known}
        victim = max(in_flight, key=in_flight.get)
        os.kill(pids[victim], signal.SIGKILL)
        (survivor,) = set(in_flight) - {victim}
        outcomes = [stream.result(timeout=300) for stream in streams]
    assert set(outcomes) <= {"done", "cut", "refused"}, outcomes  # each ended, and said how
    # Every request the victim was generating failed (more may have: routed there, not yet started).
    assert in_flight[victim] > 0 and len(outcomes) - outcomes.count("done") >= in_flight[victim], (outcomes, in_flight)
    # Ray Serve's health check takes the replica out: later requests all go to the survivor.
    assert wait_for(lambda: victim not in targets(url), 60)
    for turn in range(4):
        assert ask(url, f"{uuid.uuid4().hex}: what is {turn} + 2?").choices[0].message.content
    # ... and starts a replica in its place, with a server of its own.
    assert wait_for(lambda: len(targets(url)) == 2, STARTUP_S)
    assert survivor in targets(url) and victim not in targets(url)
