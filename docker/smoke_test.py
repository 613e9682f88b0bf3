"""`make test-docker`: the CPU image and compose.yaml, proven on this machine.

Order: build the CPU image with `docker compose build` (a Debian base made with
debootstrap when no registry can be reached; the CA bundle and wheels pip needs handed
to the build, never baked in) -> report its size -> `docker compose up -d` the server
(with a small difficulty probe mounted, trained here first) -> answer requests through
the `openai` client against the container's port, covering every metric the dashboard
shows (entropy, adaptive temperature, a strategy, a routed request, an error, an abort)
-> Debian's Prometheus with the project's scrape config and alert rules (`promtool
check config` / `check rules`) scrapes the container -> every dashboard query and alert
rule evaluated through Prometheus's HTTP API (every dashboard query must return data)
-> `docker compose stop` drains (the container exits 0) -> `docker compose down`.
Timings and sizes are printed as JSON at the end. Needs root (dockerd), docker compose,
prometheus and promtool, debootstrap when no base image is given. Not part of `make test`.

    python docker/smoke_test.py [--base-image IMAGE] [--wheels DIR] [--ca-bundle FILE] [--keep]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import openai
import yaml

ROOT = Path(__file__).resolve().parent.parent
DOCKER = ROOT / "docker"
PROJECT = "entropy-serve-smoke"
DEBIAN_BASE = "entropy-serve-base:bookworm"
MODEL = "SmolLM2-135M-Instruct"
RATE_INTERVAL = "1m"  # what Grafana's $__rate_interval becomes here


def run(*command: str, env: dict | None = None, capture: bool = False) -> str:
    print("+", " ".join(command), flush=True)
    result = subprocess.run(
        command, env={**os.environ, **(env or {})}, cwd=ROOT, check=True, text=True, capture_output=capture
    )
    return result.stdout if capture else ""


def ensure_dockerd() -> None:
    if subprocess.run(["docker", "info"], capture_output=True).returncode == 0:
        return
    subprocess.Popen(["dockerd"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 60
    while subprocess.run(["docker", "info"], capture_output=True).returncode != 0:
        if time.monotonic() > deadline:
            sys.exit("dockerd did not start (it needs root)")
        time.sleep(1)


def debian_base_image() -> str:
    """A bookworm image with python3 and venv, from Debian's own packages (no registry needed)."""
    if subprocess.run(["docker", "image", "inspect", DEBIAN_BASE], capture_output=True).returncode == 0:
        return DEBIAN_BASE
    with tempfile.TemporaryDirectory() as rootfs:
        run(
            "debootstrap",
            "--variant=minbase",
            "--include=python3,python3-venv,ca-certificates",
            "bookworm",
            rootfs,
            "http://deb.debian.org/debian",
        )
        tar = subprocess.Popen(["tar", "-C", rootfs, "-c", "."], stdout=subprocess.PIPE)
        subprocess.run(["docker", "import", "-", DEBIAN_BASE], stdin=tar.stdout, check=True, capture_output=True)
        tar.wait()
    return DEBIAN_BASE


def pip_find_links() -> Path | None:
    """Where this machine's pip finds wheels PyPI lacks (the pinned CPU torch)."""
    found = subprocess.run(
        [sys.executable, "-m", "pip", "config", "get", "global.find-links"], capture_output=True, text=True
    )
    return Path(found.stdout.strip()) if found.returncode == 0 and found.stdout.strip() else None


def train_probe(data: Path) -> None:
    """A small difficulty probe (the same recipe as the probe's end-to-end test)."""
    if (data / "probe" / "probe.json").exists():
        return
    run(
        sys.executable,
        "-m",
        "entropy_serve",
        "train-probe",
        "--out",
        str(data / "probe"),
        "--problems",
        "36",
        "--samples",
        "4",
        "--max-tokens",
        "32",
        "--max-model-len",
        "1024",
        "--hard-below-accuracy",
        "0.25",
        "--hidden-units",
        "32",
        env={"ENTROPY_SERVE_KV_CACHE_GIB": "1"},
    )


def wait_healthy(url: str, timeout_s: float = 600) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return time.monotonic() - started
        except httpx.TransportError:
            pass
        time.sleep(1)
    run("docker", "compose", "-p", PROJECT, "logs", "--tail", "80")
    sys.exit(f"the container was not healthy in {timeout_s} s")


def traffic(url: str, api_key: str) -> None:
    """Requests that feed every series the dashboard shows."""
    client = openai.OpenAI(base_url=f"{url}/v1", api_key=api_key, max_retries=0, timeout=300)
    reply = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "What is 2 + 3?"}],
        max_tokens=16,
        seed=1,
        extra_body={"return_entropy": True},
    )
    entropy = reply.choices[0].model_extra["entropy"]
    assert len(entropy["model_entropy_nats"]) == reply.usage.completion_tokens > 0, entropy
    client.completions.create(
        model=MODEL,
        prompt="The sea is",
        max_tokens=16,
        temperature=0.8,
        extra_body={"typical_p": 0.9, "adaptive_temperature": {"method": "hapo"}},
    )
    client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "What is 4 + 5?"}],
        max_tokens=16,
        temperature=0.8,
        extra_body={"strategy": {"name": "entropy_fork", "trees": 2, "forks": 1, "branches": 1}},
    )
    client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "What is 6 + 7?"}],
        max_tokens=16,
        extra_body={"strategy": "difficulty"},
    )
    try:
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x"}], n=0)
    except openai.BadRequestError:
        pass
    else:
        raise AssertionError("n=0 was accepted")
    stream = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Tell me a long story."}],
        max_tokens=400,
        stream=True,
        extra_body={"ignore_eos": True},
    )
    next(iter(stream))
    stream.close()  # the client leaves: the server aborts the request


def prometheus_queries() -> tuple[list[str], list[str]]:
    dashboard = json.loads((DOCKER / "grafana/dashboards/entropy-serve.json").read_text())
    panels = [t["expr"].replace("$__rate_interval", RATE_INTERVAL) for p in dashboard["panels"] for t in p["targets"]]
    rules = [
        r["expr"] for g in yaml.safe_load((DOCKER / "prometheus/alerts.yml").read_text())["groups"] for r in g["rules"]
    ]
    return panels, rules


def check_with_prometheus(server_port: int, workdir: Path, url: str, api_key: str) -> dict:
    config = yaml.safe_load((DOCKER / "prometheus/prometheus.yml").read_text())
    config["rule_files"] = [str(DOCKER / "prometheus/alerts.yml")]
    config["scrape_configs"][0]["static_configs"] = [{"targets": [f"127.0.0.1:{server_port}"]}]
    config_path = workdir / "prometheus.yml"
    config_path.write_text(yaml.safe_dump(config))
    run("promtool", "check", "config", str(config_path))
    run("promtool", "check", "rules", str(DOCKER / "prometheus/alerts.yml"))
    port = 19090
    prometheus = subprocess.Popen(
        [
            "prometheus",
            f"--config.file={config_path}",
            f"--storage.tsdb.path={workdir / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    api = f"http://127.0.0.1:{port}/api/v1"
    try:
        deadline = time.monotonic() + 60
        while not _scraped(api):
            if time.monotonic() > deadline:
                sys.exit("Prometheus never scraped the container")
            time.sleep(1)
        traffic(url, api_key)
        time.sleep(20)  # a few scrapes after the traffic: rate() sees the increase
        panels, rules = prometheus_queries()
        empty = [q for q in panels if not _query(api, q)]
        for rule in rules:
            _query(api, rule)  # evaluates (an alert that is not firing is empty)
        if empty:
            sys.exit("dashboard queries with no data:\n" + "\n".join(empty))
        return {"dashboard_queries": len(panels), "alert_rules": len(rules), "dashboard_queries_with_data": len(panels)}
    finally:
        prometheus.send_signal(signal.SIGTERM)
        prometheus.wait(30)


def _scraped(api: str) -> bool:
    try:
        return bool(_query(api, 'up{job="entropy-serve"} == 1'))
    except (httpx.TransportError, RuntimeError):
        return False


def _query(api: str, expr: str) -> list:
    body = httpx.get(f"{api}/query", params={"query": expr}, timeout=10).json()
    if body.get("status") != "success":
        raise RuntimeError(f"{expr}: {body.get('error')}")
    return body["data"]["result"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--base-image",
        help="the Dockerfile's BASE_IMAGE "
        "(default: python:3.11-slim if it can be pulled, else a debootstrapped Debian)",
    )
    parser.add_argument(
        "--wheels", type=Path, default=pip_find_links(), help="wheels pip cannot download (default: pip's find-links)"
    )
    parser.add_argument(
        "--ca-bundle", type=Path, default=Path("/etc/ssl/certs/ca-certificates.crt"), help="CA bundle pip must trust"
    )
    parser.add_argument("--keep", action="store_true", help="leave the stack running")
    args = parser.parse_args()
    for tool in ("docker", "prometheus", "promtool"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} is needed (Debian: apt-get install docker.io prometheus)")
    ensure_dockerd()
    timings = {}
    base = args.base_image
    if base is None:
        pulled = subprocess.run(["docker", "pull", "python:3.11-slim"], capture_output=True).returncode == 0
        base = "python:3.11-slim" if pulled else debian_base_image()
    wheels = DOCKER / "wheels"
    for wheel in args.wheels.glob("torch-*.whl") if args.wheels and args.wheels.is_dir() else ():
        shutil.copy2(wheel, wheels / wheel.name)
    data = Path(tempfile.mkdtemp(prefix="entropy-serve-data-"))
    data.chmod(0o755)
    started = time.monotonic()
    train_probe(data)
    timings["probe_training_s"] = round(time.monotonic() - started, 1)
    port, api_key = 18000, "smoke-key"
    env = {
        "ENTROPY_SERVE_BASE_IMAGE": base,
        "ENTROPY_SERVE_TORCH_INDEX": "" if args.wheels else "https://download.pytorch.org/whl/cpu",
        "ENTROPY_SERVE_BUILD_CA": str(args.ca_bundle) if args.ca_bundle.exists() else str(DOCKER / "build-ca.pem"),
        "ENTROPY_SERVE_DATA": str(data),
        "ENTROPY_SERVE_PROBE": "/data/probe",
        "ENTROPY_SERVE_API_KEY": api_key,
        "ENTROPY_SERVE_PORT": str(port),
        "ENTROPY_SERVE_KV_CACHE_GIB": "2",
    }
    compose = ("docker", "compose", "-p", PROJECT)
    try:
        started = time.monotonic()
        run(*compose, "build", "entropy-serve", env=env)
        timings["build_s"] = round(time.monotonic() - started, 1)
        size = int(run("docker", "image", "inspect", "-f", "{{.Size}}", "entropy-serve:cpu", capture=True))
        timings["image_size_gib"] = round(size / 2**30, 2)
        started = time.monotonic()
        run(*compose, "up", "-d", "entropy-serve", env=env)
        url = f"http://127.0.0.1:{port}"
        timings["start_to_healthy_s"] = round(wait_healthy(url), 1)
        with tempfile.TemporaryDirectory() as workdir:
            timings.update(check_with_prometheus(port, Path(workdir), url, api_key))
        started = time.monotonic()
        run(*compose, "stop", "entropy-serve", env=env)
        timings["stop_s"] = round(time.monotonic() - started, 1)
        container = run(*compose, "ps", "-a", "-q", "entropy-serve", env=env, capture=True).strip()
        exit_code = run("docker", "inspect", "-f", "{{.State.ExitCode}}", container, capture=True).strip()
        assert exit_code == "0", f"the server exited {exit_code} on SIGTERM"
        timings["exit_code_on_stop"] = int(exit_code)
    finally:
        if not args.keep:
            run(*compose, "down", "-v", env=env)
        shutil.rmtree(data, ignore_errors=True)
    print(json.dumps(timings, indent=2))


if __name__ == "__main__":  # vLLM spawns engine processes (train-probe)
    main()
