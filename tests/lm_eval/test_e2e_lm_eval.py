"""lm-evaluation-harness, a real client, against the running server: a loglikelihood
task and a generate_until task (tasks/*.yaml over local JSON) through `local-completions`,
and the generate_until task through `local-chat-completions`.

lm-eval lives in its own virtual environment (`make lm-eval`: its pins never touch the
server's); it is driven as its users run it, from its command line. Each number it
reports per sample is checked against the server's own answer to the same request, so
the test fails if the harness and the server disagree on what a score or a generation
is. One request at a time on both sides: in bfloat16 on CPU the engine's logits depend
on which sequences share a step.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
from pathlib import Path

import pytest
from conftest import API_KEY, MODEL
from helpers import metric

from entropy_serve.model_store import prepare_default_model

pytestmark = pytest.mark.e2e  # drives a real server process

ROOT = Path(__file__).resolve().parents[2]
LM_EVAL = ROOT / ".venv-lmeval" / "bin" / "lm_eval"
TASKS = Path(__file__).parent / "tasks"


def read_docs(name: str) -> list[dict]:
    return [json.loads(line) for line in (TASKS / f"{name}.json").read_text().splitlines()]


def run_lm_eval(server, tmp_path: Path, model: str, endpoint: str, tasks: str, *extra: str) -> dict[str, list[dict]]:
    """Run lm_eval; its logged samples per task, in document order."""
    assert LM_EVAL.exists(), f"{LM_EVAL} is missing: `make lm-eval` installs lm-evaluation-harness there"
    model_args = f"model={MODEL},base_url={server.url}/v1/{endpoint},num_concurrent=1,max_retries=1"
    if model == "local-completions":
        model_args += f",tokenizer={prepare_default_model()},tokenizer_backend=huggingface"
    env = {**os.environ, "OPENAI_API_KEY": API_KEY, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    command = [
        str(LM_EVAL),
        "--model",
        model,
        "--model_args",
        model_args,
        "--tasks",
        tasks,
        "--include_path",
        str(TASKS),
        "--output_path",
        str(tmp_path),
        "--log_samples",
        *extra,
    ]
    done = subprocess.run(command, cwd=TASKS, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-4000:]
    samples = {}
    for path in tmp_path.rglob("samples_*.jsonl"):
        task = path.name.removeprefix("samples_").rsplit("_", 1)[0]
        samples[task] = sorted((json.loads(line) for line in path.read_text().splitlines()), key=lambda s: s["doc_id"])
    return samples


def test_loglikelihood_and_generate_until_through_local_completions(server, client, tokenizer, tmp_path):
    samples = run_lm_eval(server, tmp_path, "local-completions", "completions", "addition_mc,addition_gen")
    mc_docs, gen_docs = read_docs("addition_mc"), read_docs("addition_gen")
    assert len(samples["addition_mc"]) == len(mc_docs) and len(samples["addition_gen"]) == len(gen_docs)

    for sample, doc in zip(samples["addition_mc"], mc_docs):
        context = tokenizer.encode(f"Question: {doc['question']}\nAnswer:")
        for choice, response in zip(doc["choices"], sample["resps"]):
            continuation = tokenizer.encode(f" {choice}", add_special_tokens=False)
            scored = client.completions.create(
                model=MODEL, prompt=context + continuation, max_tokens=0, echo=True, logprobs=1
            )
            expected = math.fsum(scored.choices[0].logprobs.token_logprobs[len(context) :])
            loglikelihood, _ = response[0]
            assert math.isclose(float(loglikelihood), expected, abs_tol=1e-4), (doc, choice)

    for sample, doc in zip(samples["addition_gen"], gen_docs):
        greedy = client.completions.create(
            model=MODEL, prompt=f"Question: {doc['question']}\nAnswer:", max_tokens=8, temperature=0, stop=["\n"]
        )
        assert sample["resps"][0][0] == greedy.choices[0].text, doc


def test_generate_until_through_local_chat_completions(server, client, tmp_path):
    before = metric(server, 'entropy_serve_requests_total{endpoint="chat_completions"}', default=0.0)
    samples = run_lm_eval(
        server, tmp_path, "local-chat-completions", "chat/completions", "addition_gen", "--apply_chat_template"
    )
    docs = read_docs("addition_gen")
    assert len(samples["addition_gen"]) == len(docs)
    for sample, doc in zip(samples["addition_gen"], docs):
        messages = [{"role": "user", "content": f"Question: {doc['question']}\nAnswer:"}]
        greedy = client.chat.completions.create(
            model=MODEL, messages=messages, max_tokens=8, temperature=0, stop=["\n"]
        )
        assert sample["resps"][0][0] == greedy.choices[0].message.content, doc
    after = metric(server, 'entropy_serve_requests_total{endpoint="chat_completions"}')
    assert after - before == 2 * len(docs)  # lm-eval's request per document, and the test's own
