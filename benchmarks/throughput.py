"""Generation throughput: bare `vllm.LLM.generate` versus our server over HTTP, one run.

Every side gets the same prompts, the same sampling parameters (ignore_eos, so every
request generates exactly --max-tokens tokens) and the same engine settings. The server
is driven with all requests in flight at once through the official `openai` client,
plain and with every one of our samplers on (typical_p, hapo adaptive temperature,
return_entropy), alternating for --rounds rounds: a shared machine's speed drifts, so
each round's two sides run back to back and the overhead is the median of the rounds'
ratios. Also reports the server's cold start: process start to the first `/health` 200.

Structured outputs: the same requests with a JSON schema (`response_format`) whose one
string field is longer (minLength) than --max-tokens can write, so every request still
generates exactly --max-tokens tokens, against the same requests plain: with vLLM's
grammar, and with our adapter's (return_entropy puts the grammar in our adapter) against
plain requests with return_entropy. Paired by round, as above.

    python benchmarks/throughput.py [--num-requests 64] [--max-tokens 64] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import time

TOPICS = ["the sea", "a robot", "autumn", "a city at night", "mathematics", "a cat", "rain", "the moon"]


def prompts(num_requests: int) -> list[str]:
    return [f"Write a short story about {TOPICS[i % len(TOPICS)]} (#{i})." for i in range(num_requests)]


async def completions_tokens_per_s(
    url: str, model: str, texts: list[str], max_tokens: int, extra: dict, timeout_s: float = 600, max_retries: int = 2
) -> float:
    """Generated tokens per second of one completion request per text, all in flight at
    once through the official client (temperature 0.8, `extra` as extra_body)."""
    import openai

    async with openai.AsyncOpenAI(
        base_url=f"{url}/v1", api_key="x", timeout=timeout_s, max_retries=max_retries
    ) as client:
        start = time.perf_counter()
        results = await asyncio.gather(
            *(
                client.completions.create(
                    model=model, prompt=t, max_tokens=max_tokens, temperature=0.8, extra_body=extra
                )
                for t in texts
            )
        )
    return sum(r.usage.completion_tokens for r in results) / (time.perf_counter() - start)


def bare_vllm(model: str, texts: list[str], max_tokens: int, max_model_len: int, rounds: int) -> list[float]:
    """tokens/s of each round."""
    from vllm import LLM, SamplingParams

    from entropy_serve.server.config import ServerConfig
    from entropy_serve.server.engine.holder import CORE_CLAIMS, engine_args

    # The very engine settings the server uses.
    args = engine_args(ServerConfig(model=model, served_model_name="bench", max_model_len=max_model_len))
    llm = LLM(**{k: v for k, v in vars(args).items() if k != "enable_log_requests"})
    params = SamplingParams(max_tokens=max_tokens, temperature=0.8, ignore_eos=True)
    # Warm-up, which also puts every prompt in the prefix cache, as the server's does.
    llm.generate(texts, SamplingParams(max_tokens=1), use_tqdm=False)
    tokens_per_s = []
    for _ in range(rounds):
        start = time.perf_counter()
        outputs = llm.generate(texts, params, use_tqdm=False)
        elapsed = time.perf_counter() - start
        tokens_per_s.append(sum(len(c.token_ids) for o in outputs for c in o.outputs) / elapsed)
    llm.llm_engine.engine_core.shutdown()
    # Its cores go to the server measured next (told the same ones: VLLM_CPU_OMP_THREADS_BIND).
    CORE_CLAIMS.release()
    return tokens_per_s


SAMPLERS_ON = {"typical_p": 0.9, "adaptive_temperature": {"method": "hapo"}, "return_entropy": True}
STORY_SCHEMA = {
    "type": "object",
    # Longer than any --max-tokens here: the grammar never ends before max_tokens does.
    "properties": {"story": {"type": "string", "minLength": 100_000}},
    "required": ["story"],
}
JSON_SCHEMA = {"type": "json_schema", "json_schema": {"name": "story", "schema": STORY_SCHEMA}}
# name -> (our extra fields, response_format)
SIDES = {
    "plain": ({}, None),
    "samplers": (SAMPLERS_ON, None),
    "json_schema": ({}, JSON_SCHEMA),
    "entropy": ({"return_entropy": True}, None),
    "json_schema_entropy": ({"return_entropy": True}, JSON_SCHEMA),
}


def server_http(texts: list[str], max_tokens: int, max_model_len: int, rounds: int) -> dict:
    """tokens/s of the server in each round, plain and with every sampler on, and its cold start."""
    import openai

    from entropy_serve.server.process import ServerProcess

    started = time.perf_counter()
    kv_cache_gib = int(os.environ.get("VLLM_CPU_KVCACHE_SPACE", 4))
    with ServerProcess("--max-model-len", str(max_model_len), kv_cache_gib=kv_cache_gib) as server:
        cold_start_s = time.perf_counter() - started
        model = openai.OpenAI(base_url=f"{server.url}/v1", api_key="x").models.list().data[0].id

        async def run_all(side: str, max_tokens: int = max_tokens) -> float:
            extra, response_format = SIDES[side]
            extra = {"ignore_eos": True, **extra}
            if response_format is not None:
                extra["response_format"] = response_format
            return await completions_tokens_per_s(server.url, model, texts, max_tokens, extra)

        # Warm-up, which also puts every prompt in the prefix cache before any side runs.
        for side in SIDES:
            asyncio.run(run_all(side, max_tokens=1))
        measured = {side: [] for side in SIDES}
        for _ in range(rounds):
            for side in SIDES:
                measured[side].append(asyncio.run(run_all(side)))
        return {**measured, "cold_start_s": cold_start_s}


def paired_ratio(side: list[float], baseline: list[float]) -> float:
    """The median over rounds of side / baseline, each round's two run back to back."""
    return round(statistics.median(s / b for s, b in zip(side, baseline)), 3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="HF folder (default: the embedded model)")
    parser.add_argument("--num-requests", type=int, default=64)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--max-model-len", type=int, default=2048)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    from entropy_serve.model_store import prepare_default_model

    model = args.model or str(prepare_default_model())
    texts = prompts(args.num_requests)
    bare = bare_vllm(model, texts, args.max_tokens, args.max_model_len, args.rounds)
    server = server_http(texts, args.max_tokens, args.max_model_len, args.rounds)
    median = statistics.median
    result = {
        "num_requests": args.num_requests,
        "max_tokens": args.max_tokens,
        "rounds": args.rounds,
        "bare_vllm_tokens_per_s": [round(x, 1) for x in bare],
        "server_tokens_per_s": [round(x, 1) for x in server["plain"]],
        "server_all_samplers_tokens_per_s": [round(x, 1) for x in server["samplers"]],
        "ratio_server_over_bare": round(median(server["plain"]) / median(bare), 3),
        "ratio_all_samplers_over_bare": round(median(server["samplers"]) / median(bare), 3),
        "ratio_all_samplers_over_server_plain": paired_ratio(server["samplers"], server["plain"]),
        "server_cold_start_s": round(server["cold_start_s"], 1),
        **{f"server_{side}_tokens_per_s": [round(x, 1) for x in server[side]] for side in list(SIDES)[2:]},
        "ratio_json_schema_over_plain": paired_ratio(server["json_schema"], server["plain"]),
        "ratio_json_schema_entropy_over_entropy": paired_ratio(server["json_schema_entropy"], server["entropy"]),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":  # vLLM spawns engine processes
    main()
