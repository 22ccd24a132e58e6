"""Every FineTune method end to end through the operator, on the CPU, with tiny numbers.

One local control plane (`genforge local`: emulated API server, local executor, the real
operator) for the module. A Dataset (synthetic shapes, 16×16) and a TrainingRun make a
class-conditional GenModel version v1; then one FineTune per method — full, lora,
dreambooth, embedding, preference — starts from v1. Each runs as a trainer Job whose pod
is a real `genforge-trainer finetune` process; each must end Succeeded, without a failed
pod, and leave on the GenModel a version with its method, its base version, its
evaluation metrics and an artifact of the method's form on disk.

The preference feedback (JSON Lines, thumbs up/down) is written here from the prepared
dataset's own images: circles rated up, squares rated down, both for the label "circle".

Then one more FineTune starts from the LoRA version, which is an adapter, not a model: the
operator sends the trainer v1 plus the adapter, the trainer merges it before fine-tuning.

The trainer pods get `OMP_NUM_THREADS=1` through the operator's own knob
(`GENFORGE_TRAINER_EXTRA_ENV`): the five fine-tunes then share the two cores as five
single-threaded processes instead of fighting over them with two threads each.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

from genforge_local import demo
from genforge_local.control_plane import DATA_MOUNT, LocalControlPlane, _tail
from genforge_local.json_api import Api
from genforge_operator.api import GROUP, VERSION
from genforge_operator.builders import run_document

pytestmark = [pytest.mark.torch, pytest.mark.slow, pytest.mark.integration]

API_VERSION = f"{GROUP}/{VERSION}"
NAMESPACE = "default"
MODEL = "shapes"
DATASET = "shapes"
RUN = "shapes-v1"
METHODS = ("full", "lora", "dreambooth", "embedding", "preference")
TIMEOUT = 900.0
EVALUATION = {"samples": 4, "metrics": ["loss", "fid"]}
CONCEPT = "my-shape"
INSTANCE = "sks-star"
FEEDBACK = f"file://{DATA_MOUNT}/feedback/shapes.jsonl"
FROM_ADAPTER = "shapes-full-from-lora"


def manifest(kind: str, name: str, spec: dict) -> dict:
    meta = {"name": name} if kind == "AcceleratorPool" else {"name": name, "namespace": NAMESPACE}
    return {"apiVersion": API_VERSION, "kind": kind, "metadata": meta, "spec": spec}


def base_manifests() -> list[dict]:
    return [
        manifest("AcceleratorPool", "cpu", {"accelerator": {"type": "cpu"}, "pricePerHour": "0.05",
                                            "relativeThroughput": 0.02}),
        manifest("GenModel", MODEL, {
            "architecture": "unet2d-ddpm", "resolution": 16,
            "config": {"blockOutChannels": [16, 32], "layersPerBlock": 1, "normNumGroups": 8,
                       "inferenceSteps": 8},
        }),
        manifest("Dataset", DATASET, {
            "source": {"uri": "synthetic://shapes?count=64&size=16"},
            "preparation": {"resolution": 16, "crop": "center", "dedupe": False},
            "privacy": {"blurFaces": False, "stripMetadata": True, "redactCaptions": False},
            "license": {"allowed": ["cc0-1.0"], "requireLicense": True},
            "hardware": {"pool": "cpu"},
        }),
        manifest("TrainingRun", RUN, {
            "modelRef": {"name": MODEL}, "datasetRef": {"name": DATASET},
            "training": {"steps": 20, "batchSize": 16, "learningRate": 2.0e-3},
            "hardware": {"pool": "cpu"},
            "checkpoint": {"everySteps": 20, "keep": 1},
            "evaluation": EVALUATION,
        }),
    ]


BLOCKS = {
    "full": {},
    "lora": {"lora": {"rank": 4, "alpha": 8}},
    "dreambooth": {"dreambooth": {"instancePrompt": INSTANCE, "classPrompt": "star",
                                  "priorLossWeight": 1.0, "numClassImages": 4}},
    "embedding": {"embedding": {"concept": CONCEPT, "initializer": "star"}},
    "preference": {"preference": {"feedbackUri": FEEDBACK, "beta": 10.0}},
}


def finetune_manifest(method: str, name: str | None = None, base: str = "v1") -> dict:
    return manifest("FineTune", name or f"shapes-{method}", {
        "baseModel": {"name": MODEL, "version": base}, "datasetRef": {"name": DATASET},
        "method": method, **BLOCKS[method],
        "training": {"steps": 6, "batchSize": 8, "learningRate": 1.0e-3},
        "hardware": {"pool": "cpu"},
        "checkpoint": {"everySteps": 6, "keep": 1},
        "evaluation": EVALUATION,
    })


# ----------------------------------------------------------------------------- helpers


def diagnose(plane: LocalControlPlane) -> str:
    """The operator's log tail and every pod log's tail: what a failure needs to be understood."""
    parts = [f"--- operator log\n{_tail(plane.operator_log_path, 30)}"]
    for log in sorted((plane.logs_dir / NAMESPACE).glob("*.log")):
        parts.append(f"--- {log.name}\n{_tail(log, 15)}")
    return "\n".join(parts)


def wait_final(plane: LocalControlPlane, api: Api, kinds_names: set[tuple[str, str]],
               timeout: float = TIMEOUT) -> dict[tuple[str, str], dict]:
    """Poll until every named object is in a final phase (the demo's notion of final)."""
    deadline = time.monotonic() + timeout
    while True:
        objects = {(o["kind"], o["metadata"]["name"]): o
                   for kind in {k for k, _ in kinds_names} for o in api.items(kind)}
        rows = {key: demo.row_of(objects[key]) for key in kinds_names if key in objects}
        if len(rows) == len(kinds_names) and all(r.final for r in rows.values()):
            return {key: objects[key] for key in kinds_names}
        if time.monotonic() > deadline:
            raise AssertionError(f"not final after {timeout} s: "
                                 + "; ".join(demo.render(r) for r in rows.values()) + "\n" + diagnose(plane))
        time.sleep(0.5)


def model_with_versions(plane: LocalControlPlane, api: Api, sources: set[tuple[str, str]],
                        timeout: float = 30.0) -> dict:
    """The GenModel once it lists a version from every (kind, name) in `sources` (the registry
    write may land just after the run's final phase)."""
    deadline = time.monotonic() + timeout
    while True:
        model = next(m for m in api.items("GenModel") if m["metadata"]["name"] == MODEL)
        versions = (model.get("status") or {}).get("versions") or []
        if sources <= {(v["source"]["kind"], v["source"]["name"]) for v in versions}:
            return model
        if time.monotonic() > deadline:
            raise AssertionError(f"GenModel versions {versions} lack some of {sources}\n{diagnose(plane)}")
        time.sleep(0.5)


def local(plane: LocalControlPlane, uri: str) -> Path:
    path = demo.local_path(uri, plane.data_dir)
    assert path is not None and not path.startswith(("file:", "s3:", "gs:")), uri
    return Path(path)


def unet_weights(model_dir: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return load_file(str(model_dir / "unet" / "diffusion_pytorch_model.safetensors"))


def labels(model_dir: Path) -> list[str]:
    return json.loads((model_dir / "genforge.json").read_text())["labels"]


def write_feedback(plane: LocalControlPlane, dataset_uri: str) -> int:
    """Thumbs up for circles, down for squares, both asked for as "circle"; refs are URIs under /data."""
    records = [json.loads(line) for line in (local(plane, dataset_uri) / "metadata.jsonl").read_text().splitlines()
               if line.strip()]
    lines = []
    for shape, rating in (("circle", "up"), ("square", "down")):
        chosen = [r for r in records if r.get("label") == shape][:4]
        assert len(chosen) >= 2, f"the prepared dataset has too few {shape}s: {len(chosen)}"
        lines += [{"label": "circle", "image": f"{dataset_uri}/{r['file_name']}", "rating": rating} for r in chosen]
    path = local(plane, FEEDBACK)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return len(lines)


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def plane(tmp_path_factory):
    env = {"GENFORGE_TRAINER_EXTRA_ENV": json.dumps({"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"})}
    with LocalControlPlane(tmp_path_factory.mktemp("finetune-methods") / "data", operator_env=env) as plane:
        yield plane


@pytest.fixture(scope="module")
def api(plane) -> Api:
    return Api(plane.url, NAMESPACE)


@pytest.fixture(scope="module")
def trained(plane, api):
    """The Dataset prepared and the TrainingRun finished: (dataset, run, GenModel) bodies."""
    started = time.monotonic()
    for obj in base_manifests():
        api.apply(obj)
    done = wait_final(plane, api, {("Dataset", DATASET), ("TrainingRun", RUN)})
    model = model_with_versions(plane, api, {("TrainingRun", RUN)})
    print(f"\ndataset + training run: {time.monotonic() - started:.1f} s")
    return done[("Dataset", DATASET)], done[("TrainingRun", RUN)], model


@pytest.fixture(scope="module")
def finetuned(plane, api, trained):
    """Every method's FineTune, applied at once and followed to its end: ({method: body}, GenModel)."""
    dataset = trained[0]
    assert dataset["status"]["phase"] == "Ready", diagnose(plane)
    assert trained[1]["status"]["phase"] == "Succeeded", diagnose(plane)
    write_feedback(plane, dataset["status"]["uri"])
    started = time.monotonic()
    for method in METHODS:
        api.apply(finetune_manifest(method))
    done = wait_final(plane, api, {("FineTune", f"shapes-{m}") for m in METHODS})
    print(f"\nfive fine-tunes: {time.monotonic() - started:.1f} s")
    model = model_with_versions(plane, api, {("FineTune", f"shapes-{m}") for m in METHODS})
    return {m: done[("FineTune", f"shapes-{m}")] for m in METHODS}, model


@pytest.fixture(scope="module")
def from_adapter(plane, api, finetuned):
    """A full FineTune pinned to the LoRA FineTune's version (an adapter): (body, GenModel)."""
    adapter_version = finetuned[0]["lora"]["status"]["version"]
    started = time.monotonic()
    api.apply(finetune_manifest("full", name=FROM_ADAPTER, base=adapter_version))
    done = wait_final(plane, api, {("FineTune", FROM_ADAPTER)})
    print(f"\nfine-tune from the adapter version: {time.monotonic() - started:.1f} s")
    return done[("FineTune", FROM_ADAPTER)], model_with_versions(plane, api, {("FineTune", FROM_ADAPTER)})


# ----------------------------------------------------------------------------- tests


def test_training_run_makes_a_class_conditional_v1(plane, trained):
    dataset, run, model = trained
    assert dataset["status"]["phase"] == "Ready" and dataset["status"]["items"]["kept"] == 64
    assert run["status"]["phase"] == "Succeeded", diagnose(plane)
    assert run["status"]["version"] == "v1"
    v1 = model["status"]["versions"][0]
    assert v1["name"] == "v1" and v1["source"] == {"kind": "TrainingRun", "name": RUN} and "method" not in v1
    assert v1["format"] == "model"
    model_dir = local(plane, v1["uri"])
    assert len(labels(model_dir)) == 8  # one class-embedding row per shape
    assert unet_weights(model_dir)["class_embedding.weight"].shape[0] == 8


@pytest.mark.parametrize("method", METHODS)
def test_finetune_succeeds_and_records_a_version(plane, api, trained, finetuned, method):
    finetunes, model = finetuned
    ft = finetunes[method]
    status = ft["status"]
    assert status["phase"] == "Succeeded", f"{method}: {demo.render(demo.row_of(ft))}\n{diagnose(plane)}"
    assert status.get("restarts", 0) == 0
    assert status["progress"]["step"] == 6
    assert {"loss", "fid"} <= set(status["metrics"]), status["metrics"]

    # The trainer Job ran the real `genforge-trainer finetune`, and none of its pods failed.
    job = api.request("GET", f"/apis/batch/v1/namespaces/{NAMESPACE}/jobs/{status['job']}")
    assert "finetune" in json.dumps(job["spec"]["template"]["spec"]["containers"][0]["command"])
    assert job["status"].get("succeeded") == 1 and not job["status"].get("failed"), job["status"]

    versions = {v["name"]: v for v in model["status"]["versions"]}
    version = versions[status["version"]]
    assert version["source"] == {"kind": "FineTune", "name": ft["metadata"]["name"]}
    assert version["method"] == method
    assert version["baseVersion"] == "v1"
    assert version["uri"] == status["artifact"]
    assert version["metrics"] == status["metrics"]
    assert version["format"] == ("lora-adapter" if method == "lora" else "model")

    base_dir = local(plane, versions["v1"]["uri"])
    base = unet_weights(base_dir)
    artifact = local(plane, version["uri"])
    assert artifact.is_dir(), artifact
    if method == "lora":
        # A small adapter, not a model: peft's safetensors of the LoRA matrices plus its config.
        assert sorted(p.name for p in artifact.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
        assert json.loads((artifact / "adapter_config.json").read_text())["r"] == 4
        from safetensors.numpy import load_file

        adapter = load_file(str(artifact / "adapter_model.safetensors"))
        assert adapter and all("lora_" in k for k in adapter)
        size = (artifact / "adapter_model.safetensors").stat().st_size
        assert size < (base_dir / "unet/diffusion_pytorch_model.safetensors").stat().st_size / 5
        return
    tuned = unet_weights(artifact)
    if method == "embedding":
        # The learned concept alone: one new class-embedding row; every other weight bit-identical.
        assert labels(artifact) == [*labels(base_dir), CONCEPT]
        n = base["class_embedding.weight"].shape[0]
        assert tuned.keys() == base.keys()
        for key, value in base.items():
            if key == "class_embedding.weight":
                assert tuned[key].shape[0] == n + 1
                assert np.array_equal(tuned[key][:n], value)
            else:
                assert np.array_equal(tuned[key], value), key
        from safetensors.numpy import load_file

        learned = load_file(str(artifact.parent / "embedding" / "learned_embeds.safetensors"))
        assert list(learned) == [CONCEPT] and np.array_equal(learned[CONCEPT], tuned["class_embedding.weight"][n])
        return
    # full, dreambooth, preference: a complete UNet whose weights moved away from v1.
    assert tuned.keys() == base.keys()
    assert sum(not np.array_equal(tuned[k], base[k]) for k in base if tuned[k].shape == base[k].shape) > len(base) // 2
    pod_log = "".join(p.read_text() for p in (plane.logs_dir / NAMESPACE).glob(f"{status['job']}-*.log"))
    if method == "dreambooth":
        # The subject got its own class row, and the prior was kept with images v1 generated for "star".
        assert labels(artifact) == [*labels(base_dir), INSTANCE]
        assert tuned["class_embedding.weight"].shape[0] == base["class_embedding.weight"].shape[0] + 1
        assert "generated 4 class images with the base model" in pod_log, pod_log[-2000:]
    else:
        assert labels(artifact) == labels(base_dir)
    if method == "preference":
        assert "preference: 16 pairs from file:///data/feedback/shapes.jsonl" in pod_log, pod_log[-2000:]


def test_every_run_succeeded_and_the_model_has_six_versions(plane, api, finetuned):
    _, model = finetuned
    runs = api.items("TrainingRun") + api.items("FineTune")
    assert {r["metadata"]["name"]: r["status"]["phase"] for r in runs} == {
        RUN: "Succeeded", **{f"shapes-{m}": "Succeeded" for m in METHODS}}
    jobs = api.request("GET", f"/apis/batch/v1/namespaces/{NAMESPACE}/jobs")["items"]
    assert jobs and not [j["metadata"]["name"] for j in jobs if j["status"].get("failed")]
    versions = model["status"]["versions"]
    assert sorted(v["name"] for v in versions) == [f"v{i}" for i in range(1, 7)]
    assert sorted(v.get("method") or "-" for v in versions) == sorted(["-", *METHODS])
    assert model["status"]["latest"] == "v6"


def test_a_finetune_starts_from_the_lora_adapter_version_merged_into_its_base(plane, api, finetuned, from_adapter):
    ft, model = from_adapter
    status = ft["status"]
    assert status["phase"] == "Succeeded", f"{demo.render(demo.row_of(ft))}\n{diagnose(plane)}"
    versions = {v["name"]: v for v in model["status"]["versions"]}
    adapter = versions[finetuned[0]["lora"]["status"]["version"]]
    assert adapter["format"] == "lora-adapter" and adapter["baseVersion"] == "v1"
    version = versions[status["version"]]
    assert version["baseVersion"] == adapter["name"] and version["format"] == "model"
    # The run spec sent v1's model plus the adapter; the trainer merged it before it trained.
    jobs = api.request("GET", f"/apis/batch/v1/namespaces/{NAMESPACE}/jobs")["items"]
    (document,) = [d for d in (run_document([j]) for j in jobs) if d and d.get("run", {}).get("name") == FROM_ADAPTER]
    assert document["model"]["baseUri"] == versions["v1"]["uri"]
    assert document["model"]["baseAdapters"] == [adapter["uri"]]
    pod_log = "".join(p.read_text() for p in (plane.logs_dir / NAMESPACE).glob(f"{status['job']}-*.log"))
    assert "merged LoRA adapter" in pod_log, pod_log[-2000:]
    assert unet_weights(local(plane, version["uri"])).keys() == unet_weights(local(plane, versions["v1"]["uri"])).keys()
