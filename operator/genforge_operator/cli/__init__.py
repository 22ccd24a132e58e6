"""`genforge` — one console script for the operator and its offline tools."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Collection

LOCAL_PACKAGE = "genforge_local"  # `genforge local` / `genforge demo`: the `local` extra

# command → (module, help); each module defines add_arguments(parser) and run(args) -> int.
COMMANDS = {
    "operator": ("genforge_operator.run_operator", "run the operator (what the chart's Deployment runs)"),
    "render": ("genforge_operator.render", "print the Jobs/Services the operator would create, offline"),
    "estimate": ("genforge_operator.cli.estimate", "duration and cost of a run on every pool"),
    "local": ("genforge_local.control_plane", "a local control plane: API server, operator, executor"),
    "demo": ("genforge_local.demo", "run the end-to-end demo on this machine"),
    "generate": ("genforge_operator.generate", "images from a GenModel version (or a model folder)"),
    "review": ("genforge_operator.review.cli", "rate samples 👍/👎 in a browser and fine-tune on the ratings"),
}


def build_parser(commands: Collection[str] | None = None) -> argparse.ArgumentParser:
    """The `genforge` parser. Only the named commands' modules are imported (every one when
    None): `genforge operator` loads nothing of the local cluster or the offline tools."""
    parser = argparse.ArgumentParser(prog="genforge", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        sub_parser = sub.add_parser(name, help=help_text)
        if commands is not None and name not in commands:
            continue
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            sub_parser.set_defaults(_missing=unavailable_message(name, module_name, exc))
            continue
        module.add_arguments(sub_parser)
        sub_parser.set_defaults(_run=module.run)
    return parser


def unavailable_message(command: str, module_name: str, exc: ImportError) -> str:
    """Why `genforge COMMAND` cannot run, and for the local cluster's commands what to install."""
    message = f"`genforge {command}` is unavailable: {exc}"
    if module_name.split(".")[0] == LOCAL_PACKAGE:
        message += ("\nIt runs the local cluster (package genforge_local), which is installed apart from "
                    "the operator: pip install 'genforge[local]'")
    return message


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    command = argv[0] if argv and argv[0] in COMMANDS else None
    args = build_parser([command] if command else []).parse_args(argv)
    if getattr(args, "_missing", None):
        print(args._missing, file=sys.stderr)
        return 2
    return int(args._run(args) or 0)
