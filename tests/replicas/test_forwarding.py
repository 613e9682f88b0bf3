"""What the Ray Serve wrapper reads and writes without Ray: the prompt text the router
keys on, the headers it passes, its error replies, and the command's checks of its flags."""

from __future__ import annotations

import json

import pytest

from entropy_serve.cli import build_parser
from entropy_serve.commands import serve_replicas
from entropy_serve.replicas.forwarding import kept_headers, prompt_text, routing_text, stream_cut, unavailable


def body(**fields) -> bytes:
    return json.dumps(fields).encode()


def test_prompt_text_of_each_endpoints_body():
    chat = body(messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}])
    assert prompt_text(chat) == "Be brief.Hi"
    parts = body(messages=[{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}])
    assert prompt_text(parts) == "ab"
    assert prompt_text(body(prompt="2 + 2 =")) == "2 + 2 ="
    assert prompt_text(body(prompt=["x", "y"])) == "xy"
    assert prompt_text(body(input=[{"role": "user", "content": "hello"}])) == "hello"  # the Responses API
    for other in (b"", b"not json", b"[1, 2]", body(purpose="batch")):
        assert prompt_text(other) == ""


def test_hop_by_hop_headers_stay_behind():
    headers = [("Content-Type", "text/event-stream"), ("Content-Length", "12"), ("Connection", "keep-alive")]
    headers += [("Authorization", "Bearer k"), ("Host", "x")]
    assert kept_headers(headers) == [("Content-Type", "text/event-stream"), ("Authorization", "Bearer k")]


def test_failures_are_openai_errors():
    head, raw = unavailable("gone")
    assert head.status == 503 and json.loads(raw)["error"] == {
        "message": "gone",
        "type": "service_unavailable",
        "param": None,
        "code": None,
    }
    event = stream_cut("gone")
    assert event.startswith(b"data: ") and event.endswith(b"\n\n")
    assert json.loads(event.removeprefix(b"data: "))["error"]["message"] == "gone"


def parsed(*argv: str):
    return build_parser().parse_args(["serve-replicas", *argv])


def test_replica_flags_are_checked_by_serve_before_ray_starts():
    assert serve_replicas.replica_flags(parsed("--", "--max-model-len", "2048")) == ["--max-model-len", "2048"]
    with pytest.raises(ValueError, match="--port: each replica sets its own"):
        serve_replicas.replica_flags(parsed("--", "--port", "9000"))
    with pytest.raises(SystemExit):  # serve's parser: a clear message and exit 2
        serve_replicas.replica_flags(parsed("--", "--max-model-len", "lots"))


def test_replica_counts():
    assert serve_replicas.replica_counts(parsed()) == (2, 2)
    assert serve_replicas.replica_counts(parsed("--replicas", "3")) == (3, 3)
    assert serve_replicas.replica_counts(parsed("--min-replicas", "1", "--max-replicas", "4")) == (1, 4)
    with pytest.raises(ValueError, match="fixed count"):
        serve_replicas.replica_counts(parsed("--replicas", "2", "--max-replicas", "4"))
    with pytest.raises(ValueError, match="more than"):
        serve_replicas.replica_counts(parsed("--min-replicas", "5", "--max-replicas", "4"))


def test_named_cores():
    assert serve_replicas.named_cores(parsed("--replica-cores", "0|1"), 2) == ["0", "1"]
    assert serve_replicas.named_cores(parsed(), 2) is None
    with pytest.raises(ValueError, match="1 list"):
        serve_replicas.named_cores(parsed("--replica-cores", "0-1"), 2)
    with pytest.raises(ValueError, match="without --cores-per-replica"):
        serve_replicas.named_cores(parsed("--replica-cores", "0|1", "--cores-per-replica", "1"), 2)
    with pytest.raises(SystemExit):  # not a CPU list: argparse's message, exit 2
        parsed("--replica-cores", "zero|one")


def test_the_router_never_gets_an_empty_text():
    assert routing_text(body(prompt="2 + 2 ="), "POST", "/v1/completions") == "2 + 2 ="
    assert routing_text(b"", "GET", "/v1/models") == "GET /v1/models"


def test_the_ingress_holds_what_every_replica_can():
    """Ray Serve lets a deployment hold 5 requests unless told otherwise: the ingress, which
    only forwards, must let through as many as all the replicas together hold."""
    from entropy_serve.replicas.ray_app import Shape, deployments

    shape = Shape(1, 3, 16, 64, cores_per_replica=1, replica_cores=None, gpus_per_replica=0.0)
    ingress, replicas = deployments(shape)
    assert replicas.max_ongoing_requests == 64
    assert ingress.max_ongoing_requests == 3 * 64
