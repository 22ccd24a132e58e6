"""`genforge operator` — run the operator in-cluster: `kopf run -m genforge_operator.main`, in process.

What the chart's Deployment runs. Thin on purpose: it translates genforge's flags into
kopf's own command line (`kopf_arguments`, pure) and hands over to kopf's CLI, so
logging, signals and shutdown behave exactly as under `kopf run`.

- Scope: `--all-namespaces` (the default) or `--namespace NS`, repeated.
- Health: kopf's liveness endpoint (`--liveness`, default `http://0.0.0.0:8081/healthz`;
  port 8080 is the operator's `/metrics`).
- High availability: `--peering NAME` (or `GENFORGE_PEERING`) makes kopf coordinate the
  replicas through the (Cluster)KopfPeering object NAME, which must exist (the chart
  creates it). kopf lets only the replica with the highest priority work and freezes
  *every* replica when two alive ones share a priority, so each replica needs its own:
  `--priority` (or `GENFORGE_PEERING_PRIORITY`), by default the replica's start time in
  milliseconds plus a random tiebreak — the newest replica takes over (a rollout hands
  the work to the new version) and the others stand by until its keep-alives stop.
- Without peering, the operator runs standalone (one replica).
"""

from __future__ import annotations

import argparse
import os
import random
import time

from .config import OperatorConfig

OPERATOR_MODULE = "genforge_operator.main"
DEFAULT_LIVENESS = OperatorConfig.liveness
LOG_FORMATS = ("plain", "full", "json")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    scope = parser.add_mutually_exclusive_group()
    scope.add_argument("-A", "--all-namespaces", action="store_true",
                       help="watch every namespace (the default when no --namespace is given)")
    scope.add_argument("-n", "--namespace", action="append", default=[], metavar="NS",
                       help="watch only this namespace; repeat for several")
    config = OperatorConfig.from_env()
    parser.add_argument("--liveness", default=config.liveness,
                        metavar="URL", help=f"kopf's liveness endpoint (default {DEFAULT_LIVENESS})")
    parser.add_argument("--peering", default=config.peering, metavar="NAME",
                        help="coordinate replicas through kopf peering object NAME (env GENFORGE_PEERING); "
                             "without it the operator runs standalone")
    parser.add_argument("--priority", type=int, default=config.peering_priority,
                        help="this replica's peering priority (env GENFORGE_PEERING_PRIORITY; "
                             "default: start time, so the newest replica is the active one)")
    parser.add_argument("--log-format", choices=LOG_FORMATS,
                        default=config.log_format,
                        help="kopf's log format (env GENFORGE_LOG_FORMAT)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log more")


def default_priority(now: float, tiebreak: int) -> int:
    """Newer replicas win; `tiebreak` (0-999) separates replicas started in the same millisecond."""
    return int(now * 1000) * 1000 + tiebreak


def kopf_arguments(args: argparse.Namespace, *, now: float | None = None, tiebreak: int | None = None) -> list[str]:
    """The `kopf run` command line equivalent to `genforge operator` with `args`."""
    argv = ["run", "--log-format", args.log_format]
    if args.verbose:
        argv.append("--verbose")
    if args.namespace:
        for namespace in args.namespace:
            argv += ["--namespace", namespace]
    else:
        argv.append("--all-namespaces")
    if args.liveness:
        argv += ["--liveness", args.liveness]
    if args.peering:
        priority = args.priority
        if priority is None:
            priority = default_priority(time.time() if now is None else now,
                                        random.randrange(1000) if tiebreak is None else tiebreak)
        argv += ["--peering", args.peering, "--priority", str(priority)]
    else:
        argv.append("--standalone")
    return argv + ["-m", OPERATOR_MODULE]


def run(args: argparse.Namespace) -> int:
    import kopf.cli

    if args.peering:
        os.environ["GENFORGE_PEERING"] = args.peering  # main.configure() reads it at startup
    else:
        os.environ.pop("GENFORGE_PEERING", None)
    kopf.cli.main(args=kopf_arguments(args), prog_name="genforge operator", standalone_mode=False)
    return 0
