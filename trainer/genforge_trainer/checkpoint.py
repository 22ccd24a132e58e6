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
The marker also records each file's size, and ``list()`` checks sizes and safetensors
headers, so a damaged checkpoint (truncated, overwritten) is skipped too and a resume
falls back to the previous one instead of crashing on every retry.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import struct
import tempfile
import time
from dataclasses import dataclass
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from genforge_trainer import storage
from genforge_trainer.exitcodes import ForeignCheckpoint, StorageError

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


def refuse_foreign_checkpoint(info: CheckpointInfo, run: Any) -> None:
    """Raise ``ForeignCheckpoint`` when ``info`` was written by another object than ``run``.

    Each checkpoint carries the run spec it was written under, with the object's uid. A
    checkpoint of another uid under this run's output — a run deleted and created again with
    the same name and an explicit ``output.uri``, or two runs sharing one — must not be
    resumed: it would continue (or, at its last step, skip) someone else's training. Runs
    without a uid (``genforge-trainer`` by hand) and checkpoints written before uids were
    recorded are accepted.
    """
    owner = ((info.meta.get("config") or {}).get("run")) or {}
    theirs, ours = owner.get("uid") or "", getattr(run, "uid", "") or ""
    if theirs and ours and theirs != ours:
        raise ForeignCheckpoint(
            f"checkpoint {storage.redact_url(info.uri)} belongs to {owner.get('kind', '?')} "
            f"{owner.get('namespace', '?')}/{owner.get('name', '?')} (uid {theirs}), not to this run "
            f"(uid {ours}): an earlier object with this name (or another run) wrote to this output. "
            "Give the run its own output.uri (or leave it unset: the default is keyed by uid), "
            "or delete the old checkpoints to start afresh."
        )


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
            damage = _damage(uri, meta)
            if damage:
                log.warning("ignoring damaged checkpoint %s: %s", storage.redact_url(uri), damage)
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
                    meta["files"] = {
                        n: os.path.getsize(os.path.join(workdir, n)) for n in sorted(os.listdir(workdir))
                    }
                    if local is None:
                        fs, remote = storage.filesystem(stage.url)
                        fs.put(workdir.rstrip("/") + "/", remote, recursive=True)
                    # The marker goes last: its presence means "complete".
                    storage.write_bytes(storage.join(stage.url, MARKER), json.dumps(meta, indent=1).encode())
                finally:
                    if local is None:
                        shutil.rmtree(workdir, ignore_errors=True)
                stage.commit()
        except (OSError, SafetensorError, RuntimeError) as exc:
            # safetensors and torch.save report a full disk as their own errors, not OSError.
            if not isinstance(exc, OSError) and not _io_failure(exc):
                raise
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


def _io_failure(exc: BaseException) -> bool:
    """Whether a library's error is the file system failing (ENOSPC, EIO, ...)."""
    text = str(exc)
    return any(
        sign in text
        for sign in ("I/O error", "os error", "No space left", "failed writing", "unexpected pos")
    )


def _damage(uri: str, meta: dict[str, Any]) -> str | None:
    """Why the files of a marked checkpoint cannot be what was written, or None."""
    fs, root = storage.filesystem(uri)
    files = meta.get("files")
    names = list(files) if isinstance(files, dict) else ["trainable.safetensors"]  # markers before sizes
    for name in names:
        path = f"{root.rstrip('/')}/{name}"
        try:
            size = int(fs.size(path))
        except (FileNotFoundError, OSError):
            return f"{name} is missing"
        if isinstance(files, dict) and size != files[name]:
            return f"{name} has {size} bytes, {files[name]} were written"
        if name.endswith(".safetensors"):
            with fs.open(path, "rb") as handle:
                problem = _safetensors_damage(handle, size)
            if problem:
                return f"{name}: {problem}"
    return None


def _safetensors_damage(handle: Any, size: int) -> str | None:
    """A safetensors file is an 8-byte header length, a JSON header, then the tensors' bytes."""
    head = handle.read(8)
    if len(head) < 8:
        return "truncated header"
    (length,) = struct.unpack("<Q", head)
    if length > min(size - 8, 100 << 20):
        return "invalid header length"
    try:
        header = json.loads(handle.read(length))
        end = max((int(t["data_offsets"][1]) for k, t in header.items() if k != "__metadata__"), default=0)
    except (ValueError, KeyError, TypeError, IndexError, AttributeError):
        return "unreadable header"
    if 8 + length + end != size:
        return f"{size} bytes, the header describes {8 + length + end}"
    return None
