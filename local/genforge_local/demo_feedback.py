"""`genforge demo --feedback`: the human-feedback loop after the demo's runs (issue 17).

1. generate 👍/👎 candidates from the version the demo's TrainingRun made (the review
   folder on the data volume, as `genforge review` makes it), and the same number from other
   seeds that nobody rates (held out);
2. rate them through the review page's HTTP API as a person would: 👍 every clearly red
   shape, 👎 every clearly blue one, the rest skipped — decided from the pixels of the shape,
   not the background (genforge_trainer.samplestats);
3. press "fine-tune on these ratings": the page creates the `preference` FineTune through
   the API server, the operator runs it like any run (pool, budget, Job);
4. generate again from the new version with the same seeds, and report the share of
   red-over-blue shapes before and after, on the rated seeds and on the held-out ones, with the binomial
   standard error of a share as the noise to compare with.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, TextIO

from genforge_operator.api import parse_resource
from genforge_operator.plan import Blocked, resolve_model_version
from genforge_operator.review.finetune import FineTuneRequest, manifest
from genforge_operator.review.server import BackgroundServer, ReviewApp

from .control_plane import DATA_MOUNT, LocalControlPlane

FINAL = {"Succeeded", "Failed", "BudgetExceeded"}
RATED_SEED, HELD_OUT_SEED = 0, 10_000
CLEAR = 20.0  # levels of the shape's red − blue that make it clearly red (negative: blue)


@dataclasses.dataclass
class FeedbackResult:
    ok: bool
    summary: str
    finetune: str | None = None
    version: str | None = None
    shares: dict[str, float] = dataclasses.field(default_factory=dict)


class DemoFineTunes:
    """The review page's FineTune client over the demo's JSON client (the admin's credentials)."""

    def __init__(self, api: Any):
        self.api = api

    def create(self, request: FineTuneRequest) -> dict[str, Any]:
        for attempt in range(1, 100):
            try:
                return self.api.request("POST", self.api.path("FineTune"), manifest(request, attempt))
            except urllib.error.HTTPError as exc:
                if exc.code != 409:
                    raise
        raise RuntimeError("no free FineTune name")

    def get(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return self.api.request("GET", self.api.path("FineTune", name))
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return None
            raise


def share(values: list[float | None]) -> float:
    """Share of all samples showing a red-over-blue shape (no shape: not red)."""
    return sum(v is not None and v > 0 for v in values) / len(values)


def _post(url: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def _get(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=60) as response:
        return json.loads(response.read())


def feedback_round(plane: LocalControlPlane, out: TextIO, *, run_name: str, per_label: int = 8,
                   steps: int = 25, timeout: float = 900) -> FeedbackResult:
    from genforge_trainer.generate import generate
    from genforge_trainer.samplestats import folder_shape_redness

    api = plane.api()
    run = api.request("GET", api.path("TrainingRun", run_name))
    model_name, version = run["spec"]["modelRef"]["name"], (run.get("status") or {}).get("version")
    if not version:
        return FeedbackResult(False, f"feedback: TrainingRun {run_name} made no version")
    previous = os.environ.get("GENFORGE_PATH_MAP")
    os.environ["GENFORGE_PATH_MAP"] = json.dumps({**json.loads(previous or "{}"), DATA_MOUNT: str(plane.data_dir)})
    try:
        def sample(version_name: str, folder: Path, seed: int) -> list[float]:
            model = parse_resource(api.request("GET", api.path("GenModel", model_name)))
            chain = resolve_model_version(model, version_name)
            if isinstance(chain, Blocked):
                raise RuntimeError(chain.message)
            generate(chain.uri, folder, per_label=per_label, seed=seed, steps=steps, adapters=chain.adapters,
                     model_name=model_name, version=version_name, progress=False, device="cpu")
            return folder_shape_redness(folder)

        relative = f"feedback/{api.namespace}/{model_name}/{version}"
        folder = plane.data_dir / relative
        measure = plane.data_dir / "feedback-measure" / model_name
        start = time.monotonic()
        before = sample(version, folder, RATED_SEED)
        before_held = sample(version, measure / f"{version}-held-out", HELD_OUT_SEED)
        out.write(f"\nfeedback: {len(before)} samples of {model_name}:{version} in {folder} "
                  f"({time.monotonic() - start:.0f} s); rating them 👍 red shapes / 👎 blue shapes through the review page\n")
        offer = FineTuneRequest(namespace=api.namespace, model=model_name, version=version,
                                dataset=run["spec"]["datasetRef"]["name"],
                                feedback_uri=f"file://{DATA_MOUNT}/{relative}/ratings.jsonl",
                                hardware=run["spec"].get("hardware"), budget=run["spec"].get("budget"))
        review = ReviewApp(folder, finetune=offer, cluster=lambda: DemoFineTunes(api), default_rater="demo")
        with BackgroundServer(review) as server:
            state = _get(server.url + "/api/state")
            for item, value in zip(state["samples"], before, strict=True):
                if value is None or abs(value) < CLEAR:
                    continue  # no shape, or neither clearly red nor clearly blue: skipped
                status, answer = _post(server.url + "/api/rate",
                                       {"image": item["file"], "rating": "up" if value > 0 else "down"})
                if status != 200:
                    return FeedbackResult(False, f"feedback: rating failed: {status} {answer}")
            status, created = _post(server.url + "/api/finetune", {})
            if status != 200:
                return FeedbackResult(False, f"feedback: the page could not create the FineTune: {created}")
            name = created["name"]
            ups = sum(v is not None and v >= CLEAR for v in before)
            downs = sum(v is not None and v <= -CLEAR for v in before)
            out.write(f"feedback: created FineTune {name} from {ups} 👍 and {downs} 👎 (the page's button; "
                      f"as YAML it is what `genforge review --print-yaml` prints)\n")
            deadline, last = time.monotonic() + timeout, ""
            progress: dict[str, Any] = {}
            while time.monotonic() < deadline:
                progress = _get(server.url + f"/api/finetune/{name}")
                line = f"  FineTune {name}: {progress['phase']}" + (
                    f" step {progress.get('step') or 0}/{progress['totalSteps']}" if progress.get("totalSteps") else "")
                if line != last:
                    out.write(line + "\n")
                    out.flush()
                    last = line
                if progress["phase"] in FINAL:
                    break
                time.sleep(1.0)
        if progress.get("phase") != "Succeeded":
            return FeedbackResult(False, f"feedback: FineTune {name} ended {progress.get('phase')}: "
                                         f"{progress.get('message') or ''}", finetune=name)
        new_version = None
        while time.monotonic() < deadline and not new_version:
            new_version = ((api.request("GET", api.path("FineTune", name)).get("status") or {}).get("version"))
            time.sleep(0.5)
        if not new_version:
            return FeedbackResult(False, f"feedback: FineTune {name} succeeded without a version", finetune=name)
        after = sample(new_version, measure / f"{new_version}-rated-seeds", RATED_SEED)
        after_held = sample(new_version, measure / f"{new_version}-held-out", HELD_OUT_SEED)
    finally:
        if previous is None:
            os.environ.pop("GENFORGE_PATH_MAP", None)
        else:
            os.environ["GENFORGE_PATH_MAP"] = previous
    shares = {"before": share(before), "after": share(after),
              "beforeHeldOut": share(before_held), "afterHeldOut": share(after_held)}
    n = len(before)
    error = math.sqrt(max(shares["before"] * (1 - shares["before"]), 1 / n) / n)
    moved = shares["after"] - shares["before"]
    verdict = ("moved toward the liked attribute by more than 3 standard errors" if moved > 3 * error
               else "did NOT move clearly toward the liked attribute")
    summary = (f"feedback: FineTune {name} → version {new_version}; share of {n} samples with a red-over-blue shape, same seeds: "
               f"{shares['before']:.0%} → {shares['after']:.0%}; held-out seeds: {shares['beforeHeldOut']:.0%} → "
               f"{shares['afterHeldOut']:.0%} (standard error of a share {error:.0%}): {verdict}")
    return FeedbackResult(True, summary, finetune=name, version=new_version, shares=shares)
