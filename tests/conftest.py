"""Shared fixtures: one real server on the embedded model for the whole test session."""

from __future__ import annotations

import os
import tempfile

import openai
import pytest

from entropy_serve import host
from entropy_serve.server.process import ServerProcess

# Engines claim their cores host-wide (entropy_serve/host.py). The suite's shared server
# lives through the tests that start engines of their own (one test at a time, so the
# shared one is idle meanwhile): every engine the suite starts is told its cores, all of
# them, instead of claiming them, and claims go to a folder of the suite's own, never
# touching a user's servers on the same host. tests/test_e2e_host.py checks the claiming.
os.environ[host.BIND_ENV] = host.cpu_list_text(host.usable_cpus())
os.environ[host.CLAIMS_DIR_ENV] = tempfile.mkdtemp(prefix="entropy-serve-test-cores-")

API_KEY = "test-key"
MODEL = "SmolLM2-135M-Instruct"


@pytest.fixture(scope="session")
def server():
    """The shared server: every test that needs no server of its own uses this one."""
    with ServerProcess(
        "--api-key",
        API_KEY,
        "--max-model-len",
        "8192",
        "--max-n",
        "8",
        "--enable-auto-tool-choice",
        "--tool-call-parser",
        "hermes",
    ) as process:
        yield process


@pytest.fixture(scope="session")
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=API_KEY, max_retries=0, timeout=300)


@pytest.fixture
def async_client(server) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{server.url}/v1", api_key=API_KEY, max_retries=0, timeout=300)


@pytest.fixture(scope="session")
def tokenizer():
    from transformers import AutoTokenizer

    from entropy_serve.model_store import prepare_default_model

    return AutoTokenizer.from_pretrained(prepare_default_model())
