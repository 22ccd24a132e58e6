"""`genforge demo`: its pure parts, and its whole path with smaller numbers (real trainer processes)."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from genforge_local import demo
from genforge_local.control_plane import LocalControlPlane
from genforge_operator.bundled import examples_dir


@pytest.fixture(scope="module")
def manifests():
    return demo.load_manifests(examples_dir())


def test_the_extra_run_gets_a_time_limit_it_will_reach(manifests):
    run = demo.over_budget_run(manifests)
    original = next(m for m in manifests if m["kind"] == "TrainingRun")
    assert run["metadata"]["name"] == f"{original['metadata']['name']}-over-budget"
    assert run["spec"]["budget"]["maxDuration"] == "20s" and run["spec"]["budget"]["onExceeded"] == "Stop"
    # Ten times the steps: still training when its 20 s come, however fast the machine.
    assert run["spec"]["training"] == {**original["spec"]["training"],
                                       "steps": original["spec"]["training"]["steps"] * demo.OVER_BUDGET_STEP_FACTOR}
    assert original["spec"]["budget"].get("maxDuration") != "20s"  # the examples are untouched


def test_the_runs_pool_calibrates_first_and_the_examples_follow(manifests):
    first, rest = demo.calibrate_first(manifests, namespace="default")
    assert {m["kind"] for m in first} == {"AcceleratorPool", "Budget"}
    assert {m["kind"] for m in rest} == {"Dataset", "GenModel", "TrainingRun", "FineTune"}
    asked = {m["metadata"]["name"]: m["spec"].get("calibration") for m in first if m["kind"] == "AcceleratorPool"}
    # only the pool the runs name (cpu) measures itself; the others have no nodes here
    assert asked == {"cpu": {"enabled": True, "namespace": "default", "steps": demo.DEMO_CALIBRATION_STEPS},
                     "gpu-l4": None, "tpu-v5e": None}
    assert demo.calibration_names(first) == {("Dataset", "calibrate-cpu"), ("TrainingRun", "calibrate-cpu")}
    assert all("calibration" not in m["spec"] for m in manifests if m["kind"] == "AcceleratorPool")  # untouched


def test_shrink_divides_steps_and_keeps_checkpoints_inside(manifests):
    small = demo.shrink(manifests, 10)
    for before, after in zip(manifests, small, strict=True):
        if before["kind"] in ("TrainingRun", "FineTune"):
            assert after["spec"]["training"]["steps"] == max(5, before["spec"]["training"]["steps"] // 10)
            assert after["spec"]["checkpoint"]["everySteps"] <= after["spec"]["training"]["steps"]
            # The CRD refuses a warm-up longer than the run: shrinking keeps it inside.
            assert after["spec"]["training"].get("lrWarmupSteps", 0) <= after["spec"]["training"]["steps"]
    tiny = demo.shrink(manifests, 1000)
    run = next(m for m in tiny if m["kind"] == "TrainingRun")
    assert run["spec"]["training"]["steps"] == 5 and run["spec"]["training"]["lrWarmupSteps"] == 5


def test_long_multiplies_the_training_runs_steps_only_and_the_cli_refuses_quick_with_it(manifests):
    import argparse

    from genforge_operator import schema

    long = demo.lengthen(manifests, demo.LONG_STEP_FACTOR)
    for before, after in zip(manifests, long, strict=True):
        if before["kind"] == "TrainingRun":
            assert after["spec"]["training"] == {**before["spec"]["training"],
                                                 "steps": before["spec"]["training"]["steps"] * 4}
            assert after["spec"]["checkpoint"] == before["spec"]["checkpoint"]
            assert schema.validate(after) == []  # still a valid TrainingRun (steps within the CRD's bounds)
        else:
            assert after == before  # FineTunes, models, data and pools untouched
    assert next(m for m in manifests if m["kind"] == "TrainingRun")["spec"]["training"]["steps"] == 2200
    parser = argparse.ArgumentParser()
    demo.add_arguments(parser)
    assert parser.parse_args(["--long"]).long
    with pytest.raises(SystemExit):
        parser.parse_args(["--long", "--quick"])


def run_obj(phase, **status):
    return {"kind": "TrainingRun", "metadata": {"name": "r"}, "spec": {"training": {"steps": 100}},
            "status": {"phase": phase, **status}}


ROWS = {
    "waiting says why": (run_obj("Waiting", conditions=[{"type": "Admitted", "status": "False",
                                                          "reason": "DatasetNotReady", "message": "not yet"}]),
                         "TrainingRun r                        Waiting        [........................]    0/100  "
                         "- of -  (DatasetNotReady: not yet)"),
    "running with a bar": (run_obj("Running", progress={"step": 50, "totalSteps": 100, "loss": 0.25},
                                   cost={"accrued": "0.0012", "limit": "1"}),
                           "TrainingRun r                        Running        [############............]   50/100"
                           "  loss 0.2500  $0.0012 of $1.00"),
    "a dataset counts": ({"kind": "Dataset", "metadata": {"name": "d"},
                          "status": {"phase": "Ready", "items": {"kept": 250, "total": 256}}},
                         "Dataset     d                        Ready          250/256 kept"),
}


@pytest.mark.parametrize("obj,line", ROWS.values(), ids=ROWS.keys())
def test_progress_lines(obj, line):
    assert demo.render(demo.row_of(obj)) == line


def test_board_prints_changes_only_when_not_a_terminal():
    out = io.StringIO()
    board = demo.Board(out)
    row = demo.row_of(run_obj("Running", progress={"step": 1, "totalSteps": 100}))
    board.update([row], 1.0)
    board.update([row], 2.0)  # nothing changed
    board.update([demo.row_of(run_obj("Running", progress={"step": 55, "totalSteps": 100}))], 3.0)
    assert len(out.getvalue().splitlines()) == 2


def test_summary_judges_every_outcome_and_quotes_the_metrics_endpoint(tmp_path):
    objects = [
        {"kind": "Dataset", "metadata": {"name": "d"}, "status": {
            "phase": "Ready", "items": {"total": 10, "kept": 8, "dropped": {"duplicate": 2, "corrupt": 0}},
            "bytes": 100, "contentHash": "sha256:x", "uri": "file:///data/datasets/default/d"}},
        {"kind": "TrainingRun", "metadata": {"name": "r"}, "status": {
            "phase": "Succeeded", "runningSeconds": 10, "acceleratorSeconds": 10, "pool": "cpu", "version": "v1",
            "cost": {"accrued": "0.0002", "limit": "1"}, "metrics": {"fid": 3.5, "featureExtractor": "x"},
            "samples": "file:///data/runs/default/trainingrun/r/samples.png"}},
        {"kind": "TrainingRun", "metadata": {"name": "r-over-budget", "labels": {"genforge.dev/demo": "over-budget"}},
         "status": {"phase": "Succeeded"}},
    ]
    metrics = ('genforge_run_cost_dollars{kind="TrainingRun",name="r",namespace="default",pool="cpu"} 0.0002\n'
               'genforge_run_cost_dollars{kind="TrainingRun",name="r",namespace="default",pool="gpu"} 0.0001\n')
    text, ok = demo.summarize(objects, [], tmp_path, metrics, 12.0)
    assert not ok  # the over-budget run should have been stopped
    assert "r-over-budget: Succeeded  [UNEXPECTED (wanted BudgetExceeded)]" in text
    assert "dropped: duplicate 2" in text and "corrupt" not in text
    assert "cost $0.0002 (/metrics: $0.0003) of limit $1.00" in text
    assert "metrics: fid 3.5" in text
    assert f"samples: {Path(tmp_path) / 'runs/default/trainingrun/r/samples.png'}" in text
    assert f"at {tmp_path / 'datasets/default/d'}" in text


def test_summary_states_the_sample_statistics_beside_their_targets(tmp_path):
    run = {"kind": "TrainingRun", "metadata": {"name": "r"}, "status": {
        "phase": "Succeeded", "cost": {"accrued": "0.001", "limit": "1"},
        "metrics": {"fid": 2.0, "statisticsSamples": 64, "onDataBackground": 0.859375, "backgroundMix": 0.81, "backgroundNoise": 1.42,
                    "dataBackgroundNoise": 0.01, "labelColour": 0.625}}}
    text, _ = demo.summarize([run], [], tmp_path, "", 1.0)
    assert "sample statistics (64 samples): 55 of 64 (86%) on a data background [meets the 80% target]" in text
    assert "background mix 0.81 (1 = the data's shares of each background) [meets the 0.75 target]" in text
    assert "background noise 1.4 levels vs the data's 0.0 [meets the target of at most 2.0]" in text
    assert "shape colour agrees with the label's data in 40 of 64 (62%) [MISSES the 70% target]" in text
    # Noise above twice the floor, a low share: both said plainly.
    run["status"]["metrics"].update(onDataBackground=0.25, backgroundNoise=9.0)
    text, _ = demo.summarize([run], [], tmp_path, "", 1.0)
    assert "16 of 64 (25%) on a data background [MISSES the 80% target]" in text
    assert "background noise 9.0 levels vs the data's 0.0 [MISSES the target of at most 2.0]" in text
    # A pool's calibration run (a few steps to time the pool) is not judged by them.
    run["metadata"]["labels"] = {"genforge.dev/calibration-for": "cpu"}
    text, _ = demo.summarize([run], [], tmp_path, "", 1.0)
    assert "sample statistics" not in text and "MISSES" not in text
    assert "a calibration run for pool cpu: its samples are not judged" in text
    del run["metadata"]["labels"]
    # A run without the statistics (photos, no evaluation) prints none.
    run["status"]["metrics"] = {"fid": 2.0}
    assert "sample statistics" not in demo.summarize([run], [], tmp_path, "", 1.0)[0]


@pytest.mark.torch
@pytest.mark.slow
@pytest.mark.integration
def test_demo_path_end_to_end_with_small_numbers(tmp_path, manifests):
    """Everything the demo shows, with a tenth of the steps: prepare, train, fine-tune, a budget stop."""
    from genforge_local.demo_feedback import feedback_round
    from genforge_operator.review.journal import Journal

    out = io.StringIO()
    with LocalControlPlane(tmp_path / "data") as plane:
        result = demo.run_demo(plane, demo.shrink(manifests, 10), out=out, timeout=600, calibration_steps=20)
        assert result.ok, out.getvalue() + "\n" + result.summary
        # --feedback: rate through the review page, its button creates the FineTune, the operator runs it.
        # 8 samples per label, the model's 25 sampling steps: the shrunk (220-step) model draws
        # mostly warm colours (with 5 steps not one clearly blue shape in 64), and the button
        # needs a 👍 and a 👎 of one label.
        feedback = feedback_round(plane, out, run_name="shapes-v1", per_label=8, steps=25, timeout=300)
        assert feedback.ok, out.getvalue() + "\n" + feedback.summary
        finetune = plane.api().request("GET", plane.api().path("FineTune", feedback.finetune))
        assert finetune["spec"]["method"] == "preference" and finetune["status"]["phase"] == "Succeeded"
        assert finetune["spec"]["preference"]["feedbackUri"] == "file:///data/feedback/default/shapes/v1/ratings.jsonl"
        ratings = Journal(tmp_path / "data/feedback/default/shapes/v1/ratings.jsonl").current()
        # 64 samples; the clearly red and clearly blue shapes rated, the rest skipped.
        assert 0 < len(ratings) <= 64 and {r["rating"] for r in ratings.values()} == {"up", "down"}
        assert f"FineTune {feedback.finetune} → version {feedback.version}" in feedback.summary
        assert set(feedback.shares) == {"before", "after", "beforeHeldOut", "afterHeldOut"}
    phases = {(o["kind"], o["metadata"]["name"]): o["status"]["phase"] for o in result.objects}
    # the calibration run and its Dataset first, then the examples, then the over-budget run
    assert sorted(phases.values()) == ["BudgetExceeded", "Ready", "Ready", "Succeeded", "Succeeded", "Succeeded"]
    assert phases[("TrainingRun", "calibrate-cpu")] == "Succeeded"
    for obj in result.objects:
        status = obj["status"]
        if obj["kind"] != "Dataset" and status["phase"] == "Succeeded":
            samples = Path(demo.local_path(status["samples"], plane.data_dir))
            assert samples.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
            assert status["metrics"]["fid"] > 0
            assert status["metrics"]["statisticsSamples"] == status["metrics"]["samples"]
            assert 0 <= status["metrics"]["onDataBackground"] <= 1
    assert "sample statistics (" in result.summary and "on a data background" in result.summary
    assert "GenModel shapes: latest v2" in result.summary
    # estimate vs actual for every run; the pool calibrated first, so every example run is measured
    assert result.summary.count("  estimate ") == 4 and "basis: startup" in result.summary
    shapes = next(o for o in result.objects if o["metadata"]["name"] == "shapes-v1")
    assert all(p["basis"] == "measured" for p in shapes["status"]["estimate"]["parts"] if p["seconds"] > 0)
    over = next(o for o in result.objects if o["status"]["phase"] == "BudgetExceeded")
    assert over["status"]["cost"]["estimateError"] is not None  # pro-rated to the steps it did
    assert "AcceleratorPool cpu: measured start-up" in result.summary
    lora = next(o for o in result.objects if o["kind"] == "FineTune")
    assert all(p["basis"] == "measured" for p in lora["status"]["estimate"]["parts"])
    assert lora["status"]["cost"]["estimateError"] is not None
    assert result.metrics_path is not None and "genforge_run_cost_dollars" in result.metrics_path.read_text()


def test_board_redraws_in_place_on_a_terminal():
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    out = Terminal()
    board = demo.Board(out)
    rows = [demo.row_of(run_obj("Running", progress={"step": 1, "totalSteps": 100}))]
    board.update(rows, 1.0)
    board.update(rows, 2.0)
    assert out.getvalue().count("\x1b[2F") == 1  # back up over the row and the elapsed line, then redraw
    assert out.getvalue().count("\x1b[2K") == 4


def test_a_stopped_run_shows_the_estimate_for_the_steps_it_did(tmp_path):
    run = {"kind": "TrainingRun", "metadata": {"name": "over"}, "status": {
        "phase": "BudgetExceeded", "runningSeconds": 21.0, "progress": {"step": 120, "totalSteps": 2200},
        "cost": {"accrued": "0.0003", "estimated": "0.005", "estimatedSeconds": 364.0, "estimateError": -0.1},
        "estimate": {"seconds": 364.0, "minSeconds": 340.0, "maxSeconds": 380.0, "basis": "…", "fromStep": 0,
                     "parts": [{"part": "startup", "seconds": 12.0, "basis": "measured", "runs": 1},
                               {"part": "training", "seconds": 330.0, "basis": "measured", "runs": 1},
                               {"part": "evaluation", "seconds": 3.0, "basis": "measured", "runs": 1}]}}}
    text, _ = demo.summarize([run], [], tmp_path, "", 1.0)
    assert "for the 120 of 2200 steps done 30 s; actual 21 s" in text and "error -10%" in text


def test_summary_shows_estimate_beside_actual_and_the_pools_calibration(tmp_path):
    run = {"kind": "FineTune", "metadata": {"name": "lora"}, "status": {
        "phase": "Succeeded", "runningSeconds": 21.0, "pool": "cpu",
        "cost": {"accrued": "0.000292", "estimated": "0.000278", "estimatedSeconds": 20.0, "estimateError": 0.05,
                 "limit": "0.5"},
        "estimate": {"seconds": 20.0, "minSeconds": 17.0, "maxSeconds": 24.0, "basis": "…",
                     "parts": [{"part": "startup", "seconds": 9.4, "basis": "measured", "runs": 1},
                               {"part": "training", "seconds": 4.2, "basis": "measured", "runs": 2},
                               {"part": "checkpoints", "seconds": 0.4, "basis": "prior", "runs": 0}]}}}
    pool = {"kind": "AcceleratorPool", "metadata": {"name": "cpu"}, "status": {"calibration": {
        "startupSeconds": {"value": 9.4, "runs": 3, "used": 2},
        "trainingFlopsPerSecond": {"value": 2.41e10, "runs": 1, "used": 1}}}}
    text, _ = demo.summarize([run], [], tmp_path, "", 1.0, pools=[pool])
    assert "  estimate 20 s (range 17–24 s), $0.0003; actual 21 s, $0.0003; error +5%" in text
    assert "  basis: startup 9 s measured (1 run), training 4 s measured (2 runs), checkpoints 0 s prior" in text
    assert ("AcceleratorPool cpu: measured start-up 9.4 s (median of 2 of 3 runs); "
            "training 24.1 GFLOP/s (median of 1 of 1 runs)") in text
