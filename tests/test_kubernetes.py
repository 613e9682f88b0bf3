"""deploy/kubernetes/: the manifests are valid Kubernetes objects (the API's own OpenAPI
schemas, strict: no unknown field, via kubernetes-validate; no cluster here), and they
mean what they say to our server: every ENTROPY_SERVE_ variable is a flag of `serve`,
the arguments parse, the probes and the Service reach the port the server listens on,
the drain fits the grace period, and the autoscaler's metric is one the server exports."""

from __future__ import annotations

import json
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from entropy_serve.cli import build_parser, env_name
from entropy_serve.server import metrics

ROOT = Path(__file__).resolve().parents[1]
MANIFEST = ROOT / "deploy" / "kubernetes" / "entropy-serve.yaml"
KUBERNETES_VERSION = "1.33.0"


def documents() -> dict[str, dict]:
    return {doc["kind"]: doc for doc in yaml.safe_load_all(MANIFEST.read_text())}


def container() -> dict:
    (only,) = documents()["Deployment"]["spec"]["template"]["spec"]["containers"]
    return only


def entrypoint() -> list[str]:
    """The image's ENTRYPOINT (docker/Dockerfile), which the container's args extend."""
    line = next(
        line for line in (ROOT / "docker" / "Dockerfile").read_text().splitlines() if line.startswith("ENTRYPOINT")
    )
    return json.loads(line.removeprefix("ENTRYPOINT"))


@pytest.mark.parametrize(
    "kind", ["ConfigMap", "Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget"]
)
def test_each_object_is_valid_kubernetes(kind):
    kubernetes_validate.validate(documents()[kind], KUBERNETES_VERSION, strict=True)  # raises on any error


def test_every_variable_is_a_serve_flag_and_the_command_parses(monkeypatch):
    parser = build_parser()
    serve = parser._subparsers._group_actions[0].choices["serve"]  # argparse lists subcommands nowhere public
    known = {env_name(action) for action in serve._actions if action.option_strings}
    variables = dict(documents()["ConfigMap"]["data"])
    variables |= {item["name"]: "key-a,key-b" for item in container()["env"]}  # the Secret's value
    assert set(variables) <= known, set(variables) - known  # an unknown name would be silently ignored
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    args = build_parser().parse_args([*entrypoint()[1:], *container()["args"]])
    assert (args.command, args.host, args.port) == ("serve", "0.0.0.0", 8000)
    assert (args.max_model_len, args.kv_cache_gib, args.max_n) == (4096, 4.0, 16)
    assert args.api_keys == ["key-a", "key-b"]


def test_probes_and_service_reach_the_servers_port_and_the_drain_fits():
    spec = documents()["Deployment"]["spec"]["template"]["spec"]
    port = entrypoint()[entrypoint().index("--port") + 1]
    (named,) = container()["ports"]
    assert named["containerPort"] == int(port)
    for probe in ("startupProbe", "readinessProbe"):
        assert container()[probe]["httpGet"] == {"path": "/health", "port": named["name"]}
    service = documents()["Service"]["spec"]
    assert service["ports"][0]["targetPort"] == named["name"]
    labels = documents()["Deployment"]["spec"]["template"]["metadata"]["labels"]
    assert service["selector"].items() <= labels.items()
    drain_s = float(documents()["ConfigMap"]["data"]["ENTROPY_SERVE_DRAIN_TIMEOUT_S"])
    assert spec["terminationGracePeriodSeconds"] > drain_s  # the drain ends before the kubelet's SIGKILL


def test_the_autoscalers_metric_is_the_servers():
    (metric,) = documents()["HorizontalPodAutoscaler"]["spec"]["metrics"]
    name = metric["pods"]["metric"]["name"]
    assert name == metrics.REQUESTS_RUNNING._name  # a gauge: its exported name has no suffix
