"""The training loop, checkpoints, artifacts and evaluation on tiny unet2d-ddpm models (CPU).

Run serially: ``flock /tmp/genforge-torch.lock pytest -m torch tests/trainer``.
"""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from genforge_trainer import cli, train  # noqa: E402
from genforge_trainer.checkpoint import CheckpointManager, TrainingState  # noqa: E402
from genforge_trainer.config import parse_run_spec  # noqa: E402
from genforge_trainer.evaluation import compare_image_sets  # noqa: E402
from genforge_trainer.imagedata import load_images  # noqa: E402
from genforge_trainer.models import load_pretrained  # noqa: E402
from genforge_trainer.progress import ProgressReporter  # noqa: E402

from .builders import make_document, merge  # noqa: E402
from .datasets import noise_images, shapes, write_prepared  # noqa: E402

pytestmark = pytest.mark.torch

TINY_MODEL = {
    "resolution": 16,
    "config": {"blockOutChannels": [16, 32], "layersPerBlock": 1, "inferenceSteps": 4},
}


class RecordingReporter(ProgressReporter):
    """A reporter that remembers every logged loss."""

    def __init__(self) -> None:
        super().__init__()
        self.losses: list[float] = []

    def update(self, **fields):
        if fields.get("loss") is not None and "samplesPerSecond" in fields:
            self.losses.append(fields["loss"])
        super().update(**fields)


def tiny_run(tmp: Path, dataset_uri: str, *, steps: int = 30, **overrides) -> dict:
    """A run document for a tiny model; ``overrides`` are deep-merged section by section."""
    base = make_document(
        output={"uri": f"file://{tmp}/out"},
        checkpoint={"uri": None, "everySteps": 0, "keep": 2},
        model=TINY_MODEL,
        dataset={"uri": dataset_uri},
        training={"steps": steps, "batchSize": 8, "learningRate": 2e-3, "logEverySteps": 5},
        evaluation=None,
    )
    drop = overrides.pop("drop", ())
    doc = merge(base, overrides)
    for key in drop:
        doc.pop(key, None)
    return doc


def _state(module) -> dict:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


# --------------------------------------------------------------------------- the loop


def test_loss_falls_and_run_leaves_model_checkpoints_samples_and_metrics(tmp_path, dataset_uri):
    reporter = RecordingReporter()
    doc = tiny_run(
        tmp_path,
        dataset_uri,
        steps=40,
        checkpoint={"everySteps": 10, "keep": 2},
        training={"ema": True, "emaDecay": 0.9, "lrWarmupSteps": 5, "lrScheduler": "cosine"},
        evaluation={"samples": 4, "metrics": ["loss", "fid", "kid"], "heldOutFraction": 0.25},
    )
    result = train.run(parse_run_spec(doc), reporter)

    assert reporter.losses[-1] < 0.6 * reporter.losses[0], reporter.losses
    assert result["step"] == 40 and result["totalSteps"] == 40
    assert [c.step for c in CheckpointManager(f"file://{tmp_path}/out/checkpoints", 2).list()] == [30, 40]
    assert (tmp_path / "out/samples.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    metrics = json.loads((tmp_path / "out/metrics.json").read_text())
    assert metrics == result["metrics"]
    assert metrics["featureExtractor"] == "random-conv-v1"
    assert {"loss", "fid", "kid"} <= set(metrics) and metrics["heldOut"] == 8
    progress = reporter.snapshot()
    assert progress["step"] == 40 and progress["checkpointStep"] == 40
    # where the time went: 39 steps of 8 after the first (start-up); checkpoints at 10, 20, 30, 40, the model
    timing = result["timing"]
    assert {k: timing[k] for k in ("startStep", "trainingSamples", "writes", "evaluationSamples",
                                   "inferenceSteps")} == {"startStep": 0, "trainingSamples": 312, "writes": 5,
                                                          "evaluationSamples": 4, "inferenceSteps": 4}
    assert all(timing[k] > 0 for k in ("startupSeconds", "trainingSeconds", "checkpointSeconds",
                                       "evaluationSeconds"))
    # 39 steps timed one by one: under three 16-step windows, the steady step is their mean,
    # which the loop's own clock (trainingSeconds, the same steps) agrees with
    assert timing["steadyStepSeconds"] == pytest.approx(timing["trainingSeconds"] / 39, rel=0.05)


def test_artifact_loads_offline_with_ddpm_pipeline_and_round_trips_exactly(tmp_path):
    from diffusers import DDPMPipeline

    uri = shapes(tmp_path / "data", count=16, size=16, labelled=False)
    spec = parse_run_spec(tiny_run(tmp_path, uri, steps=5))
    result = train.run(spec, ProgressReporter())
    pipe = DDPMPipeline.from_pretrained(result["artifact"].removeprefix("file://"), local_files_only=True)
    reloaded = load_pretrained(result["artifact"], spec.model)
    assert all(
        torch.equal(a, b)
        for a, b in zip(pipe.unet.state_dict().values(), reloaded.denoiser.state_dict().values(), strict=True)
    )
    image = pipe(batch_size=1, num_inference_steps=2, output_type="np").images
    assert image.shape == (1, 16, 16, 3)


def test_checkpoint_round_trips_and_half_written_checkpoints_are_ignored(tmp_path):
    manager = CheckpointManager(f"file://{tmp_path}/ckpt", keep=2)
    weights = {"denoiser.w": torch.randn(3, 4), "denoiser.b": torch.randn(4)}
    opt = {"state": {0: {"step": torch.tensor(3.0)}}, "param_groups": [{"lr": 0.1, "params": [0]}]}
    for step in (10, 20, 30):
        manager.save(
            TrainingState(step, weights, opt, {"last_epoch": step}, None, {"loss": 0.5}), {"a": 1}, 100
        )
    # A writer killed mid-way leaves a directory without its marker (and maybe a staging dir).
    (tmp_path / "ckpt/step-000040").mkdir()
    (tmp_path / "ckpt/step-000040/trainable.safetensors").write_bytes(b"half")
    (tmp_path / "ckpt/.step-000050.staging-abc").mkdir()

    latest = manager.latest()
    assert [c.step for c in manager.list()] == [20, 30]
    assert latest.step == 30 and latest.meta["config"] == {"a": 1} and latest.meta["totalSteps"] == 100
    state = manager.load(latest)
    assert all(torch.equal(state.trainable[k], weights[k]) for k in weights)
    assert state.lr_scheduler == {"last_epoch": 30} and state.extra["loss"] == 0.5


def test_a_new_object_under_an_old_output_refuses_its_checkpoints_instead_of_resuming_them(tmp_path, dataset_uri):
    """A run deleted and created again with the same name (and explicit output) gets a new uid:
    the old run's checkpoints are not resumed (nor its last step taken as "already done")."""
    old = tiny_run(tmp_path, dataset_uri, steps=6, checkpoint={"everySteps": 3},
                   run={"name": "shapes-v1", "uid": "0000-old"})
    config = tmp_path / "old.json"
    config.write_text(json.dumps(old))
    code, _ = cli.run_command("train", str(config), serve=False)
    assert code == 0
    assert [c.step for c in CheckpointManager(f"file://{tmp_path}/out/checkpoints", 2).list()] == [3, 6]

    new = merge(old, {"run": {"uid": "1111-new"}, "training": {"learningRate": 1e-4}})
    config.write_text(json.dumps(new))
    code, result = cli.run_command("train", str(config), serve=False)
    assert code == 2 and result["reason"] == "ForeignCheckpoint", result
    assert "uid 0000-old" in result["message"] and "uid 1111-new" in result["message"]
    assert "step-000006" in result["message"]
    # The same object resumes its own checkpoint as before (here: already at its last step).
    config.write_text(json.dumps(merge(old, {"training": {"steps": 6}})))
    code, result = cli.run_command("train", str(config), serve=False)
    assert code == 0 and result["step"] == 6


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _trainer(config: Path, env: dict) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "genforge_trainer.cli", "train", "--config", str(config)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _progress(port: int) -> dict | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/progress", timeout=2) as response:
            return json.loads(response.read())
    except OSError:
        return None


@pytest.mark.slow
def test_sigterm_checkpoints_exits_143_and_resume_finishes_like_an_uninterrupted_run(tmp_path, dataset_uri):
    steps = 30
    config = tmp_path / "run.json"
    config.write_text(json.dumps(tiny_run(tmp_path, dataset_uri, steps=steps, training={"logEverySteps": 1})))
    port = _free_port()
    env = {
        **os.environ,
        "GENFORGE_METRICS_HOST": "127.0.0.1",
        "GENFORGE_METRICS_PORT": str(port),
        "GENFORGE_TERMINATION_LOG": str(tmp_path / "termination-log"),
        "OMP_NUM_THREADS": "1",
    }

    first = _trainer(config, env)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        progress = _progress(port)
        if progress and progress["step"] >= 5:
            break
        assert first.poll() is None, first.stdout.read()
        time.sleep(0.2)
    first.send_signal(signal.SIGTERM)
    output = first.communicate(timeout=120)[0]
    assert first.returncode == 143, output
    stopped = json.loads((tmp_path / "termination-log").read_text())
    assert stopped["outcome"] == "Stopped" and 5 <= stopped["step"] < steps
    assert stopped["checkpoint"].endswith(f"step-{stopped['step']:06d}")

    second = _trainer(config, env)
    output = second.communicate(timeout=180)[0]
    assert second.returncode == 0, output
    finished = json.loads((tmp_path / "termination-log").read_text())
    assert finished["outcome"] == "Succeeded" and finished["step"] == steps
    assert f"resumed from file://{tmp_path}/out/checkpoints/step-{stopped['step']:06d}" in output

    # The same run without interruption ends with bit-identical weights (same thread count:
    # float reductions are ordered by it).
    straight = tmp_path / "straight"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        reference = train.run(
            parse_run_spec(tiny_run(straight, dataset_uri, steps=steps)), ProgressReporter()
        )
    finally:
        torch.set_num_threads(threads)
    spec = parse_run_spec(json.loads(config.read_text()))
    resumed = load_pretrained(finished["artifact"], spec.model).denoiser.state_dict()
    uninterrupted = load_pretrained(reference["artifact"], spec.model).denoiser.state_dict()
    assert all(torch.equal(resumed[k], uninterrupted[k]) for k in resumed)


def test_evaluate_command_reports_metrics_in_the_termination_message(
    tmp_path, monkeypatch, dataset_uri, base_model
):
    doc = tiny_run(
        tmp_path,
        dataset_uri,
        command="evaluate",
        drop=["training"],
        model={"baseUri": base_model},
        evaluation={"samples": 4, "metrics": ["loss", "kid"]},
    )
    config = tmp_path / "run.json"
    config.write_text(json.dumps(doc))
    monkeypatch.setenv("GENFORGE_TERMINATION_LOG", str(tmp_path / "log"))
    code, result = cli.run_command("evaluate", str(config), serve=False)
    assert code == 0, result
    message = json.loads((tmp_path / "log").read_text())
    assert message["outcome"] == "Succeeded" and message["artifact"] == base_model
    assert set(message["metrics"]) >= {"loss", "kid", "featureExtractor"}


def test_evaluation_samples_with_the_models_ddim_eta(tmp_path, monkeypatch, dataset_uri, base_model):
    """GenModel ``config.ddimEta`` reaches the evaluation's sampler: the same model, seed and
    initial noise give another grid with η 1 than with η 0, and the metrics say which η."""
    grids, reported = {}, {}
    for eta in (0.0, 1.0):
        out = tmp_path / f"eta{eta}"
        doc = tiny_run(out, dataset_uri, command="evaluate", drop=["training"],
                       model={"baseUri": base_model, "config": {**TINY_MODEL["config"], "ddimEta": eta}},
                       evaluation={"samples": 4, "metrics": ["loss"]})
        config = out / "run.json"
        config.parent.mkdir(parents=True, exist_ok=True)
        config.write_text(json.dumps(doc))
        monkeypatch.setenv("GENFORGE_TERMINATION_LOG", str(out / "log"))
        code, result = cli.run_command("evaluate", str(config), serve=False)
        assert code == 0, result
        reported[eta] = json.loads((out / "log").read_text())["metrics"]["ddimEta"]
        grids[eta] = (out / "out" / "samples.png").read_bytes()
    assert reported == {0.0: 0.0, 1.0: 1.0}
    assert grids[0.0] != grids[1.0]


# --------------------------------------------------------------------------- evaluation


class _TinyInception(torch.nn.Module):
    """An Inception-style TorchScript feature network built here (no download): float NCHW
    in [0, 255] in, pooled features out, with the ``return_features`` flag that the
    StyleGAN/clean-fid ``inception-2015-12-05.pt`` file takes."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(7)
        self.conv = torch.nn.Conv2d(3, 24, 3, stride=2)

    def forward(self, x: torch.Tensor, return_features: bool = False) -> torch.Tensor:
        h = torch.relu(self.conv(torch.nn.functional.interpolate(x / 255.0, size=(32, 32))))
        return torch.cat([h.mean(dim=(2, 3)), h.amax(dim=(2, 3))], dim=1)


def test_evaluation_with_a_torchscript_feature_extractor_names_it_with_its_fid_and_reference_set(
    tmp_path, monkeypatch, dataset_uri, base_model
):
    """Issue 15 item 9: featureExtractorUri (now an API field) drives FID/KID, and every
    figure carries the extractor's name and the reference set's identity."""
    extractor = tmp_path / "tiny-inception.pt"
    torch.jit.script(_TinyInception().eval()).save(str(extractor))
    results = {}
    for name, evaluation in (("inception", {"featureExtractorUri": f"file://{extractor}"}), ("default", {})):
        doc = tiny_run(tmp_path / name, dataset_uri, command="evaluate", drop=["training"],
                       model={"baseUri": base_model},
                       evaluation={"samples": 4, "metrics": ["fid", "kid"], "heldOutFraction": 0.25,
                                   "inferenceSteps": 2, **evaluation})
        config = tmp_path / f"{name}.json"
        config.write_text(json.dumps(doc))
        code, result = cli.run_command("evaluate", str(config), serve=False)
        assert code == 0, result
        results[name] = result["metrics"]
    assert results["inception"]["featureExtractor"] == "inception-torchscript:tiny-inception.pt"
    assert results["default"]["featureExtractor"] == "random-conv-v1"
    assert results["inception"]["fid"] != results["default"]["fid"]  # other features, other numbers
    assert results["inception"]["referenceSet"] == results["default"]["referenceSet"]  # same held-out images
    assert results["inception"]["referenceSet"].startswith("sha256:")
    assert results["inception"]["inferenceSteps"] == 2 and results["inception"]["heldOut"] >= 2




def test_fid_and_kid_order_same_distribution_below_different_below_noise(tmp_path):
    size, n = 32, 48
    real = load_images(shapes(tmp_path / "a", count=n, size=size, seed=1), size).pixels
    same = load_images(shapes(tmp_path / "b", count=n, size=size, seed=2), size).pixels
    different = load_images(shapes(tmp_path / "c", count=n, size=size, seed=3, only=("circle",)), size).pixels
    # "different": circles only, where the real set has eight shapes.
    noise_uri = write_prepared(tmp_path / "d", noise_images(n, size), [""] * n, [None] * n)
    noise = load_images(noise_uri, size).pixels

    scores = {
        name: compare_image_sets(real, other)
        for name, other in [("same", same), ("different", different), ("noise", noise)]
    }
    for metric in ("fid", "kid"):
        assert scores["same"][metric] < scores["different"][metric] < scores["noise"][metric], scores
    assert scores["same"]["featureExtractor"] == "random-conv-v1"


def test_held_out_loss_is_deterministic(tmp_path, dataset_uri, base_model):
    from genforge_trainer.evaluation import held_out_loss

    spec = parse_run_spec(tiny_run(tmp_path, dataset_uri, model={"baseUri": base_model}))
    model = load_pretrained(base_model, spec.model)
    data = load_images(dataset_uri, 16)
    first = held_out_loss(model, model.denoiser, data, seed=0)
    assert first == held_out_loss(model, model.denoiser, data, seed=0)
    assert math.isfinite(first) and first > 0


def test_batch_order_is_a_pure_function_of_position_and_ranks_do_not_overlap():
    from genforge_trainer.imagedata import BatchSampler

    one = BatchSampler(10, 4, seed=3)
    again = BatchSampler(10, 4, seed=3)
    assert [one.indices(k).tolist() for k in (0, 1, 2, 7)] == [
        again.indices(k).tolist() for k in (0, 1, 2, 7)
    ]
    epoch = [i for k in range(5) for i in BatchSampler(20, 4, seed=0).indices(k).tolist()]
    assert sorted(epoch) == list(range(20))  # one epoch = a permutation
    rank0, rank1 = BatchSampler(16, 4, 0, rank=0, world=2), BatchSampler(16, 4, 0, rank=1, world=2)
    both = [i for k in range(2) for r in (rank0, rank1) for i in r.indices(k).tolist()]
    assert sorted(both) == list(range(16))


@pytest.mark.parametrize(
    ("requested", "steps", "device", "expected"),
    [
        (None, 5000, "cuda", True),
        (None, 100, "cuda", False),
        (None, 5000, "cpu", False),
        (True, 10, "cpu", True),
        (False, 5000, "cuda", False),
    ],
)
def test_compile_is_automatic_only_for_long_cuda_runs(requested, steps, device, expected):
    assert train._should_compile(requested, steps, torch.device(device)) is expected


# --------------------------------------------------------------------------- recipe knobs (issue 21)


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction", "sample"])
def test_min_snr_weights_follow_the_paper(prediction):
    from diffusers import DDPMScheduler

    from genforge_trainer.methods import snr_weights

    scheduler = DDPMScheduler(num_train_timesteps=1000, prediction_type=prediction)
    t = torch.tensor([0, 100, 500, 999])
    alpha_bar = scheduler.alphas_cumprod[t].double()
    snr = alpha_bar / (1 - alpha_bar)
    # The squared error of an epsilon, v or x0 prediction is SNR, SNR + 1 or 1 times the
    # image's; whatever the model predicts, the image's error ends up weighted by
    # min(SNR, γ): the many easy low-noise steps count no more than a step at SNR γ.
    image_error_factor = {"epsilon": snr, "v_prediction": snr + 1, "sample": torch.ones_like(snr)}[prediction]
    weights = snr_weights(scheduler, t, 5.0).double()
    assert torch.allclose(weights * image_error_factor, torch.clamp(snr, max=5.0), rtol=1e-4)


def test_a_zero_terminal_snr_v_prediction_run_with_min_snr_and_ema_trains_and_reports_statistics(
    tmp_path, dataset_uri
):
    reporter = RecordingReporter()
    doc = tiny_run(
        tmp_path,
        dataset_uri,
        steps=40,
        model={"config": {"predictionType": "v_prediction", "rescaleBetasZeroSnr": True,
                          "timestepSpacing": "trailing"}},
        training={"snrGamma": 5.0, "ema": True, "emaDecay": 0.999},
        evaluation={"samples": 8, "metrics": ["loss"], "heldOutFraction": 0.25},
    )
    result = train.run(parse_run_spec(doc), reporter)
    assert all(math.isfinite(loss) for loss in reporter.losses)
    assert reporter.losses[-1] < reporter.losses[0], reporter.losses
    model = load_pretrained(result["artifact"], parse_run_spec(doc).model)
    config = model.noise_scheduler.config
    assert config.rescale_betas_zero_snr and config.timestep_spacing == "trailing"
    assert float(model.noise_scheduler.alphas_cumprod[-1]) < 1e-6  # training's last step is pure noise
    # The evaluation's sample statistics are there, resting on the 8 samples (the tiny
    # dataset is the synthetic shapes: plain backgrounds, labels).
    metrics = result["metrics"]
    assert metrics["statisticsSamples"] == 8 and metrics["dataBackgrounds"] >= 1
    assert 0 <= metrics["onDataBackground"] <= 1 and 0 <= metrics["labelColour"] <= 1
    assert metrics["backgroundNoise"] >= 0 and metrics["dataBackgroundNoise"] < 1
