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
    parser.add_argument(
        "--api-key", action="append",
        help=f"require this bearer key on /v1; repeat it for one key per user, each seeing only its own files, "
        f"batches and stored responses (env {API_KEY_ENV}: keys separated by commas)",
    )
    parser.add_argument("--max-body-bytes", type=positive_int, default=4 * 1024 * 1024)
    state = parser.add_argument_group("files, batches and stored responses")
    state.add_argument(
        "--database-url",
        help="where they live: an SQLAlchemy URL, e.g. postgresql://user@host/db (needs the `postgres` extra) "
        "or sqlite:///path (default: SQLite in the cache folder, ~/.cache/entropy-serve)",
    )
    state.add_argument("--max-file-bytes", type=positive_int, default=100 * 1024 * 1024, help="largest upload to /v1/files")
    state.add_argument("--max-batch-lines", type=positive_int, default=50_000, help="most requests one batch may hold")
    state.add_argument(
        "--batch-max-in-flight", type=positive_int, default=8,
        help="batch lines answered at once (the engine's other sequences stay free for interactive requests)",
    )
    parser.add_argument(
        "--drain-timeout-s",
        type=non_negative_float,
        default=30.0,
        help="on SIGTERM, seconds in-flight requests may finish before they are ended with an error",
    )
    add_answering_flags(parser)


def api_keys(flags: list[str] | None) -> tuple[str, ...]:
    """The --api-key flags, else the environment's comma-separated keys (empty ones dropped)."""
    keys = flags if flags else os.environ.get(API_KEY_ENV, "").split(",")
    return tuple(key.strip() for key in keys if key.strip())


def non_negative_float(text: str) -> float:
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be at least 0, got {text}")
    return value


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from entropy_serve.server.app import create_app
    from entropy_serve.server.drain import CUT_GRACE_S, DRAIN_CUT_EXIT, Drain, DrainingServer
    from entropy_serve.server.service import Service

    config = server_config(
        args,
        host=args.host,
        port=args.port,
        api_keys=api_keys(args.api_key),
        max_body_bytes=args.max_body_bytes,
        database_url=args.database_url,
        max_file_bytes=args.max_file_bytes,
        max_batch_lines=args.max_batch_lines,
        batch_max_in_flight=args.batch_max_in_flight,
        drain_timeout_s=args.drain_timeout_s,
        **answering_settings(args),
    )
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
        print(f"entropy-serve: the drain ran out after {config.drain_timeout_s:g} s; open requests were ended", file=sys.stderr)
        return DRAIN_CUT_EXIT
    return 0

