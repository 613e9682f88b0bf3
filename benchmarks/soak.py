"""A bounded soak: minutes of mixed load on one server in the host's fast dtype, to see
that nothing leaks or degrades (not in CI: it runs for `--minutes`, 30 by default).

Load: `--clients` loops, each sending one request after another, cycling through the
kinds below, plus a bulk job every `--burst-every-s` (`--burst` seeded completions at
once, the way an offline job pushes a file of lines through the server):
- plain: a completion;             - streamed: a streamed chat completion;
- abandoned: a stream the client closes after three chunks (the engine must abort it);
- samplers: typical_p + edt + return_entropy, seeded (our adapter draws it);
- seeded: a plain seeded completion with penalties (our adapter draws it too);
- strategy: self_consistency with n 4;
- structured: a JSON-schema chat reply with return_entropy (our grammar, warmed up first);
- long: a 3,000-token prompt (prefilled in chunks beside the rest).
Reported: errors by kind (goal 0; an abandoned stream is not one), and every minute the
server's RSS and open file descriptors per process role, the entropy store's keys and
requests running (from /metrics); per 5-minute window, latency percentiles per kind.

    python benchmarks/soak.py [--minutes 30] [--out DIR] [server flags ...]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

import httpx
import openai
import psutil
from memory import GIB, role

from entropy_serve.server.process import ServerProcess

MODEL = "SmolLM2-135M-Instruct"
STORY = "Once upon a time, in a village by the sea,"
QUESTION = "What is 17 + 25? Answer with the number."
SCHEMA = {
    "type": "object",
    "properties": {"name": {"type": "string", "maxLength": 20}, "age": {"type": "integer"}},
    "required": ["name", "age"],
}
WINDOW_S = 300


def kinds(long_prompt: str) -> dict:
    """Each kind: (endpoint, request fields, how the reply is read)."""
    chat = {"messages": [{"role": "user", "content": QUESTION}]}
    return {
        "plain": ("completions", {"prompt": STORY, "max_tokens": 32}, "whole"),
        "streamed": ("chat", {**chat, "max_tokens": 48, "stream": True}, "stream"),
        "abandoned": ("chat", {**chat, "max_tokens": 200, "stream": True}, "abandon"),
        "samplers": (
            "completions",
            {
                "prompt": STORY,
                "max_tokens": 32,
                "seed": 3,
                "typical_p": 0.9,
                "adaptive_temperature": {"method": "edt"},
                "return_entropy": True,
            },
            "whole",
        ),
        "seeded": (
            "completions",
            {"prompt": STORY, "max_tokens": 32, "seed": 5, "frequency_penalty": 0.5, "top_p": 0.95},
            "whole",
        ),
        "strategy": ("chat", {**chat, "max_tokens": 48, "strategy": {"name": "self_consistency", "n": 4}}, "whole"),
        "structured": (
            "chat",
            {
                "messages": [{"role": "user", "content": "Describe a person as JSON."}],
                "max_tokens": 40,
                "return_entropy": True,
                "response_format": {"type": "json_schema", "json_schema": {"name": "p", "schema": SCHEMA}},
            },
            "whole",
        ),
        "long": ("completions", {"prompt": long_prompt, "max_tokens": 8}, "whole"),
    }


class Soak:
    def __init__(self, server: ServerProcess, minutes: float, long_prompt: str):
        self.server = server
        self.client = openai.AsyncOpenAI(base_url=f"{server.url}/v1", api_key="none", max_retries=0, timeout=600)
        self.kinds = kinds(long_prompt)
        self.started = time.monotonic()
        self.deadline = self.started + minutes * 60
        self.latencies: dict[tuple[int, str], list[float]] = defaultdict(list)  # (window, kind) -> seconds
        self.errors: dict[str, list[str]] = defaultdict(list)
        self.samples: list[dict] = []

    async def call(self, kind: str) -> None:
        endpoint, fields, reading = self.kinds[kind]
        fields = dict(fields)
        extra = {
            k: fields.pop(k) for k in ("typical_p", "adaptive_temperature", "return_entropy", "strategy") if k in fields
        }
        create = self.client.completions.create if endpoint == "completions" else self.client.chat.completions.create
        started = time.monotonic()
        try:
            reply = await create(model=MODEL, extra_body=extra or None, **fields)
            if reading == "whole":
                if not reply.choices or reply.usage.completion_tokens < 1:
                    raise RuntimeError(f"an empty reply: {reply}")
            else:
                num_chunks = 0
                async for _ in reply:
                    num_chunks += 1
                    if reading == "abandon" and num_chunks == 3:
                        await reply.close()
                        break
        except Exception as error:  # every failure is counted and shown, none stops the soak
            self.errors[kind].append(f"{type(error).__name__}: {str(error)[:200]}")
            return
        window = int((started - self.started) // WINDOW_S)
        self.latencies[(window, kind)].append(time.monotonic() - started)

    async def client_loop(self, offset: int) -> None:
        names = list(self.kinds)
        turn = offset
        while time.monotonic() < self.deadline:
            await self.call(names[turn % len(names)])
            turn += 1

    async def bursts(self, size: int, every_s: float) -> None:
        while time.monotonic() + every_s < self.deadline:
            await asyncio.sleep(every_s)
            prompts = [f"{STORY} (line {i})" for i in range(size)]
            started = time.monotonic()
            replies = await asyncio.gather(
                *(
                    self.client.completions.create(model=MODEL, prompt=p, max_tokens=24, seed=i)
                    for i, p in enumerate(prompts)
                ),
                return_exceptions=True,
            )
            for reply in replies:
                if isinstance(reply, Exception):
                    self.errors["burst"].append(f"{type(reply).__name__}: {str(reply)[:200]}")
            window = int((started - self.started) // WINDOW_S)
            self.latencies[(window, "burst")].append(time.monotonic() - started)

    async def sample_every_minute(self) -> None:
        while True:
            self.samples.append(await asyncio.to_thread(self.sample))
            if time.monotonic() >= self.deadline:
                return
            await asyncio.sleep(min(60, max(0.0, self.deadline - time.monotonic())))

    def sample(self) -> dict:
        root = psutil.Process(self.server.process.pid)
        by_role: dict[str, dict] = defaultdict(lambda: {"rss_gib": 0.0, "fds": 0})
        for process in [root, *root.children(recursive=True)]:
            try:
                entry = by_role[role(process)]
                entry["rss_gib"] += process.memory_info().rss / GIB
                entry["fds"] += process.num_fds()
            except psutil.NoSuchProcess:
                continue
        metrics = httpx.get(f"{self.server.url}/metrics", timeout=30).text
        return {
            "minute": round((time.monotonic() - self.started) / 60, 1),
            "processes": {name: {"rss_gib": round(v["rss_gib"], 3), "fds": v["fds"]} for name, v in by_role.items()},
            "entropy_store_keys": gauge(metrics, "entropy_serve_entropy_store_keys"),
            "requests_running": gauge(metrics, "entropy_serve_requests_running"),
        }

    async def run(self, clients: int, burst: int, burst_every_s: float) -> None:
        loops = [self.client_loop(i) for i in range(clients)]
        await asyncio.gather(self.sample_every_minute(), self.bursts(burst, burst_every_s), *loops)
        await asyncio.sleep(5)  # aborted streams' records and gauges settle
        self.samples.append({**await asyncio.to_thread(self.sample), "after_load": True})


def gauge(metrics: str, name: str) -> float | None:
    found = re.search(rf"^{name} ([0-9.e+-]+)$", metrics, re.MULTILINE)
    return float(found.group(1)) if found else None


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def latency_rows(latencies: dict[tuple[int, str], list[float]]) -> list[dict]:
    rows = []
    for (window, kind), values in sorted(latencies.items()):
        rows.append(
            {
                "minutes": f"{window * 5}-{window * 5 + 5}",
                "kind": kind,
                "count": len(values),
                "p50_s": round(statistics.median(values), 2),
                "p95_s": round(percentile(values, 0.95), 2),
            }
        )
    return rows


def markdown(rows: list[dict]) -> str:
    head = list(rows[0])
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    lines += ["| " + " | ".join(str(row[k]) for k in head) + " |" for row in rows]
    return "\n".join(lines)


def resource_rows(samples: list[dict]) -> list[dict]:
    rows = []
    for sample in samples:
        row = {"minute": "after load" if sample.get("after_load") else sample["minute"]}
        for name, values in sorted(sample["processes"].items()):
            short = name.split(" (")[0]
            row[f"{short} RSS GiB"] = values["rss_gib"]
            row[f"{short} fds"] = values["fds"]
        row["store keys"] = sample["entropy_store_keys"]
        row["running"] = sample["requests_running"]
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=30)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--burst", type=int, default=16)
    parser.add_argument("--burst-every-s", type=float, default=120)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/soak"))
    args, server_flags = parser.parse_known_args()

    from transformers import AutoTokenizer

    from entropy_serve.model_store import prepare_default_model

    tokenizer = AutoTokenizer.from_pretrained(prepare_default_model())
    long_prompt = " ".join(["The tide came in and the tide went out."] * 400)
    long_prompt = tokenizer.decode(tokenizer.encode(long_prompt)[:3000])
    with ServerProcess("--max-model-len", "4096", *server_flags, kv_cache_gib=None) as server:
        soak = Soak(server, args.minutes, long_prompt)
        asyncio.run(soak.run(args.clients, args.burst, args.burst_every_s))
        log_tail = server.log()[-3000:]
    latency = latency_rows(soak.latencies)
    resources = resource_rows(soak.samples)
    errors = {kind: {"count": len(messages), "first": messages[:3]} for kind, messages in soak.errors.items()}
    args.out.mkdir(parents=True, exist_ok=True)
    report = {
        "minutes": args.minutes,
        "clients": args.clients,
        "server_flags": server_flags,
        "errors": errors,
        "resources": soak.samples,
        "latency": latency,
    }
    (args.out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    table = (
        f"errors: {sum(e['count'] for e in errors.values())} {json.dumps(errors) if errors else ''}\n\n"
        f"{markdown(resources)}\n\n{markdown(latency)}\n"
    )
    (args.out / "table.md").write_text(table)
    print(table)
    if errors:
        print(f"server log tail:\n{log_tail}", file=sys.stderr)


if __name__ == "__main__":
    main()
