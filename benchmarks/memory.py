"""Where a server's memory goes: resident and proportional set size (RSS, PSS) of each of
its processes (the HTTP server, vLLM's engine core, its worker), once it has answered a
few requests, with the KV-cache budget it got (from `/v1/models`).

PSS splits shared pages (the model's weights mapped read-only, PyTorch's libraries)
between the processes that map them, so PSS adds up to what the server really holds.

    python benchmarks/memory.py [server flags, e.g. --max-model-len 8192 --kv-cache-gib 4]
"""

from __future__ import annotations

import json
import sys

import httpx
import psutil

from entropy_serve.server.process import ServerProcess

GIB = 1 << 30


def role(process: psutil.Process) -> str:
    command = " ".join(process.cmdline())
    if "entropy_serve" in command and "serve" in command:
        return "server (HTTP, tokenizer, strategies)"
    name = process.name()
    if "resource_tracker" in command:
        return "multiprocessing's resource tracker"
    if "EngineCore" in name or "EngineCore" in command:
        return "engine core (scheduler)"
    if "Worker" in name or "worker" in command.lower():
        return "engine worker (model, KV cache)"
    return f"other ({name})"


def footprint(pid: int) -> list[dict]:
    root = psutil.Process(pid)
    rows = []
    for process in [root, *root.children(recursive=True)]:
        try:
            info = process.memory_full_info()
        except psutil.NoSuchProcess:
            continue
        rows.append(
            {
                "pid": process.pid,
                "name": process.name(),
                "role": role(process),
                "rss_gib": round(info.rss / GIB, 2),
                "pss_gib": round(info.pss / GIB, 2),
            }
        )
    return rows


def main() -> None:
    flags = sys.argv[1:] or ["--max-model-len", "8192"]
    with ServerProcess(*flags, kv_cache_gib=None) as server:
        model = httpx.get(f"{server.url}/v1/models").json()["data"][0]
        for i in range(8):
            httpx.post(
                f"{server.url}/v1/completions",
                json={
                    "model": model["id"],
                    "prompt": f"Count to {i}:",
                    "max_tokens": 32,
                    "return_entropy": True,
                    "typical_p": 0.9,
                },
                timeout=120,
            ).raise_for_status()
        rows = footprint(server.process.pid)
    report = {
        "flags": flags,
        "engine": model["engine"],
        "processes": rows,
        "total_rss_gib": round(sum(r["rss_gib"] for r in rows), 2),
        "total_pss_gib": round(sum(r["pss_gib"] for r in rows), 2),
    }
    print(json.dumps(report, indent=2))
    print("\n| process | role | RSS GiB | PSS GiB |\n| --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['name']} | {r['role']} | {r['rss_gib']} | {r['pss_gib']} |")
    print(f"| all | | {report['total_rss_gib']} | {report['total_pss_gib']} |")


if __name__ == "__main__":
    main()
