"""`entropy-serve serve`: the OpenAI-compatible server (server/app.py) under uvicorn."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys

from entropy_serve.commands.flags import add_answering_flags, add_engine_flags, answering_settings, positive_int, server_config

HELP = "run the OpenAI-compatible server"
API_KEY_ENV = "ENTROPY_SERVE_API_KEY"
DEAD_EXIT_DELAY_S = 1.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_engine_flags(parser)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--api-key", default=os.environ.get(API_KEY_ENV), help=f"require this bearer key on /v1 (env {API_KEY_ENV})")
    parser.add_argument("--max-body-bytes", type=positive_int, default=4 * 1024 * 1024)
    add_answering_flags(parser)


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from entropy_serve.server.app import create_app
    from entropy_serve.server.service import Service

    config = server_config(
        args,
        host=args.host,
        port=args.port,
        api_key=args.api_key or None,
        max_body_bytes=args.max_body_bytes,
        **answering_settings(args),
    )
    server: uvicorn.Server | None = None

    def stop_on_engine_death() -> None:
        # Linger briefly so health checks and in-flight requests see the 503 first.
        asyncio.get_running_loop().call_later(DEAD_EXIT_DELAY_S, setattr, server, "should_exit", True)

    service = Service(config, on_dead=stop_on_engine_death)
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(service),
            host=config.host,
            port=config.port,
            log_level=args.log_level,
            timeout_graceful_shutdown=int(config.shutdown_timeout_s),
        )
    )
    # uvicorn drains in-flight requests on SIGTERM/SIGINT, restores the handlers it found,
    # then re-raises the signal. A drained shutdown is a clean exit: make those no-ops.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: None)
    server.run()
    if service.engine.failure:
        print(f"entropy-serve: {service.engine.failure}", file=sys.stderr)
        return 1
    return 0
