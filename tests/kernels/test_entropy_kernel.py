"""The fused Triton kernel against the torch reference, under Triton's CPU interpreter.

TRITON_INTERPRET must be set before the kernel is decorated, so the kernel runs in a
fresh interpreter process (the rest of the suite has imported Triton already).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent(
    """
    import math, torch
    from entropy_serve.kernels.entropy import fused_entropy_stats, reference_entropy_stats

    g = torch.Generator().manual_seed(0)
    cases = {
        "random": torch.randn(5, 1000, generator=g) * 4,
        "wide": torch.randn(2, 49152, generator=g) * 2,      # the default model's vocabulary
        "one_hot": torch.full((2, 300), -40.0).index_fill_(1, torch.tensor([7]), 40.0),
        "uniform": torch.zeros(3, 777),
        "masked": torch.randn(4, 513, generator=g).masked_fill(torch.rand(4, 513, generator=g) < 0.7, -math.inf),
        "huge_logits": torch.randn(3, 600, generator=g) * 300,
        "strided": torch.randn(6, 800, generator=g)[::2, :700],
        # Logits around 1e4, where one fp32 step is ~1e-3: all work is relative to the max.
        "offset_1e4": 1e4 + torch.randn(1, 1000, generator=torch.Generator().manual_seed(12)) * 3,
        "uniform_1e4": torch.full((1, 49152), 1e4),
    }
    for name, logits in cases.items():
        ours = fused_entropy_stats(logits, block=128)
        ref = reference_entropy_stats(logits)
        for label, a, b in zip(("lse", "entropy", "varentropy"), ours, ref):
            torch.testing.assert_close(a, b, atol=2e-4, rtol=2e-4, msg=f"{name} {label}")
        assert (ours[1] >= 0).all() and (ours[1] <= math.log(logits.shape[-1]) + 1e-4).all(), name
    uniform = fused_entropy_stats(cases["uniform_1e4"], block=4096)
    assert abs(uniform[1].item() - math.log(49152)) < 1e-5 and uniform[2].item() == 0.0, uniform
    print("ok", len(cases))
    """
)


def test_fused_kernel_matches_reference_under_interpreter():
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    done = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().endswith("ok 9")
