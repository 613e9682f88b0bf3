"""Tasks with verifiable answers, shared by probes, strategies and the trainer.

`arithmetic.py` generates seeded problems across difficulty levels; `jsonl.py` loads
question/answer files in the common math formats; `answers.py` extracts a final answer
from a completion and decides whether two answers are equivalent. All pure functions.
"""
