"""Trainer exit codes and the exceptions that map onto them.

The codes are part of the operator <-> trainer contract (docs/contract.md): the Job's
`podFailurePolicy` fails the Job at once on CONFIG_ERROR, DATA_ERROR and STORAGE_ERROR
(retrying cannot help), counts ERROR towards `backoffLimit`, and treats SIGTERM (the
trainer checkpointed and stopped) as a retryable disruption.
"""

from __future__ import annotations

import errno
from enum import IntEnum
from typing import Any


class ExitCode(IntEnum):
    OK = 0
    ERROR = 1
    CONFIG_ERROR = 2
    DATA_ERROR = 3
    STORAGE_ERROR = 4
    SIGTERM = 143


OK = ExitCode.OK
ERROR = ExitCode.ERROR
CONFIG_ERROR = ExitCode.CONFIG_ERROR
DATA_ERROR = ExitCode.DATA_ERROR
STORAGE_ERROR = ExitCode.STORAGE_ERROR
SIGTERM = ExitCode.SIGTERM


class TrainerError(Exception):
    """A failure the trainer understands; `exit_code` and `reason` reach the operator."""

    exit_code: ExitCode = ExitCode.ERROR
    reason: str = "Error"


class ConfigError(TrainerError, ValueError):
    """The run spec is invalid or asks for something unsupported."""

    exit_code = ExitCode.CONFIG_ERROR
    reason = "ConfigError"


class ForeignCheckpoint(ConfigError):
    """The output location holds checkpoints of another object (a run deleted and created
    again under the same name, or two runs given one output.uri): resuming would continue a
    stranger's training."""

    reason = "ForeignCheckpoint"


class DataError(TrainerError):
    """Data unreadable, or nothing left after filtering."""

    exit_code = ExitCode.DATA_ERROR
    reason = "DataError"


class StorageError(TrainerError):
    """Output not writable: disk full, permissions, read-only file system."""

    exit_code = ExitCode.STORAGE_ERROR
    reason = "StorageError"


class Stopped(TrainerError):
    """Stopped on SIGTERM, after writing a checkpoint when the command can resume.

    `details` carries termination-message fields (step, checkpoint, ...).
    """

    exit_code = ExitCode.SIGTERM
    reason = "Stopped"

    def __init__(self, message: str = "stopped on SIGTERM", details: dict[str, Any] | None = None):
        super().__init__(message)
        self.details = dict(details or {})


# errno values that mean "the output location is unusable" rather than a bug.
_STORAGE_ERRNOS = {errno.ENOSPC, errno.EACCES, errno.EPERM, errno.EROFS, errno.EDQUOT}


def exit_code_for(exc: BaseException) -> ExitCode:
    """The exit code for an exception that escaped a command."""
    if isinstance(exc, TrainerError):
        return exc.exit_code
    if isinstance(exc, OSError) and exc.errno in _STORAGE_ERRNOS:
        return ExitCode.STORAGE_ERROR
    return ExitCode.ERROR


def reason_for(exc: BaseException) -> str:
    if isinstance(exc, TrainerError):
        return exc.reason
    if exit_code_for(exc) == ExitCode.STORAGE_ERROR:
        return "StorageError"
    return type(exc).__name__
