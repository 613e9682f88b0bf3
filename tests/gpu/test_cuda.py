"""The GPU lane (`make test-gpu`, scripts/gpu_check.sh): our CUDA code paths on a real GPU.

Needs CUDA PyTorch, Triton and transformers only (no vLLM: the lent GPU machines have
none), and runs without the suite's conftest (`--noconftest`: it starts servers).
1. the Triton entropy kernel against float64 on real vocabulary sizes and adversarial rows;
2. the sampler chain on CUDA tensors against transformers' warpers on the same rows;
3. the engine adapters' row logic (rows.py, shared by the V1 and model-runner-v2 adapters)
   on CUDA tensors against its CPU result;
4. the trainer's losses on CUDA, in float32 and bfloat16, against float64 on the CPU, and
   the entropy-RL methods' token pieces (STEER, HAPO, SIREN).

The device is ENTROPY_SERVE_TEST_DEVICE (default cuda). tests/test_gpu_lane.py runs the
lane on the CPU (with Triton's interpreter) in every CI run, so its code is known to
work before a GPU is lent; on the CPU it checks the logic, not the CUDA kernels.
"""

from __future__ import annotations

import math
import os

import pytest
import torch

from entropy_serve.kernels.entropy import fused_entropy_stats, reference_entropy_stats
from entropy_serve.samplers.chain import HAPO, EntropyProfile, RowParams, SamplerParams, apply_chain
from entropy_serve.server.engine.adapters.rows import RowPlan, process_rows
from entropy_serve.server.engine.adapters.spec import RowSpec
from entropy_serve.trainer import token_methods
from entropy_serve.trainer.entropy_control import clip_cov_loss, kl_cov_loss, ppo_loss

pytestmark = pytest.mark.gpu

DEVICE = torch.device(os.environ.get("ENTROPY_SERVE_TEST_DEVICE", "cuda"))
# SmolLM2 / Llama-3 / Qwen2 vocabularies; the CPU dry run keeps to the first.
VOCABS = (49152, 128256, 151936) if DEVICE.type == "cuda" else (49152,)
NEG_INF = float("-inf")


def test_the_device_is_there():
    """Fails, never skips: a lane run on a machine without its GPU is a failed run."""
    if DEVICE.type == "cuda":
        assert torch.cuda.is_available(), "ENTROPY_SERVE_TEST_DEVICE=cuda but torch sees no CUDA device"
    torch.ones(1, device=DEVICE)


def adversarial_rows(vocab: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """[rows, vocab] float32 cases, on the CPU."""
    one_hot = torch.full((2, vocab), -40.0)
    one_hot[:, 7] = 40.0
    return {
        "random": torch.randn(4, vocab, generator=generator) * 4,
        "lm_like": torch.randn(4, vocab, generator=generator).exp() * 3,  # a heavy right tail, as LM logits have
        "one_hot": one_hot,
        "uniform": torch.zeros(2, vocab),
        "masked_70%": torch.randn(3, vocab, generator=generator).masked_fill(
            torch.rand(3, vocab, generator=generator) < 0.7, NEG_INF
        ),
        "one_survivor": torch.full((1, vocab), NEG_INF).index_fill_(1, torch.tensor([vocab - 1]), 2.0),
        "huge_logits": torch.randn(2, vocab, generator=generator) * 300,
        "offset_1e4": 1e4 + torch.randn(2, vocab, generator=generator) * 3,
        "uniform_1e4": torch.full((1, vocab), 1e4),
    }


@pytest.mark.parametrize("vocab", VOCABS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_triton_entropy_kernel_matches_float64(vocab, dtype):
    generator = torch.Generator().manual_seed(vocab)
    for name, rows in adversarial_rows(vocab, generator).items():
        if dtype != torch.float32 and name in ("huge_logits", "offset_1e4", "uniform_1e4"):
            continue  # beyond the half-precision range or resolution: no meaningful input there
        logits = rows.to(dtype)
        ours = fused_entropy_stats(logits.to(DEVICE))
        expected = reference_entropy_stats(logits)  # float64 on the CPU, of the same rounded inputs
        for label, a, b in zip(("lse", "entropy", "varentropy"), ours, expected):
            tolerance = 1e-4 * max(1.0, float(b.abs().max()))
            torch.testing.assert_close(a.cpu(), b, atol=tolerance, rtol=1e-4, msg=f"{name} {label} {dtype}")
        assert (ours[1] >= 0).all() and (ours[1] <= math.log(vocab) + 1e-4).all(), name
    # A strided view (every other row of a wider buffer) reads the right elements.
    wide = torch.randn(6, vocab + 64, generator=generator)
    view = wide[::2, :vocab]
    torch.testing.assert_close(
        fused_entropy_stats(view.to(DEVICE))[1].cpu(), reference_entropy_stats(view)[1], atol=1e-4, rtol=1e-4
    )


WARPER_CHAINS = [
    dict(temperature=0.7, top_k=20, top_p=0.9, min_p=0.05, typical_p=0.8),
    dict(temperature=1.0, typical_p=0.2),
    dict(temperature=1.3, top_p=0.5),
    dict(temperature=0.5, min_p=0.1, top_k=3),
]


@pytest.mark.parametrize("chosen", WARPER_CHAINS)
def test_sampler_chain_on_device_matches_transformers(chosen):
    from transformers.generation.logits_process import (
        LogitsProcessorList,
        MinPLogitsWarper,
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
        TypicalLogitsWarper,
    )

    generator = torch.Generator().manual_seed(1)
    logits = torch.cat(
        [torch.randn(6, VOCABS[0], generator=generator) * 3, adversarial_rows(VOCABS[0], generator)["masked_70%"]]
    )
    ours = logits.clone().to(DEVICE)  # a copy on the CPU too: the chain works in place
    apply_chain(ours, RowParams.uniform(logits.shape[0], DEVICE, **chosen))
    # transformers applies the same warpers in the same order (temperature first), on the CPU.
    warpers = [TemperatureLogitsWarper(chosen["temperature"])]
    warpers += [TopKLogitsWarper(chosen["top_k"])] if "top_k" in chosen else []
    warpers += [TopPLogitsWarper(chosen["top_p"])] if "top_p" in chosen else []
    warpers += [MinPLogitsWarper(chosen["min_p"])] if "min_p" in chosen else []
    warpers += [TypicalLogitsWarper(chosen["typical_p"])] if "typical_p" in chosen else []
    theirs = LogitsProcessorList(warpers)(None, logits.clone())
    assert torch.equal(ours.cpu() == NEG_INF, theirs == NEG_INF), "the kept sets differ"
    kept = theirs > NEG_INF
    torch.testing.assert_close(ours.cpu()[kept], theirs[kept], atol=1e-5, rtol=1e-5)


class Collector:
    """A publisher that keeps what the adapter would send to the server."""

    def __init__(self) -> None:
        self.records: list = []

    def publish(self, records: list) -> None:
        self.records.extend(records)


def run_rows(logits: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, list]:
    """Rows 0, 2, 3 ours (0 and 3 shaped, 2 greedy and measured), row 1 another request's."""
    specs = [
        RowSpec(key="a", shape=True, params=SamplerParams(temperature=0.8, typical_p=0.9, method=HAPO, hapo_tau=0.5)),
        RowSpec(key="b", shape=False, params=SamplerParams()),
        RowSpec(key="c", shape=True, params=SamplerParams(temperature=1.2, top_k=50, min_p=0.02)),
    ]
    rows = [0, 2, 3]
    plan = RowPlan(rows, specs, device)
    collector = Collector()
    profile = EntropyProfile(log_entropy_pivot=0.5, log_entropy_spread=1.0)
    out = process_rows(logits.clone().to(device), plan, {0: 4, 2: 0, 3: 9}, collector, profile)
    return out.cpu(), collector.records


def test_adapter_rows_on_device_equal_their_cpu_result():
    logits = torch.randn(4, VOCABS[0], generator=torch.Generator().manual_seed(2)) * 3
    on_device, device_records = run_rows(logits, DEVICE)
    on_cpu, cpu_records = run_rows(logits, torch.device("cpu"))
    assert torch.equal(on_device[1], logits[1]), "another request's row is never touched"
    assert torch.equal(on_device == NEG_INF, on_cpu == NEG_INF)
    kept = on_cpu > NEG_INF
    torch.testing.assert_close(on_device[kept], on_cpu[kept], atol=1e-5, rtol=1e-5)
    assert [r[:2] for r in device_records] == [r[:2] for r in cpu_records] == [("a", 4), ("c", 9), ("b", 0)]
    for ours, theirs in zip(device_records, cpu_records):
        assert ours[2:] == pytest.approx(theirs[2:], abs=1e-4)


def loss_inputs(dtype: torch.dtype, device: torch.device) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(3)
    batch, tokens = 8, 300
    log_probs = -torch.rand(batch, tokens, generator=generator) * 3
    return dict(
        log_probs=log_probs.to(device, dtype),
        old_log_probs=(log_probs + torch.randn(batch, tokens, generator=generator) * 0.1).to(device, dtype),
        advantages=torch.randn(batch, 1, generator=generator).expand(batch, tokens).contiguous().to(device, dtype),
        mask=(torch.rand(batch, tokens, generator=generator) < 0.9).to(device, dtype),
    )


@pytest.mark.parametrize("dtype, tolerance", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
def test_trainer_losses_on_device_match_float64(dtype, tolerance):
    here, reference = loss_inputs(dtype, DEVICE), loss_inputs(torch.float64, torch.device("cpu"))
    losses = {
        "ppo": lambda x: ppo_loss(**x, eps_low=0.2, eps_high=0.28),
        # Token selection depends on ranking covariances, which low precision can reorder:
        # the selected tokens are compared as sets in float32 only.
        "kl_cov": lambda x: kl_cov_loss(**x, fraction=0.02),
        "clip_cov": lambda x: clip_cov_loss(
            **x, generator=torch.Generator().manual_seed(0), ratio=0.02, lower=-1e9, upper=1e9
        ),
    }
    for name, loss in losses.items():
        ours, expected = loss(here), loss(reference)
        assert ours.loss.device.type == DEVICE.type and ours.loss.dtype == dtype, name
        if dtype == torch.float32:
            assert torch.equal(ours.selected.cpu(), expected.selected), name
        same = ours.selected.cpu() == expected.selected
        torch.testing.assert_close(
            ours.loss.cpu().double()[same], expected.loss[same], atol=tolerance, rtol=tolerance, msg=name
        )
        assert ours.clip_fraction == pytest.approx(expected.clip_fraction, abs=0.02), name


def test_entropy_rl_token_methods_on_device_match_float64():
    """STEER, HAPO and SIREN's pieces on the device in float32 against float64 on the CPU
    (their thresholds rank tokens, which bfloat16 can reorder: float32 here, and the
    bfloat16 runs are checked for shape, device and finiteness)."""
    generator = torch.Generator().manual_seed(5)
    entropies = torch.rand(8, 300, generator=generator) * 3 + 0.01  # loss_inputs' shape
    logits = torch.randn(8, 300, 512, generator=generator) * 3
    for dtype in (torch.float32, torch.bfloat16):
        here, reference = loss_inputs(dtype, DEVICE), loss_inputs(torch.float64, torch.device("cpu"))
        here["entropies"], reference["entropies"] = entropies.to(DEVICE, dtype), entropies.double()
        results = {
            "steer": (token_methods.steer_loss(**here).loss, token_methods.steer_loss(**reference).loss),
            "hapo": (token_methods.hapo_loss(**here).loss, token_methods.hapo_loss(**reference).loss),
            "nucleus": (
                token_methods.nucleus_entropy(logits.to(DEVICE, dtype), 0.8),
                token_methods.nucleus_entropy(logits.double(), 0.8),
            ),
        }
        for name, (ours, expected) in results.items():
            assert ours.device.type == DEVICE.type and torch.isfinite(ours).all(), name
            if dtype == torch.float32:
                torch.testing.assert_close(ours.cpu().double(), expected.double(), atol=1e-4, rtol=1e-4, msg=name)
        peak = token_methods.siren_entropy(results["nucleus"][0], here["mask"])
        assert peak.device.type == DEVICE.type and torch.isfinite(peak)
