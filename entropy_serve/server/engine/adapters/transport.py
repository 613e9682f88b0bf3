"""Where the entropy channel runs: an IPC path on one machine, TCP with CURVE across nodes.

The channel (channel.py) is a ZeroMQ PUSH (every sampling worker) -> PULL (the server)
socket. Its transport is chosen once per launch (`channel_transport`):
- `ipc`: a socket file in a private temporary folder (0700): only this user's processes
  on this machine reach it. The default for workers that all run on this machine.
- `tcp`: for workers on other nodes (vLLM's Ray executor), an address they can reach:
  the server binds a port on one interface (`--entropy-channel-host`, default the address
  vLLM gives its own ranks, VLLM_HOST_IP) and the socket speaks CURVE (ZeroMQ's
  public-key encryption) with keys made for this launch. The server accepts only the one
  client key it made (a ZAP handler checks each connection), so no other process can
  publish entropies, and nothing on the wire can be read. The workers get the address
  and the keys in their environment (KEYS_ENV), which vLLM's Ray executor copies to
  every worker (RAY_PREFIXES_ENV names our prefix).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass

import zmq
import zmq.asyncio
from zmq.auth.asyncio import AsyncioAuthenticator

from entropy_serve.server.config import CHANNEL_TRANSPORTS

CHANNEL_ENV = "ENTROPY_SERVE_CHANNEL"
KEYS_ENV = "ENTROPY_SERVE_CHANNEL_KEYS"  # "server public,client public,client secret" (Z85)
ENV_PREFIX = "ENTROPY_SERVE_"
# vLLM's Ray executor copies variables with these prefixes to its workers (vllm/ray/ray_env.py).
RAY_PREFIXES_ENV = "VLLM_RAY_EXTRA_ENV_VAR_PREFIXES_TO_COPY"


def channel_transport(asked: str, distributed_executor_backend: str | None) -> str:
    """`ipc` or `tcp`: as asked, or, for `auto`, TCP where a worker may run on another
    node (the Ray executor places ranks across the cluster), else IPC."""
    if asked not in CHANNEL_TRANSPORTS:
        raise ValueError(f"entropy channel transport must be one of {CHANNEL_TRANSPORTS}, got {asked!r}")
    if asked != "auto":
        return asked
    return "tcp" if distributed_executor_backend == "ray" else "ipc"


@dataclass(frozen=True)
class CurveKeys:
    """One launch's key pairs (Z85 text): the server's, and the one client the server accepts."""

    server_public: bytes
    server_secret: bytes
    client_public: bytes
    client_secret: bytes

    @classmethod
    def generate(cls) -> CurveKeys:
        if not zmq.has("curve"):
            raise RuntimeError("this pyzmq has no CURVE support: the TCP entropy channel needs it")
        server_public, server_secret = zmq.curve_keypair()
        client_public, client_secret = zmq.curve_keypair()
        return cls(server_public, server_secret, client_public, client_secret)

    def client_env(self) -> str:
        """What a worker needs, and nothing of the server's secret."""
        return b",".join((self.server_public, self.client_public, self.client_secret)).decode()


def secure_publisher(socket: zmq.Socket, keys_text: str) -> None:
    """Make a worker's socket a CURVE client with the keys of KEYS_ENV."""
    server_public, client_public, client_secret = (part.encode() for part in keys_text.split(","))
    socket.curve_serverkey = server_public
    socket.curve_publickey = client_public
    socket.curve_secretkey = client_secret


class OnlyKey:
    """ZAP credentials provider: accepts exactly one client public key."""

    def __init__(self, client_public: bytes) -> None:
        self.client_public = client_public

    def callback(self, domain: str, key: bytes) -> bool:
        return key == self.client_public


class Endpoint:
    """The server's end of one transport: binds a PULL socket, says what the workers need
    in their environment, and cleans up (the IPC folder, the ZAP handler)."""

    def __init__(self, transport: str, host: str | None = None) -> None:
        self.context = zmq.asyncio.Context()
        self.socket = self.context.socket(zmq.PULL)
        self._folder: str | None = None
        self._authenticator: AsyncioAuthenticator | None = None
        self.env: dict[str, str] = {}
        if transport == "ipc":
            self._folder = tempfile.mkdtemp(prefix="entropy-serve-")  # created 0700
            address = f"ipc://{self._folder}/entropy.sock"
            self.socket.bind(address)
        elif transport == "tcp":
            keys = CurveKeys.generate()
            self._authenticator = AsyncioAuthenticator(self.context)
            self._authenticator.start()
            self._authenticator.configure_curve_callback("*", credentials_provider=OnlyKey(keys.client_public))
            self.socket.curve_secretkey = keys.server_secret
            self.socket.curve_publickey = keys.server_public
            self.socket.curve_server = True
            host = host or default_host()
            port = self.socket.bind_to_random_port(f"tcp://{host}")
            address = f"tcp://{host}:{port}"
            self.env[KEYS_ENV] = keys.client_env()
            self.env[RAY_PREFIXES_ENV] = ",".join(filter(None, (os.environ.get(RAY_PREFIXES_ENV), ENV_PREFIX)))
        else:
            raise ValueError(f"unknown entropy channel transport {transport!r}")
        self.address = address
        self.env[CHANNEL_ENV] = address

    def close(self) -> None:
        self.socket.close(linger=0)
        if self._authenticator is not None:
            self._authenticator.stop()
        self.context.term()
        if self._folder is not None:
            shutil.rmtree(self._folder, ignore_errors=True)


def default_host() -> str:
    """The address vLLM gives its own ranks to reach this node (VLLM_HOST_IP, else the
    interface of the default route)."""
    from vllm.utils.network_utils import get_ip

    return get_ip()
