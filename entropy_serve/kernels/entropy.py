"""Per-row logsumexp, entropy and varentropy of softmax(logits), in one pass.

The Triton kernel reads each row of `[batch, vocab]` logits once, in blocks, keeping an
online (running-max) accumulation of, with m the running max and z = x - m:
    a = sum e^z,   b = sum e^z z,   c = sum e^z z^2
rescaled when m grows by d = m_old - m_new (<= 0):
    a' = e^d a,   b' = e^d (b + d a),   c' = e^d (c + 2 d b + d^2 a)
and finishes with
    logsumexp = m + ln a,   H = ln a - b / a,   V = c / a - (b / a)^2.
-inf entries (masked tokens) contribute nothing. It is used for CUDA tensors; elsewhere
(and as the test reference) `reference_entropy_stats` computes the same in torch.
Under TRITON_INTERPRET=1 the kernel also runs on CPU tensors, which is how CI tests it.
"""

from __future__ import annotations

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only installs may lack Triton: the reference is used there
    triton = None


def reference_entropy_stats(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(logsumexp, entropy, varentropy), each [batch] fp32, in nats.

    Computed in float64, in z - max space (z - max is exact; subtracting a logsumexp
    rounded at the scale of the logits is not: at 1e4 one float32 step is ~1e-3), with
    the varentropy as the centred sum p (s - H)^2 (no cancellation between two large
    terms): a uniform row of 1e4 gives H = ln V and varentropy 0."""
    logits = logits.double()
    row_max = logits.amax(dim=-1, keepdim=True)
    shifted = logits - row_max
    log_total = torch.logsumexp(shifted, dim=-1, keepdim=True)
    logprobs = shifted - log_total
    probs = logprobs.exp()
    live = probs > 0
    entropy = -torch.where(live, probs * logprobs, 0.0).sum(-1, keepdim=True)
    varentropy = torch.where(live, probs * (logprobs + entropy).square(), 0.0).sum(-1)
    lse = (row_max + log_total).squeeze(-1)
    return lse.float(), entropy.squeeze(-1).clamp_min(0.0).float() + 0.0, varentropy.float()


if triton is not None:

    @triton.jit
    def _entropy_stats_kernel(
        logits_ptr, lse_ptr, entropy_ptr, varentropy_ptr, vocab_size, row_stride, BLOCK: tl.constexpr
    ):
        row = tl.program_id(0)
        row_ptr = logits_ptr + row.to(tl.int64) * row_stride
        m = tl.full([], float("-inf"), tl.float32)
        a = tl.zeros([], tl.float32)
        b = tl.zeros([], tl.float32)
        c = tl.zeros([], tl.float32)
        for start in range(0, vocab_size, BLOCK):
            offsets = start + tl.arange(0, BLOCK)
            x = tl.load(row_ptr + offsets, mask=offsets < vocab_size, other=float("-inf")).to(tl.float32)
            new_m = tl.maximum(m, tl.max(x, axis=0))
            # Rescale the running sums to the new max (nothing to rescale while m is -inf).
            empty = m == float("-inf")
            d = tl.where(empty, 0.0, m - new_m)
            scale = tl.where(empty, 0.0, tl.exp(d))
            c = scale * (c + 2.0 * d * b + d * d * a)
            b = scale * (b + d * a)
            a = scale * a
            live = x > float("-inf")
            z = tl.where(live, x - new_m, 0.0)
            e = tl.where(live, tl.exp(z), 0.0)
            a += tl.sum(e, axis=0)
            b += tl.sum(e * z, axis=0)
            c += tl.sum(e * z * z, axis=0)
            m = new_m
        log_a = tl.log(a)
        mean_z = b / a
        tl.store(lse_ptr + row, m + log_a)
        tl.store(entropy_ptr + row, tl.maximum(log_a - mean_z, 0.0))
        tl.store(varentropy_ptr + row, tl.maximum(c / a - mean_z * mean_z, 0.0))


def fused_entropy_stats(logits: torch.Tensor, block: int = 4096) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The Triton kernel: (logsumexp, entropy, varentropy), each [batch] fp32."""
    if triton is None:
        raise RuntimeError("Triton is not installed")
    if logits.stride(-1) != 1:
        logits = logits.contiguous()
    batch, vocab = logits.shape
    lse, entropy, varentropy = (torch.empty(batch, dtype=torch.float32, device=logits.device) for _ in range(3))
    _entropy_stats_kernel[(batch,)](logits, lse, entropy, varentropy, vocab, logits.stride(0), BLOCK=block)
    return lse, entropy, varentropy


def entropy_stats(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The kernel on CUDA, the torch reference elsewhere."""
    if logits.is_cuda and triton is not None:
        return fused_entropy_stats(logits)
    return reference_entropy_stats(logits)
