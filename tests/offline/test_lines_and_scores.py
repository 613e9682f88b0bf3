"""Batch lines that are not requests, and the scoring math, by hand (no engine)."""

from __future__ import annotations

import math

import pytest
import torch

from entropy_serve.offline.batch import LineError, request_of
from entropy_serve.offline.records import InputLine
from entropy_serve.offline.score import ScoreRecord, highest_entropy_window, score_positions
from entropy_serve.server.core.service import Endpoint
from entropy_serve.server.errors import BadRequest


def line(value, number: int = 1, error: str | None = None) -> InputLine:
    return InputLine(number, value, error)


def test_a_request_line_gives_its_endpoint_and_body():
    body = {"model": "m", "prompt": "p"}
    value = {"custom_id": "x", "method": "POST", "url": "/v1/completions", "body": body}
    assert request_of(line(value)) == (Endpoint.COMPLETIONS, body)


@pytest.mark.parametrize(
    "value, status, words",
    [
        ([1, 2], 400, "must be a JSON object"),
        ({"method": "POST", "url": "/v1/completions", "body": {}}, 400, "custom_id: required"),
        ({"custom_id": "x", "method": "GET", "url": "/v1/completions", "body": {}}, 405, "only POST"),
        (
            {"custom_id": "x", "method": "POST", "url": "/v1/embeddings", "body": {}},
            404,
            "'/v1/embeddings' is not served",
        ),
        ({"custom_id": "x", "method": "POST", "url": "/v1/completions"}, 400, "body: required"),
    ],
)
def test_lines_that_are_not_requests_get_the_status_http_would_give(value, status, words):
    with pytest.raises(LineError) as raised:
        request_of(line(value, number=7))
    assert raised.value.status_code == status
    assert raised.value.message.startswith("line 7: ") and words in raised.value.message


def test_a_line_that_is_not_json_keeps_its_parse_message():
    with pytest.raises(LineError, match="line 2: not JSON"):
        request_of(line(None, 2, "line 2: not JSON (Expecting value)"))


def test_a_streamed_line_is_refused():
    value = {"custom_id": "x", "method": "POST", "url": "/v1/completions", "body": {"stream": True}}
    with pytest.raises(BadRequest, match="stream: a batch line is answered whole"):
        request_of(line(value))


def test_score_positions_equal_log_softmax_and_entropy_in_float64():
    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(5, 8, generator=generator)
    weight = torch.randn(11, 8, generator=generator) * 3
    targets = torch.tensor([0, 3, 10, 7, 7])
    logprobs, entropies = score_positions(hidden, weight, targets)
    log_p = torch.log_softmax((hidden.double() @ weight.double().T), dim=-1)
    assert torch.allclose(logprobs.double(), log_p[torch.arange(5), targets], atol=1e-5)
    assert torch.allclose(entropies.double(), -(log_p.exp() * log_p).sum(-1), atol=1e-5)


def test_score_positions_in_chunks_equal_one_pass(monkeypatch):
    import entropy_serve.offline.score as score

    hidden, weight, targets = torch.randn(7, 4), torch.randn(9, 4), torch.randint(0, 9, (7,))
    whole = score_positions(hidden, weight, targets)
    monkeypatch.setattr(score, "ROWS_PER_MATMUL", 3)
    chunked = score_positions(hidden, weight, targets)
    # Equal up to float32 rounding: a matmul's blocking (and so its sums' order) depends on its row count.
    assert all(torch.allclose(a, b, rtol=1e-5, atol=1e-6) for a, b in zip(whole, chunked))


def test_highest_entropy_window_by_hand():
    assert highest_entropy_window([1.0, 5.0, 3.0, 0.0, 4.0], 2) == (1, 3, 4.0)
    assert highest_entropy_window([2.0, 2.0, 2.0], 2) == (0, 2, 2.0)  # ties: the first window
    start, end, mean = highest_entropy_window([1.0, 2.0], 16)  # shorter than the window: all of it
    assert (start, end) == (0, 2) and math.isclose(mean, 1.5)


@pytest.mark.parametrize(
    "record, words",
    [
        ({"completion": "x"}, "exactly one of prompt"),
        ({"prompt": "a", "messages": [{"role": "user", "content": "b"}]}, "exactly one of prompt"),
        ({"prompt": "a", "completion": ""}, "completion: must not be empty"),
        ({"messages": []}, "messages: must not be empty"),
    ],
)
def test_bad_score_records(record, words):
    with pytest.raises(ValueError, match=words):
        ScoreRecord.model_validate(record)
