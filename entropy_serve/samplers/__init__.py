"""Sampler math: pure batched functions over [batch, vocab] logits; no vLLM, no HTTP."""
