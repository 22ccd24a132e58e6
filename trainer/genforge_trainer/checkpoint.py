"""Checkpoints: atomic, rotated, self-describing (they carry their config and step).

Layout under the run's checkpoint URI::

    step-000500/
        trainable.safetensors   the method's trainable tensors (whole UNet, LoRA, one row, ...)
        ema.safetensors         EMA shadow weights (when EMA is on)
        optimizer.pt            optimizer + LR scheduler state
        checkpoint.json         {"step", "totalSteps", "loss", "config", "createdAt"} — written LAST

A checkpoint is built in a hidden staging directory and renamed into place (object
stores: uploaded, with ``checkpoint.json`` last), so a directory without a readable
``checkpoint.json`` — a writer killed half-way — is never picked: ``latest()`` skips it.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from genforge_trainer import storage
from genforge_trainer.exitcodes import StorageError

log = logging.getLogger(__name__)

MARKER = "checkpoint.json"
_NAME = re.compile(r"^step-(\d{6,})$")


def checkpoint_name(step: int) -> str:
    return f"step-{step:06d}"


@dataclass(frozen=True)
class CheckpointInfo:
    step: int
    uri: str
    meta: dict[str, Any]


@dataclass
class TrainingState:
    """What a checkpoint holds, in memory."""

    step: int
    trainable: dict[str, torch.Tensor]
    optimizer: dict[str, Any] | None = None
    lr_scheduler: dict[str, Any] | None = None
    ema: dict[str, torch.Tensor] | None = None
    extra: dict[str, Any] | None = None  # loss, method-specific JSON-able facts


def _contiguous_cpu(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # safetensors refuses shared storage; clone() breaks any aliasing (tied weights).
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}


class CheckpointManager:
    def __init__(self, uri: str, keep: int) -> None:
        self.uri = uri.rstrip("/")
        self.keep = keep

    # ------------------------------------------------------------------ listing
    def list(self) -> list[CheckpointInfo]:
        """Complete checkpoints, oldest first."""
        try:
            fs, root = storage.filesystem(self.uri)
            if not fs.isdir(root):
                return []
            names = [os.path.basename(p.rstrip("/")) for p in fs.ls(root, detail=False)]
        except FileNotFoundError:
            return []
        found = []
        for name in names:
            match = _NAME.match(name)
            if not match:
                continue
            uri = storage.join(self.uri, name)
            try:
                meta = json.loads(storage.read_bytes(storage.join(uri, MARKER)))
            except (FileNotFoundError, ValueError, StorageError):
                log.warning("ignoring incomplete checkpoint %s", storage.redact_url(uri))
                continue
            if meta.get("step") != int(match.group(1)):
                continue
            found.append(CheckpointInfo(int(match.group(1)), uri, meta))
        return sorted(found, key=lambda c: c.step)

    def latest(self) -> CheckpointInfo | None:
        found = self.list()
        return found[-1] if found else None

    # ------------------------------------------------------------------ writing
    def save(self, state: TrainingState, config: dict[str, Any], total_steps: int) -> CheckpointInfo:
        """Write ``state`` atomically as ``step-NNNNNN``, then rotate to ``keep``."""
        final = storage.join(self.uri, checkpoint_name(state.step))
        meta = {
            "step": state.step,
            "totalSteps": total_steps,
            "createdAt": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "extra": state.extra or {},
            "config": config,
        }
        started = time.monotonic()
        try:
            with storage.StagedDirectory(final) as stage:
                local = storage.local_path(stage.url)
                workdir = local or tempfile.mkdtemp(prefix="genforge-ckpt-")
                try:
                    self._write_files(workdir, state)
                    if local is None:
                        fs, remote = storage.filesystem(stage.url)
                        fs.put(workdir.rstrip("/") + "/", remote, recursive=True)
                    # The marker goes last: its presence means "complete".
                    storage.write_bytes(storage.join(stage.url, MARKER), json.dumps(meta, indent=1).encode())
                finally:
                    if local is None:
                        shutil.rmtree(workdir, ignore_errors=True)
                stage.commit()
        except OSError as exc:
            raise StorageError(f"cannot write checkpoint {storage.redact_url(final)}: {exc}") from exc
        log.info(
            "checkpoint step %d written to %s in %.1fs",
            state.step,
            storage.redact_url(final),
            time.monotonic() - started,
        )
        self.rotate()
        return CheckpointInfo(state.step, final, meta)

    @staticmethod
    def _write_files(directory: str, state: TrainingState) -> None:
        save_file(_contiguous_cpu(state.trainable), os.path.join(directory, "trainable.safetensors"))
        if state.ema is not None:
            save_file(_contiguous_cpu(state.ema), os.path.join(directory, "ema.safetensors"))
        torch.save(
            {"optimizer": state.optimizer, "lr_scheduler": state.lr_scheduler},
            os.path.join(directory, "optimizer.pt"),
        )

    def rotate(self) -> None:
        for old in self.list()[: -self.keep]:
            storage.remove_tree(old.uri)
            log.info("removed old checkpoint %s", storage.redact_url(old.uri))

    # ------------------------------------------------------------------ reading
    def load(self, info: CheckpointInfo) -> TrainingState:
        from genforge_trainer.models import local_dir

        with local_dir(info.uri) as path:
            trainable = load_file(os.path.join(path, "trainable.safetensors"))
            ema_path = os.path.join(path, "ema.safetensors")
            ema = load_file(ema_path) if os.path.exists(ema_path) else None
            opt = torch.load(os.path.join(path, "optimizer.pt"), map_location="cpu", weights_only=False)
        return TrainingState(
            info.step, trainable, opt.get("optimizer"), opt.get("lr_scheduler"), ema, info.meta.get("extra")
        )
