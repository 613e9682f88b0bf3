"""`entropy-serve serve`: the OpenAI-compatible server (server/api/app.py) under uvicorn."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys

from entropy_serve.commands.flags import add_server_flags, server_config
from entropy_serve.server.config import ServerConfig
from entropy_serve.server.settings import ANSWERING, SERVING, STATE

HELP = "run the OpenAI-compatible server"
DEAD_EXIT_DELAY_S = 1.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_server_flags(parser, ANSWERING, SERVING, STATE)


def engine_config(args: argparse.Namespace) -> ServerConfig:
    return server_config(args)


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from entropy_serve.server.api.app import create_app
    from entropy_serve.server.api.drain import CUT_GRACE_S, DRAIN_CUT_EXIT, Drain, DrainingServer
    from entropy_serve.server.core.service import Service

    config = engine_config(args)
    server: uvicorn.Server | None = None

    def stop_on_engine_death() -> None:
        # Linger briefly so health checks and in-flight requests see the 503 first.
        asyncio.get_running_loop().call_later(DEAD_EXIT_DELAY_S, setattr, server, "should_exit", True)

    service = Service(config, on_dead=stop_on_engine_death)
    drain = Drain(config.drain_timeout_s)
    server = DrainingServer(
        uvicorn.Config(
            create_app(service, drain),
            host=config.host,
            port=config.port,
            log_level=args.log_level,
            # Our drain has answered every request by the time uvicorn shuts down.
            timeout_graceful_shutdown=int(CUT_GRACE_S),
        ),
        drain,
    )
    # uvicorn restores the signal handlers it found after shutting down, then re-raises
    # the signal. A drained shutdown is a clean exit: make those no-ops.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: None)
    server.run()
    if service.engine.failure:
        print(f"entropy-serve: {service.engine.failure}", file=sys.stderr)
        return 1
    if drain.cut:
        print(
            f"entropy-serve: the drain ran out after {config.drain_timeout_s:g} s; open requests were ended",
            file=sys.stderr,
        )
        return DRAIN_CUT_EXIT
    return 0
