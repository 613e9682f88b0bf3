"""Generation throughput: bare `vllm.LLM.generate` versus our server over HTTP, one run.

Every side gets the same prompts, the same sampling parameters (ignore_eos, so every
request generates exactly --max-tokens tokens) and the same engine settings. The server
is driven with all requests in flight at once through the official `openai` client:
first plain, then with every one of our samplers on (typical_p, hapo adaptive
temperature, return_entropy). Also reports the server's cold start: process start to
the first `/health` 200.

    python benchmarks/throughput.py [--num-requests 64] [--max-tokens 64]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time

TOPICS = ["the sea", "a robot", "autumn", "a city at night", "mathematics", "a cat", "rain", "the moon"]


def prompts(num_requests: int) -> list[str]:
    return [f"Write a short story about {TOPICS[i % len(TOPICS)]} (#{i})." for i in range(num_requests)]


def bare_vllm(model: str, texts: list[str], max_tokens: int, max_model_len: int) -> tuple[float, int]:
    from vllm import LLM, SamplingParams

    from entropy_serve.server.config import ServerConfig
    from entropy_serve.server.engine import engine_args

    # The very engine settings the server uses.
    args = engine_args(ServerConfig(model=model, served_model_name="bench", max_model_len=max_model_len))
    llm = LLM(**{k: v for k, v in vars(args).items() if k != "enable_log_requests"})
    params = SamplingParams(max_tokens=max_tokens, temperature=0.8, ignore_eos=True)
    llm.generate(texts[:2], params, use_tqdm=False)  # warm-up
    start = time.perf_counter()
    outputs = llm.generate(texts, params, use_tqdm=False)
    elapsed = time.perf_counter() - start
    num_tokens = sum(len(c.token_ids) for o in outputs for c in o.outputs)
    llm.llm_engine.engine_core.shutdown()
    return elapsed, num_tokens


SAMPLERS_ON = {"typical_p": 0.9, "adaptive_temperature": {"method": "hapo"}, "return_entropy": True}


def server_http(texts: list[str], max_tokens: int, max_model_len: int) -> dict:
    """tokens/s of the server, plain and with every sampler on, and its cold start."""
    import openai

    from entropy_serve.server.process import ServerProcess

    started = time.perf_counter()
    kv_cache_gib = int(os.environ.get("VLLM_CPU_KVCACHE_SPACE", 4))
    server = ServerProcess("--max-model-len", str(max_model_len), kv_cache_gib=kv_cache_gib)
    try:
        server.wait_until_ready()
        cold_start_s = time.perf_counter() - started
        model = openai.OpenAI(base_url=f"{server.url}/v1", api_key="x").models.list().data[0].id

        async def run_all(extra: dict) -> float:
            client = openai.AsyncOpenAI(base_url=f"{server.url}/v1", api_key="x", timeout=600)
            extra = {"ignore_eos": True, **extra}
            await client.completions.create(model=model, prompt=texts[0], max_tokens=max_tokens, extra_body=extra)
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

        plain = asyncio.run(run_all({}))
        samplers = asyncio.run(run_all(SAMPLERS_ON))
        return {"plain": plain, "samplers": samplers, "cold_start_s": cold_start_s}
    finally:
        server.terminate()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="HF folder (default: the embedded model)")
    parser.add_argument("--num-requests", type=int, default=64)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--max-model-len", type=int, default=2048)
    args = parser.parse_args()

    from entropy_serve.model_store import prepare_default_model

    model = args.model or str(prepare_default_model())
    texts = prompts(args.num_requests)
    bare_s, bare_tokens = bare_vllm(model, texts, args.max_tokens, args.max_model_len)
    bare = bare_tokens / bare_s
    server = server_http(texts, args.max_tokens, args.max_model_len)
    result = {
        "num_requests": args.num_requests,
        "max_tokens": args.max_tokens,
        "bare_vllm_tokens_per_s": round(bare, 1),
        "server_tokens_per_s": round(server["plain"], 1),
        "server_all_samplers_tokens_per_s": round(server["samplers"], 1),
        "ratio_server_over_bare": round(server["plain"] / bare, 3),
        "ratio_all_samplers_over_bare": round(server["samplers"] / bare, 3),
        "ratio_all_samplers_over_server_plain": round(server["samplers"] / server["plain"], 3),
        "server_cold_start_s": round(server["cold_start_s"], 1),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":  # vLLM spawns engine processes
    main()
