"""Start and stop real `entropy-serve serve` processes (end-to-end tests, benchmarks, and
each Ray Serve replica's server: entropy_serve/replicas/)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from entropy_serve import host

STARTUP_TIMEOUT_S = 300


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ServerProcess:
    """One server on a free port; its combined output goes to a temporary log file.

    As a context manager (the one way tests and benchmarks run servers): `with
    ServerProcess(*flags) as server:` waits until it is ready and terminates it on the
    way out, whatever happened inside."""

    def __init__(
        self, *args: str, kv_cache_gib: int | None = 2, env: dict[str, str] | None = None, host_ip: str = "127.0.0.1"
    ):
        """`kv_cache_gib`: the engine's KV budget (None: the server's own default). Its files,
        batches and responses go to a database of its own unless `--database-url` is given.
        `host_ip`: the address it listens on (and is reached at)."""
        self.port = free_port()
        if "--database-url" not in args:
            state_dir = tempfile.mkdtemp(prefix="entropy-serve-state-")
            args = (*args, "--database-url", f"sqlite:///{state_dir}/state.sqlite3")
        args = (*args, "--host", host_ip)
        self.url = f"http://{host_ip}:{self.port}"
        self.log_path = Path(tempfile.mkstemp(prefix="entropy-serve-", suffix=".log")[1])
        env = {**os.environ, **(env or {})}
        env.pop(host.KV_CACHE_ENV, None)
        if kv_cache_gib is not None:
            env[host.KV_CACHE_ENV] = str(kv_cache_gib)
        command = [sys.executable, "-m", "entropy_serve", "serve", "--port", str(self.port), *args]
        self._log = self.log_path.open("w")
        self.process = subprocess.Popen(command, stdout=self._log, stderr=subprocess.STDOUT, env=env)

    def __enter__(self) -> ServerProcess:
        try:
            self.wait_until_ready()
        except BaseException:
            self.terminate()
            raise
        return self

    def __exit__(self, *_) -> None:
        self.terminate()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def health(self) -> httpx.Response | None:
        try:
            return httpx.get(f"{self.url}/health", timeout=2)
        except httpx.TransportError:
            return None

    def wait_until_listening(self) -> httpx.Response:
        return self._wait(lambda r: r is not None)

    def wait_until_ready(self) -> httpx.Response:
        return self._wait(lambda r: r is not None and r.status_code == 200)

    def _wait(self, done) -> httpx.Response:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}:\n{self.log()[-4000:]}")
            response = self.health()
            if done(response):
                return response
            time.sleep(0.1)
        raise TimeoutError(f"server not up in {STARTUP_TIMEOUT_S}s:\n{self.log()[-4000:]}")

    def terminate(self, timeout_s: float = 60) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()
        finally:
            self._log.close()
