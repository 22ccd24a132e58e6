"""`genforge` — one console script for the operator and its offline tools."""

from __future__ import annotations

import argparse
import importlib
import sys

# command → (module, help); each module defines add_arguments(parser) and run(args) -> int.
COMMANDS = {
    "operator": ("genforge_operator.run_operator", "run the operator (what the chart's Deployment runs)"),
    "render": ("genforge_operator.render", "print the Jobs/Services the operator would create, offline"),
    "estimate": ("genforge_operator.cli.estimate", "duration and cost of a run on every pool"),
    "local": ("genforge_operator.local.control_plane", "a local control plane: API server, operator, executor"),
    "demo": ("genforge_operator.local.demo", "run the end-to-end demo on this machine"),
    "generate": ("genforge_operator.generate", "images from a GenModel version (or a model folder)"),
    "review": ("genforge_operator.review.cli", "rate samples 👍/👎 in a browser and fine-tune on the ratings"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="genforge", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        sub_parser = sub.add_parser(name, help=help_text)
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            sub_parser.set_defaults(_missing=f"`genforge {name}` is unavailable: {exc}")
            continue
        module.add_arguments(sub_parser)
        sub_parser.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "_missing", None):
        print(args._missing, file=sys.stderr)
        return 2
    return int(args._run(args) or 0)
