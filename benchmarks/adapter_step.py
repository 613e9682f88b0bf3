"""Per-step cost of our engine adapter, by part, at batch sizes 1-256: what one engine
step spends on our rows beyond vLLM's own sampling.

Parts, each timed alone on the same [batch, vocab] logits (median of --repeats):
- `entropy`: the model entropy over the full vocabulary (what return_entropy costs);
- `chain_neutral`: the sampler chain with no filter (return_entropy on a sampled row:
  model entropy, temperature, sampled entropy);
- `chain_all`: every sampler on (hapo temperature, typical_p 0.9);
- `rows_all`: the adapter's whole step for every sampler on (rows.process_rows: the
  chain, the per-row records, a real publish over the entropy channel's ZeroMQ socket);
- `rows_entropy_greedy`: the whole step for greedy rows with return_entropy.
The engine step it rides on takes (batch / tokens-per-second of the engine) seconds:
compare with `benchmarks/throughput.py`'s tokens/s on the same host.

    python benchmarks/adapter_step.py [--batches 1,4,16,64,256] [--vocab 49152] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile

import torch
from sampler_step import median_time_s  # benchmarks/, this script's folder

from entropy_serve.samplers.chain import HAPO, EntropyProfile, RowParams, SamplerParams, apply_chain
from entropy_serve.samplers.entropy import entropy
from entropy_serve.server.engine.adapters.channel import CHANNEL_ENV, EntropyPublisher
from entropy_serve.server.engine.adapters.rows import RowPlan, process_rows
from entropy_serve.server.engine.adapters.spec import RowSpec

PROFILE = EntropyProfile(log_entropy_pivot=0.5, log_entropy_spread=1.0)
ALL_ON = SamplerParams(temperature=0.8, method=HAPO, hapo_tau=0.5, typical_p=0.9)


def median_ms(fn, repeats: int) -> float:
    return round(median_time_s(fn, repeats) * 1e3, 3)


def step_parts(batch: int, vocab: int, repeats: int, publisher: EntropyPublisher) -> dict:
    logits = torch.randn(batch, vocab, generator=torch.Generator().manual_seed(batch)).exp_().mul_(3)  # LM-like tails
    rows = list(range(batch))
    shaped = RowPlan(rows, [RowSpec(key=f"r{i}", shape=True, params=ALL_ON) for i in rows], torch.device("cpu"))
    greedy = RowPlan(rows, [RowSpec(key=f"r{i}", shape=False) for i in rows], torch.device("cpu"))
    positions = dict.fromkeys(rows, 7)
    neutral = RowParams.uniform(batch, temperature=0.8)
    all_on = RowParams.stack([ALL_ON] * batch)
    return {
        "batch": batch,
        "entropy_ms": median_ms(lambda: entropy(logits), repeats),
        "chain_neutral_ms": median_ms(lambda: apply_chain(logits.clone(), neutral, PROFILE), repeats),
        "chain_all_ms": median_ms(lambda: apply_chain(logits.clone(), all_on, PROFILE), repeats),
        "rows_all_ms": median_ms(lambda: process_rows(logits.clone(), shaped, positions, publisher, PROFILE), repeats),
        "rows_entropy_greedy_ms": median_ms(
            lambda: process_rows(logits.clone(), greedy, positions, publisher, PROFILE), repeats
        ),
        "clone_ms": median_ms(lambda: logits.clone(), repeats),  # included in the three above it
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", default="1,4,16,64,256")
    parser.add_argument("--vocab", type=int, default=49152)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's own)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    import zmq

    folder = tempfile.mkdtemp(prefix="adapter-step-")
    address = f"ipc://{folder}/entropy.sock"
    sink = zmq.Context.instance().socket(zmq.PULL)
    sink.bind(address)
    os.environ[CHANNEL_ENV] = address
    publisher = EntropyPublisher(rank=lambda: 0)
    rows = []
    for batch in map(int, args.batches.split(",")):
        rows.append(step_parts(batch, args.vocab, args.repeats, publisher))
        while sink.poll(0):
            sink.recv()
    print(json.dumps({"vocab": args.vocab, "threads": torch.get_num_threads(), "rows": rows}, indent=2))
    names = [k for k in rows[0] if k.endswith("_ms")]
    print("\n| batch | " + " | ".join(n.removesuffix("_ms") + " ms" for n in names) + " |")
    print("| --- " * (len(names) + 1) + "|")
    for r in rows:
        print(f"| {r['batch']} | " + " | ".join(str(r[n]) for n in names) + " |")


if __name__ == "__main__":
    main()
