"""``genforge-trainer prepare|train|finetune|evaluate --config PATH`` — the trainer's entry point.

Reads the run spec (the ``--config`` path goes through ``GENFORGE_PATH_MAP`` in local
mode), starts the progress server, runs the command, writes the termination message and
exits with a contract exit code (genforge_trainer.exitcodes). Every command module
exposes ``run(spec, reporter) -> dict`` returning termination-message fields; heavy
imports (torch, diffusers) happen only inside the command that needs them.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from typing import Any

from genforge_trainer import storage
from genforge_trainer.config import COMMANDS, RunSpec, load_run_spec
from genforge_trainer.exitcodes import ConfigError, ExitCode, Stopped, exit_code_for, reason_for
from genforge_trainer.progress import ProgressReporter, write_termination_message

log = logging.getLogger("genforge_trainer")

#: command -> "module:function"; each function is ``run(spec, reporter) -> dict``.
DISPATCH: dict[str, str] = {
    "prepare": "genforge_trainer.data.prepare:run",
    "train": "genforge_trainer.train:run",
    "finetune": "genforge_trainer.train:run",
    "evaluate": "genforge_trainer.evaluation:run",
}

#: Commands that check the SIGTERM flag, checkpoint and stop by themselves; the others
#: are interrupted as soon as SIGTERM arrives.
GRACEFUL = {"train", "finetune"}


def _runner(command: str) -> Callable[[RunSpec, ProgressReporter], dict[str, Any]]:
    module_name, _, func = DISPATCH[command].partition(":")
    return getattr(importlib.import_module(module_name), func)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="genforge-trainer", description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=COMMANDS)
    parser.add_argument(
        "--config", required=True, help="run spec JSON (default mount: /etc/genforge/run.json)"
    )
    parser.add_argument("--log-level", default=os.environ.get("GENFORGE_LOG_LEVEL", "INFO"))
    parser.add_argument("--no-serve", action="store_true", help="do not serve /progress and /metrics")
    return parser


def _serves_http() -> bool:
    # One server per pod: only the first process on each node (torchrun LOCAL_RANK 0).
    return os.environ.get("LOCAL_RANK", "0") == "0"


def run_command(command: str, config_path: str, *, serve: bool = True) -> tuple[ExitCode, dict[str, Any]]:
    """Run one command; return the exit code and the termination message written."""
    reporter = ProgressReporter(phase=command)
    result: dict[str, Any]
    try:
        spec = load_run_spec(storage.local_path(config_path) or config_path)
        if spec.command != command:
            raise ConfigError(f"the run spec is for command {spec.command!r}, but {command!r} was invoked")
        reporter.stop.install(graceful=command in GRACEFUL)
        if serve and _serves_http():
            reporter.serve()
        result = {"outcome": "Succeeded", **_runner(command)(spec, reporter)}
        code = ExitCode.OK
    except Stopped as exc:
        code = ExitCode.SIGTERM
        result = {
            "outcome": "Stopped",
            **_progress_fields(reporter),
            "reason": exc.reason,
            "message": str(exc),
            **exc.details,
        }
    except KeyboardInterrupt:
        code = ExitCode.SIGTERM
        result = {
            "outcome": "Stopped",
            **_progress_fields(reporter),
            "reason": "Interrupted",
            "message": "interrupted",
        }
    except Exception as exc:  # noqa: BLE001 - every failure becomes an exit code and a message
        code = exit_code_for(exc)
        if code == ExitCode.ERROR:
            log.error("trainer failed:\n%s", traceback.format_exc())
        else:
            log.error("%s: %s", reason_for(exc), exc)
        result = {
            "outcome": "Failed",
            **_progress_fields(reporter),
            "reason": reason_for(exc),
            "message": str(exc),
        }
    finally:
        reporter.stop.uninstall()
        reporter.close()
    write_termination_message(result)
    return code, result


def _progress_fields(reporter: ProgressReporter) -> dict[str, Any]:
    snap = reporter.snapshot()
    fields = {
        "step": snap.get("step"),
        "totalSteps": snap.get("totalSteps"),
        "loss": snap.get("loss"),
        "samplesPerSecond": snap.get("samplesPerSecond"),
    }
    if snap.get("checkpoint"):
        fields["checkpoint"] = snap["checkpoint"]
    return {k: v for k, v in fields.items() if v is not None}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    code, _ = run_command(args.command, args.config, serve=not args.no_serve)
    return int(code)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
