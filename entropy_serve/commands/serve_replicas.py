"""`entropy-serve serve-replicas`: N replicas of `entropy-serve serve` behind Ray Serve
(entropy_serve/replicas/), with prefix-affinity routing and autoscaling.

    entropy-serve serve-replicas --replicas 2 -- --max-model-len 4096 --api-key KEY
    entropy-serve serve-replicas --min-replicas 1 --max-replicas 8 --ray-address auto -- ...

Flags after `--` go to every replica's `entropy-serve serve` (checked here first, so a
bad one fails now, not in every replica); a replica's `--host`, `--port` and (CPU)
`--cpu-cores` are its own.
"""

from __future__ import annotations

import argparse

from entropy_serve import flag_types

HELP = "run N replicas of the server behind Ray Serve (the `replicas` extra)"
OWN_FLAGS = ("--host", "--port", "--cpu-cores")  # set per replica


def add_arguments(parser: argparse.ArgumentParser) -> None:
    scale = parser.add_argument_group("replicas (Ray Serve)")
    scale.add_argument("--replicas", type=flag_types.positive_int, help="a fixed number of replicas (default 2)")
    scale.add_argument("--min-replicas", type=flag_types.positive_int, help="autoscaling: fewest replicas")
    scale.add_argument("--max-replicas", type=flag_types.positive_int, help="autoscaling: most replicas")
    scale.add_argument(
        "--target-ongoing-requests",
        type=flag_types.positive_float,
        default=16.0,
        help="autoscaling: requests in flight per replica that Ray Serve scales towards",
    )
    scale.add_argument(
        "--max-ongoing-requests",
        type=flag_types.positive_int,
        default=64,
        help="requests one replica holds at once (its engine batches them); more wait in Ray Serve's queue",
    )
    scale.add_argument(
        "--cores-per-replica",
        type=flag_types.positive_int,
        help="CPU replicas: cores each claims on its node (default: this node's usable cores / the most replicas)",
    )
    scale.add_argument(
        "--replica-cores",
        type=flag_types.cpu_cores,
        help="CPU replicas: the cores of each replica on a node, one list per replica joined by '|' (e.g. 0-3|4-7)",
    )
    scale.add_argument("--gpus-per-replica", type=flag_types.positive_float, help="GPU replicas: GPUs each takes")
    scale.add_argument("--host", default="127.0.0.1", help="where Ray Serve's HTTP proxy listens")
    scale.add_argument("--port", type=flag_types.positive_int, default=8000)
    scale.add_argument("--ray-address", help="a running Ray cluster ('auto', or host:port; default: start one here)")
    parser.add_argument("serve_flags", nargs=argparse.REMAINDER, help="-- then the flags of each replica's `serve`")


def replica_flags(args: argparse.Namespace) -> list[str]:
    """The replicas' `serve` flags, checked by `serve`'s own parser (argparse exits 2 with its message)."""
    from entropy_serve.cli import build_parser

    flags = args.serve_flags[1:] if args.serve_flags[:1] == ["--"] else args.serve_flags
    own = [flag for flag in flags if flag.split("=")[0] in OWN_FLAGS]
    if own:
        raise ValueError(f"{', '.join(own)}: each replica sets its own; give Ray Serve's --host/--port before --")
    build_parser().parse_args(["serve", *flags])
    return flags


def replica_counts(args: argparse.Namespace) -> tuple[int, int]:
    if args.replicas is not None and (args.min_replicas or args.max_replicas):
        raise ValueError("--replicas is a fixed count; for autoscaling give --min-replicas and --max-replicas instead")
    low = args.replicas or args.min_replicas or 2
    high = args.replicas or args.max_replicas or max(low, 2)
    if low > high:
        raise ValueError(f"--min-replicas {low} is more than --max-replicas {high}")
    return low, high


def named_cores(args: argparse.Namespace, max_replicas: int) -> list[str] | None:
    """--replica-cores as one CPU list per replica, checked against the other flags."""
    if not args.replica_cores:
        return None
    lists = args.replica_cores.split("|")
    if args.cores_per_replica or args.gpus_per_replica:
        raise ValueError("--replica-cores names each replica's cores: give it without --cores-per-replica or GPUs")
    if len(lists) < max_replicas:
        raise ValueError(f"--replica-cores has {len(lists)} list(s) for up to {max_replicas} replicas on a node")
    return lists


def run(args: argparse.Namespace) -> int:
    from entropy_serve import host

    flags = replica_flags(args)
    low, high = replica_counts(args)
    gpus = args.gpus_per_replica or 0.0
    replica_cores = named_cores(args, high)
    cores = args.cores_per_replica
    if cores is None and not gpus and not replica_cores:
        cores = max(1, len(host.usable_cpus()) // high)
    try:
        from entropy_serve.replicas.ray_app import Shape, build_app, serve_until_signalled
    except ImportError as error:
        raise ValueError(f"serve-replicas needs Ray Serve: pip install 'entropy-serve[replicas]' ({error})") from error
    shape = Shape(
        min_replicas=low,
        max_replicas=high,
        target_ongoing_requests=args.target_ongoing_requests,
        max_ongoing_requests=args.max_ongoing_requests,
        cores_per_replica=None if gpus else cores,
        replica_cores=replica_cores,
        gpus_per_replica=gpus,
    )
    application = build_app(flags, shape)
    serve_until_signalled(application, args.host, args.port, args.ray_address)
    return 0
