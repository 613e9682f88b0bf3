"""The README's Python examples, run in order against a server: each prints exactly what
the README shows after it (the ```text block that follows).

The README shows what a bfloat16 engine samples (`dtype auto` on a CPU with native bf16,
and on GPUs); on a CPU without it `auto` computes in float32, whose logits differ in the
last bits, so seeded samples differ after a few tokens. The server here is pinned to
the README's dtype, so the check holds on every host."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import pytest
from conftest import API_KEY

from entropy_serve.server.process import ServerProcess

pytestmark = pytest.mark.e2e  # drives a real server process

README = Path(__file__).resolve().parents[1] / "README.md"
EXAMPLE = re.compile(r"```python\n(.*?)```\n\n```text\n(.*?)```", re.DOTALL)
README_CLIENT = 'OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="unused")'


def examples() -> list[tuple[str, str]]:
    found = EXAMPLE.findall(README.read_text())
    assert len(found) == README.read_text().count("```python"), "every Python example is followed by its output"
    return found


README_DTYPE = "bfloat16"


@pytest.fixture(scope="module")
def server():
    with ServerProcess("--api-key", API_KEY, "--max-model-len", "2048", "--dtype", README_DTYPE, kv_cache_gib=1) as process:
        yield process


def test_readme_examples_print_what_the_readme_shows(server):
    namespace: dict = {}
    blocks = examples()
    assert README_CLIENT in blocks[0][0]
    for code, shown in blocks:
        code = code.replace(README_CLIENT, f'OpenAI(base_url="{server.url}/v1", api_key="{API_KEY}")')
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            exec(compile(code, str(README), "exec"), namespace)  # later examples reuse `client`
        assert printed.getvalue() == shown, code
