"""The engine side: vLLM's engine built, started, watched and stopped (holder.py), the
probe's pooling engines (feature_engines.py), grammars compiled before their requests
(grammar_warmup.py), and, inside the engine's processes, our logits processors and the
channel that brings entropies back (adapters/)."""
