"""N replicas of `entropy-serve serve` behind Ray Serve: the server stays the unit, and
this is the thin wrapper around it that `entropy-serve serve-replicas` starts.

Request path: Ray Serve's HTTP proxy -> `Ingress` (every route, as bytes) -> one
`Replica`, chosen by Ray's PrefixCacheAffinityRouter (while the replicas' loads are
balanced, the one whose earlier requests share the longest prefix with this one's prompt,
so a conversation's turns and a prompt's repeats find their KV cache; otherwise the
less loaded of two) -> the replica's own `entropy-serve serve` process over HTTP, its
reply streamed back chunk by chunk (forwarding.py).

Each replica:
- starts its server on a free port of its node, on cores it claims host-wide
  (entropy_serve/host.py: replicas on one machine never share a core), and is ready
  once the server's `/health` is 200;
- is healthy while its server is (Ray Serve's `check_health`, every
  HEALTH_CHECK_PERIOD_S): when the engine dies the server exits, the check fails, Ray
  Serve stops routing to the replica and starts another in its place;
- reports its server's address to `ReplicaRegistry` at each health check, and
  `/replicas/targets` on the ingress lists the live ones in Prometheus's HTTP service
  discovery format, so Prometheus scrapes every replica's own `/metrics`;
- drains its server on shutdown (SIGTERM: in-flight requests finish first).
Autoscaling is Ray Serve's, on ongoing requests per replica.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import ray
from fastapi import FastAPI, Request
from fastapi.responses import Response, StreamingResponse
from ray import serve
from ray.exceptions import RayActorError
from ray.serve.handle import DeploymentHandle

from entropy_serve import host
from entropy_serve.replicas.forwarding import Forwarded, Head, kept_headers, routing_text, stream_cut, unavailable
from entropy_serve.server.process import ServerProcess

logger = logging.getLogger("ray.serve")

HEALTH_CHECK_PERIOD_S = 2.0
REGISTRY = "entropy-serve-replicas"  # the registry actor's name, in Ray's namespace NAMESPACE
NAMESPACE = "entropy-serve"
# A replica not heard from for this long is gone (its health checks come late while its
# one core is busy generating).
TARGET_MAX_AGE_S = 15 * HEALTH_CHECK_PERIOD_S
METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE"]
# Prefix affinity holds while no replica has more than this many requests queued beyond
# another; past it, the less loaded of two. (Ray's default, no limit, sends a burst of new
# prompts all to the replica holding the least text: the prefix tree learns of each
# routed prompt only after it is sent.)
IMBALANCE_LIMIT = 2


@ray.remote(num_cpus=0)
class ReplicaRegistry:
    """The replicas' server addresses, as each last reported them."""

    def __init__(self) -> None:
        self._seen: dict[str, tuple[str, float]] = {}

    def heartbeat(self, replica: str, address: str) -> None:
        self._seen[replica] = (address, time.monotonic())

    def forget(self, replica: str) -> None:
        self._seen.pop(replica, None)

    def targets(self) -> list[str]:
        now = time.monotonic()
        return sorted(address for address, seen in self._seen.values() if now - seen < TARGET_MAX_AGE_S)


def registry():
    return ReplicaRegistry.options(name=REGISTRY, namespace=NAMESPACE, get_if_exists=True, lifetime="detached").remote()


def claim_cores(claims: host.CoreClaims, count: int) -> list[int]:
    """`count` cores no other engine on this host holds, held until this process ends."""
    for cpu in host.usable_cpus():
        if len(claims.cpus) == count:
            break
        claims.try_claim(cpu)
    if len(claims.cpus) < count:
        claims.release()
        raise host.CoresUnavailable(f"a replica needs {count} free core(s); this host has fewer free")
    return claims.cpus


class Replica:
    """One `entropy-serve serve` process, and the forwarding of requests to it."""

    def __init__(self, serve_flags: list[str], cores: int | None, replica_cores: list[str] | None) -> None:
        """`replica_cores`: the cores of each replica on a node, by its local rank; else
        `cores`: how many it claims among the node's free ones (None: no binding, GPUs)."""
        self.claims = host.CoreClaims()
        flags = list(serve_flags)
        if replica_cores:
            rank = serve.get_replica_context().rank.local_rank
            if rank >= len(replica_cores):
                raise ValueError(
                    f"replica {rank} on this node has no cores in --replica-cores {'|'.join(replica_cores)}"
                )
            flags += ["--cpu-cores", replica_cores[rank]]
        elif cores:
            flags += ["--cpu-cores", host.cpu_list_text(claim_cores(self.claims, cores))]
        node = ray.util.get_node_ip_address()
        self.server = ServerProcess(*flags, kv_cache_gib=None, host_ip=node)
        self.server.wait_until_ready()  # the replica is ready when its server is
        self.name = serve.get_replica_context().replica_id.unique_id
        self.registry = registry()
        self.client = httpx.AsyncClient(base_url=self.server.url, timeout=httpx.Timeout(None, connect=5.0))
        logger.info("replica %s: server at %s", self.name, self.server.url)

    async def forward(self, request: Forwarded) -> AsyncIterator[Head | bytes]:
        started = False
        try:
            outgoing = self.client.build_request(
                request.method, request.path, headers=request.headers, content=request.body
            )
            response = await self.client.send(outgoing, stream=True)
            try:
                yield Head(response.status_code, kept_headers(response.headers.items()))
                started = True
                async for chunk in response.aiter_raw():
                    yield chunk
            finally:
                await response.aclose()
        except httpx.TransportError as error:
            message = f"the replica's server stopped answering ({type(error).__name__}); try again"
            if started:
                yield stream_cut(message)
            else:
                head, body = unavailable(message)
                yield head
                yield body

    async def check_health(self) -> None:
        if (code := self.server.process.poll()) is not None:
            raise RuntimeError(f"the replica's server exited with {code}")
        try:
            status = (await self.client.get("/health", timeout=5.0)).status_code
        except httpx.TransportError as error:
            raise RuntimeError(f"the replica's server does not answer: {error}") from error
        if status != 200:
            raise RuntimeError(f"the replica's server is not healthy: /health {status}")
        self.registry.heartbeat.remote(self.name, self.server.url.removeprefix("http://"))

    def __del__(self) -> None:
        if hasattr(self, "registry"):
            self.registry.forget.remote(self.name)
        if hasattr(self, "server"):
            self.server.terminate()  # SIGTERM: the server drains its in-flight requests
        self.claims.release()


app = FastAPI(title="entropy-serve replicas")


class Ingress:
    """Every route of every replica, forwarded as bytes (forwarding.py), and the replicas'
    metrics targets for Prometheus."""

    def __init__(self, replica: DeploymentHandle) -> None:
        self.replica = replica.options(stream=True)

    @app.get("/replicas/targets")
    async def targets(self) -> list[dict]:
        """Prometheus's HTTP service discovery: every live replica's server."""
        addresses = await registry().targets.remote()
        return [{"targets": addresses, "labels": {"shape": "ray-serve-replicas"}}]

    @app.api_route("/{path:path}", methods=METHODS)
    async def proxy(self, path: str, request: Request) -> Response:
        body = await request.body()
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        headers = kept_headers(request.headers.items())
        forwarded = Forwarded(request.method, target, headers, body, routing_text(body, request.method, target))
        stream = self.replica.forward.remote(forwarded)
        try:
            head = await anext(stream)
        except RayActorError as error:  # the replica itself died
            head, body = unavailable(f"the replica died: {error}")
            return Response(body, status_code=head.status, headers=dict(head.headers))
        return StreamingResponse(_rest(stream), status_code=head.status, headers=dict(head.headers))


async def _rest(stream) -> AsyncIterator[bytes]:
    try:
        async for chunk in stream:
            yield chunk
    except RayActorError as error:
        yield stream_cut(f"the replica died: {error}")


@dataclass(frozen=True)
class Shape:
    """How many replicas, how loaded, on what (serve-replicas' flags)."""

    min_replicas: int
    max_replicas: int
    target_ongoing_requests: float
    max_ongoing_requests: int  # per replica
    cores_per_replica: int | None
    replica_cores: list[str] | None
    gpus_per_replica: float


def deployments(shape: Shape):
    """The ingress and replica deployments of the Serve application."""
    from ray.serve.config import AutoscalingConfig, RequestRouterConfig
    from ray.serve.llm.request_router import PrefixCacheAffinityRouter

    replicas = serve.deployment(Replica).options(
        name="replica",
        autoscaling_config=AutoscalingConfig(
            min_replicas=shape.min_replicas,
            initial_replicas=shape.min_replicas,
            max_replicas=shape.max_replicas,
            target_ongoing_requests=shape.target_ongoing_requests,
        ),
        max_ongoing_requests=shape.max_ongoing_requests,
        ray_actor_options={
            "num_cpus": _num_cpus(shape.cores_per_replica, shape.replica_cores),
            "num_gpus": shape.gpus_per_replica,
        },
        request_router_config=RequestRouterConfig(
            request_router_class=PrefixCacheAffinityRouter,
            request_router_kwargs={"imbalanced_threshold": IMBALANCE_LIMIT},
        ),
        health_check_period_s=HEALTH_CHECK_PERIOD_S,
        health_check_timeout_s=10.0,
        graceful_shutdown_timeout_s=60.0,
    )
    # The ingress only forwards: it holds as many requests as all the replicas can (with
    # Ray Serve's default, 5, only 5 requests at a time would get through).
    ingress = serve.deployment(serve.ingress(app)(Ingress)).options(
        name="ingress",
        max_ongoing_requests=shape.max_replicas * shape.max_ongoing_requests,
        ray_actor_options={"num_cpus": 0},
    )
    return ingress, replicas


def build_app(serve_flags: list[str], shape: Shape):
    """The Serve application: the ingress bound to the replicas' deployment."""
    ingress, replicas = deployments(shape)
    return ingress.bind(replicas.bind(serve_flags, shape.cores_per_replica, shape.replica_cores))


def _num_cpus(cores_per_replica: int | None, replica_cores: list[str] | None) -> int:
    """What Ray counts a replica as using: its cores (so Ray places no more replicas on a
    node than it has cores for)."""
    if replica_cores:
        return min(len(host.parse_cpu_list(cores)) for cores in replica_cores)
    return cores_per_replica or 0


def serve_until_signalled(application, http_host: str, http_port: int, ray_address: str | None) -> None:
    """Start Ray (or join `ray_address`), run the application, and stay up until SIGTERM
    or SIGINT, then shut Serve down (the replicas drain their servers)."""
    stop = asyncio.Event()
    # "local": a Ray of our own, never one an earlier `ray start` left its address for.
    ray.init(address=ray_address or "local", namespace=NAMESPACE, log_to_driver=False)
    try:
        serve.start(http_options={"host": http_host, "port": http_port})
        serve.run(application, name="entropy-serve", route_prefix="/")
        print(f"entropy-serve replicas: http://{http_host}:{http_port}", flush=True)

        async def wait() -> None:
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, stop.set)
            await stop.wait()

        asyncio.run(wait())
    finally:
        serve.shutdown()
        ray.kill(registry())  # detached: it would outlive Serve on a cluster that stays up
        ray.shutdown()
