"""``genforge-trainer train|finetune``: the one training loop, read top to bottom.

accelerator -> data -> model -> method (what trains, what the loss is) -> optimizer and
LR schedule -> EMA -> ``prepare`` -> resume from the latest checkpoint -> loop (gradient
accumulation, clipping, EMA, progress, periodic checkpoints, SIGTERM) -> artifacts ->
evaluation. Single process on CPU; multi-GPU / multi-node through the torchrun environment
the operator sets (accelerate reads it); TPU when torch-xla is present.

Throughput choices (see benchmarks/bench_trainer.py): images decoded once into a uint8
tensor and normalised on the device; no per-step host synchronisation (the loss is
accumulated on the device and read only when logging); fused AdamW (CUDA and CPU); ``torch.compile`` on CUDA for long runs (``training.compile``).
"""

from __future__ import annotations

import hashlib
import logging
import math
import sys
import time
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import ProjectConfiguration, set_seed
from diffusers.optimization import get_scheduler
from tqdm.auto import tqdm

from genforge_trainer import storage
from genforge_trainer.checkpoint import CheckpointManager, TrainingState, refuse_foreign_checkpoint
from genforge_trainer.config import AUTO_COMPILE_MIN_STEPS, EvaluationSpec, RunSpec, to_document
from genforge_trainer.evaluation import evaluate_model
from genforge_trainer.exitcodes import DataError, Stopped
from genforge_trainer.imagedata import load_images, split_held_out
from genforge_trainer.methods import build_method
from genforge_trainer.models import check_guidance_config, load_or_build
from genforge_trainer.progress import ProgressReporter
from genforge_trainer.timing import RunTimer

log = logging.getLogger(__name__)


def step_generator(seed: int, step: int, micro: int, rank: int, device: torch.device) -> torch.Generator:
    """The RNG for one micro-batch's noise and timesteps: a pure function of its position,
    so a resumed run draws exactly what an uninterrupted one would have."""
    digest = hashlib.blake2b(f"{seed}/{step}/{micro}/{rank}".encode(), digest_size=8).digest()
    return torch.Generator(device=device).manual_seed(int.from_bytes(digest, "little") & (2**63 - 1))


def _mixed_precision(requested: str) -> str:
    if requested == "fp16" and not torch.cuda.is_available():
        log.warning("mixedPrecision fp16 needs a GPU; training in full precision on this CPU")
        return "no"
    return requested


def run(spec: RunSpec, reporter: ProgressReporter) -> dict[str, Any]:
    training = spec.training
    total_steps = training.steps
    timer = RunTimer()
    reporter.update(phase=spec.command, totalSteps=total_steps)

    # ---- accelerator
    trackers = list(training.trackers)
    accelerator = Accelerator(
        mixed_precision=_mixed_precision(training.mixed_precision),
        gradient_accumulation_steps=training.gradient_accumulation,
        log_with=trackers or None,
        project_config=ProjectConfiguration(
            project_dir=storage.local_path(storage.join(spec.output.uri, "logs")) or "/tmp/genforge-logs"
        ),
    )
    device, rank, world = accelerator.device, accelerator.process_index, accelerator.num_processes
    set_seed(training.seed)
    if trackers:
        accelerator.init_trackers(spec.run.name, config={"run": spec.run.name, "method": spec.command})

    # ---- data
    data = load_images(spec.dataset.uri, spec.model.resolution)
    held_fraction = spec.evaluation.held_out_fraction if spec.evaluation else 0.0
    train_idx, held_idx = split_held_out(len(data), held_fraction, training.seed)
    train_data, held_out = data.subset(train_idx), data.subset(held_idx)
    if len(train_data) == 0:
        raise DataError("no training images after holding out the evaluation split")

    # ---- model and method
    model = load_or_build(spec.model, train_data.label_names)
    check_guidance_config(model, spec.model.config)  # before training, not at the evaluation after it
    method = build_method(spec, model, train_data, device)
    weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(
        accelerator.mixed_precision, torch.float32
    )
    model.to(device, dtype=weight_dtype if model.latent and device.type == "cuda" else None)
    params = method.trainable_parameters()
    log.info(
        "%s: %d trainable of %d denoiser parameters; %d training images, %d held out; %d process(es) on %s",
        method.name,
        sum(p.numel() for p in params),
        sum(p.numel() for p in model.denoiser.parameters()),
        len(train_data),
        len(held_out),
        world,
        device,
    )

    # ---- optimizer, schedule, EMA
    optimizer = torch.optim.AdamW(
        params,
        lr=training.learning_rate,
        weight_decay=training.weight_decay,
        # One fused kernel instead of a Python loop over the parameters: on CPU too
        # (benchmarks/bench_step_variants.py; the demo's 145 small tensors took ~5 ms a step).
        fused=device.type in ("cuda", "cpu") or None,
    )
    lr_scheduler = get_scheduler(
        training.lr_scheduler,
        optimizer,
        num_warmup_steps=training.lr_warmup_steps * world,
        num_training_steps=total_steps * world,
    )
    ema = None
    if training.ema:
        from diffusers.training_utils import EMAModel

        ema = EMAModel(params, decay=training.ema_decay, foreach=True)
        ema.to(device)

    # ---- prepare
    names = list(method.modules)
    prepared = accelerator.prepare(*[method.modules[n] for n in names], optimizer, lr_scheduler)
    method.modules = dict(zip(names, prepared[: len(names)], strict=True))
    optimizer, lr_scheduler = prepared[len(names) :]
    if _should_compile(training.compile, total_steps, device):
        log.info("compiling the denoiser with torch.compile")
        method.modules["denoiser"] = torch.compile(method.modules["denoiser"])
    method.configure_sampler(training.batch_size, training.seed, rank, world)

    # ---- resume
    checkpoints = CheckpointManager(spec.checkpoint_uri, spec.checkpoint.keep)
    start_step, last_loss = 0, None
    latest = checkpoints.latest()
    if latest is not None:
        refuse_foreign_checkpoint(latest, spec.run)
        state = checkpoints.load(latest)
        method.load_trainable_state(state.trainable)
        if state.optimizer:
            optimizer.load_state_dict(state.optimizer)
        if state.lr_scheduler:
            lr_scheduler.load_state_dict(state.lr_scheduler)
        if ema is not None and state.ema is not None:
            ema.load_state_dict(_ema_state_from_tensors(ema, state.ema))
        start_step, last_loss = latest.step, (state.extra or {}).get("loss")
        log.info("resumed from %s (step %d of %d)", storage.redact_url(latest.uri), start_step, total_steps)
        reporter.update(checkpointStep=start_step, checkpoint=latest.uri)
    reporter.update(step=start_step, loss=last_loss)

    def save_checkpoint(step: int, loss: float | None) -> None:
        if accelerator.is_main_process:
            with timer.part("checkpoint"):
                info = checkpoints.save(
                    TrainingState(
                        step,
                        method.trainable_state(),
                        optimizer.state_dict(),
                        lr_scheduler.state_dict(),
                        _ema_tensors(ema),
                        {"loss": loss, "method": method.name},
                    ),
                    to_document(spec),
                    total_steps,
                )
            timer.writes += 1
            reporter.update(checkpointStep=step, checkpoint=info.uri)
        accelerator.wait_for_everyone()

    # ---- loop
    samples_per_step = training.batch_size * training.gradient_accumulation * world
    denoiser = method.modules["denoiser"]
    denoiser.train()
    bar = tqdm(
        total=total_steps,
        initial=start_step,
        disable=not accelerator.is_main_process,
        file=sys.stderr,
        mininterval=5,
        desc=f"{spec.command} {spec.run.name}",
    )
    window_loss = torch.zeros((), device=device)
    window_steps, window_start = 0, time.perf_counter()
    loss_value = last_loss
    step = start_step
    timer.start_step = start_step
    loop_start, writes_before = time.perf_counter(), 0.0
    while step < total_steps:
        step_begun, writes_at_step = time.perf_counter(), timer.seconds["checkpoint"]
        for micro in range(training.gradient_accumulation):
            with accelerator.accumulate(*method.modules.values()):
                batch = method.next_batch(step * training.gradient_accumulation + micro)
                loss = method.loss(batch, step_generator(training.seed, step, micro, rank, device))
                accelerator.backward(loss)
                if accelerator.sync_gradients and training.max_grad_norm > 0:
                    accelerator.clip_grad_norm_(params, training.max_grad_norm)
                optimizer.step()
                lr_scheduler.step()
                optimizer.zero_grad(set_to_none=True)
            window_loss += loss.detach() / training.gradient_accumulation
        method.after_step()
        if ema is not None:
            ema.step(params)
        step += 1
        window_steps += 1
        bar.update(1)
        if step == start_step + 1:  # the first step (warm-up) is the end of start-up
            timer.training_begins(start_step)
            loop_start, writes_before = time.perf_counter(), timer.seconds["checkpoint"]

        if step % training.log_every_steps == 0 or step == total_steps:
            loss_value = float(accelerator.reduce(window_loss, reduction="mean")) / window_steps
            elapsed = time.perf_counter() - window_start
            sps = round(window_steps * samples_per_step / elapsed, 2) if elapsed > 0 else None
            lr = lr_scheduler.get_last_lr()[0]
            reporter.update(step=step, loss=round(loss_value, 6), samplesPerSecond=sps, learningRate=lr)
            reporter.add_samples(window_steps * samples_per_step)
            reporter.record_gpu_memory(device)
            bar.set_postfix(loss=f"{loss_value:.4f}", sps=sps)
            if trackers:
                accelerator.log({"loss": loss_value, "samples_per_second": sps, "lr": lr}, step=step)
            if not math.isfinite(loss_value):
                raise DataError(
                    f"loss became {loss_value} at step {step}; lower the learning rate or check the data"
                )
            window_loss.zero_()
            window_steps, window_start = 0, time.perf_counter()
        else:
            reporter.update(step=step)

        if _stop_requested(reporter, accelerator):
            save_checkpoint(step, loss_value)
            bar.close()
            raise Stopped(
                f"stopped on SIGTERM at step {step} of {total_steps}; checkpoint written",
                {
                    "step": step,
                    "totalSteps": total_steps,
                    "loss": loss_value,
                    "checkpoint": reporter.snapshot().get("checkpoint"),
                },
            )
        if spec.checkpoint.every_steps and step % spec.checkpoint.every_steps == 0 and step < total_steps:
            save_checkpoint(step, loss_value)
        if step > start_step + 1:  # the first step is start-up's
            timer.step_done(time.perf_counter() - step_begun - (timer.seconds["checkpoint"] - writes_at_step))
    bar.close()
    timer.seconds["training"] = time.perf_counter() - loop_start - (timer.seconds["checkpoint"] - writes_before)
    timer.training_samples = max(0, step - start_step - 1) * samples_per_step
    if spec.checkpoint.every_steps and (latest is None or latest.step < total_steps):
        save_checkpoint(total_steps, loss_value)  # a retry after a late failure skips training

    # ---- artifacts and evaluation
    result: dict[str, Any] = {
        "step": step,
        "totalSteps": total_steps,
        "loss": loss_value,
        "samplesPerSecond": reporter.snapshot().get("samplesPerSecond"),
        "checkpoint": reporter.snapshot().get("checkpoint"),
    }
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if ema is not None:
            ema.store(params)
            ema.copy_to(params)
        with timer.part("checkpoint"):
            result.update(method.save_artifacts())
        timer.writes += 1
        if spec.evaluation is not None:
            reporter.update(phase="evaluate")
            evaluation = spec.evaluation or EvaluationSpec()
            held = (
                held_out
                if len(held_out)
                else train_data.subset(range(min(len(train_data), evaluation.samples)))
            )
            with timer.part("evaluation"):
                result.update(
                    evaluate_model(
                        spec, model, method.evaluation_denoiser(), held, reference=data,
                        progress=lambda msg: log.info("%s", msg),
                    )
                )
            timer.evaluation_samples = evaluation.samples
            timer.inference_steps = evaluation.inference_steps or spec.model.config.inference_steps
        if ema is not None:
            ema.restore(params)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    result["timing"] = timer.report()
    return result


def _should_compile(requested: bool | None, steps: int, device: torch.device) -> bool:
    if requested is not None:
        return requested
    return device.type == "cuda" and steps >= AUTO_COMPILE_MIN_STEPS


def _stop_requested(reporter: ProgressReporter, accelerator: Accelerator) -> bool:
    requested = reporter.stop.requested
    if accelerator.num_processes == 1:
        return requested
    flag = torch.tensor([1.0 if requested else 0.0], device=accelerator.device)
    return bool(accelerator.reduce(flag, reduction="sum").item() > 0)


def _ema_tensors(ema) -> dict[str, torch.Tensor] | None:
    if ema is None:
        return None
    return {f"shadow.{i}": t for i, t in enumerate(ema.shadow_params)} | {
        "optimization_step": torch.tensor(ema.optimization_step)
    }


def _ema_state_from_tensors(ema, tensors: dict[str, torch.Tensor]) -> dict[str, Any]:
    state = ema.state_dict()
    count = len(ema.shadow_params)
    state["shadow_params"] = [tensors[f"shadow.{i}"] for i in range(count)]
    state["optimization_step"] = int(tensors["optimization_step"])
    return state
