"""The review page's HTTP API (issue 17 item 2): ratings stored the moment they are made,
counts, undo, a restart and a crash that lose nothing, two raters at once, and the security
rules (loopback Host, token, no traversal, JSON-only same-origin POSTs, one model per file)."""

from __future__ import annotations

import json
import signal
import threading
from pathlib import Path

import pytest

from genforge_operator.review.finetune import FineTuneRequest
from genforge_operator.review.journal import Journal
from genforge_operator.review.server import ReviewApp, is_loopback

from .helpers import ProcessServer, ThreadServer, call, write_samples


@pytest.fixture
def folder(tmp_path):
    write_samples(tmp_path / "review")
    return tmp_path / "review"


@pytest.fixture
def server(folder):
    running = ThreadServer(ReviewApp(folder, default_rater="ann"))
    yield running
    running.close()


def test_rate_undo_and_counts_are_stored_in_the_journal_as_the_preference_method_reads_them(server, folder):
    status, state = call(server.url + "/api/state?rater=ann")
    assert status == 200 and state["model"] == "shapes" and state["version"] == "v1"
    assert [s["file"] for s in state["samples"]][:2] == ["sample-0000.png", "sample-0001.png"]
    assert state["counts"]["perLabel"] == {"circle": {"up": 0, "down": 0}, "square": {"up": 0, "down": 0}}

    status, answer = call(server.url + "/api/rate", "POST", {"image": "sample-0000.png", "rating": "up",
                                                              "rater": "ann"})
    assert status == 200 and answer["counts"]["perLabel"]["circle"] == {"up": 1, "down": 0}
    # Stored (whole line, fsynced) before the answer came back.
    lines = Journal(folder / "ratings.jsonl").lines()
    assert lines[-1]["image"] == "sample-0000.png" and lines[-1]["rating"] == "up"
    assert lines[-1]["label"] == "circle" and lines[-1]["rater"] == "ann" and lines[-1]["model"] == "shapes"
    call(server.url + "/api/rate", "POST", {"image": "sample-0001.png", "rating": "down", "rater": "ann"})
    call(server.url + "/api/rate", "POST", {"image": "sample-0002.png", "rating": "down", "rater": "ann"})
    call(server.url + "/api/rate", "POST", {"image": "sample-0002.png", "rating": "up", "rater": "ann"})  # changed

    status, state = call(server.url + "/api/state?rater=ann")
    mine = {s["file"]: s["rating"] for s in state["samples"]}
    assert mine["sample-0000.png"] == "up" and mine["sample-0001.png"] == "down" and mine["sample-0002.png"] == "up"
    assert state["counts"]["total"] == {"up": 2, "down": 1}

    # Undo withdraws ann's most recent standing rating (image 2), then the one before it.
    assert call(server.url + "/api/undo", "POST", {"rater": "ann"})[1]["undone"] == "sample-0002.png"
    assert call(server.url + "/api/undo", "POST", {"rater": "ann"})[1]["undone"] == "sample-0001.png"
    state = call(server.url + "/api/state?rater=ann")[1]
    assert state["counts"]["total"] == {"up": 1, "down": 0}
    assert call(server.url + "/api/undo", "POST", {"rater": "bob"})[1]["undone"] is None  # bob rated nothing

    # The file is the preference method's feedback format: it folds to the same standing ratings.
    pytest.importorskip("torch")
    from genforge_trainer.exitcodes import DataError
    from genforge_trainer.methods import read_feedback

    with pytest.raises(DataError, match="no \\(preferred, rejected\\) pair"):  # one circle 👍, no circle 👎
        read_feedback(f"file://{folder}/ratings.jsonl", 16)
    call(server.url + "/api/rate", "POST", {"image": "sample-0002.png", "rating": "down", "rater": "ann"})
    call(server.url + "/api/rate", "POST", {"image": "sample-0004.png", "rating": "down", "rater": "bob"})
    pairs = read_feedback(f"file://{folder}/ratings.jsonl", 16)
    assert len(pairs) == 2 and pairs.labels == ["circle", "circle"]  # image 0 over images 2 and 4


def test_the_page_and_images_are_served_and_nothing_else_is(server, folder):
    status, page = call(server.url + "/")
    assert status == 200 and b"fine-tune on these ratings" in page and b"<script>" in page
    status, png = call(server.url + "/images/sample-0003.png")
    assert status == 200 and png == (folder / "sample-0003.png").read_bytes()
    (folder.parent / "secret.txt").write_text("not for the page")
    for name in ("ratings.jsonl", "samples.jsonl", "..%2Fsecret.txt", "%2E%2E%2Fsecret.txt", "nope.png"):
        status, _ = call(server.url + "/images/" + name)
        assert status == 404, name
    status, _ = call(server.url + "/images/../secret.txt")
    assert status == 404


@pytest.mark.parametrize(("body", "message"), [
    ({"image": "../secret.txt", "rating": "up", "rater": "ann"}, "is not one of this folder's samples"),
    ({"image": "sample-0000.png", "rating": "meh", "rater": "ann"}, "rating must be one of up, down"),
    ({"image": "sample-0000.png", "rating": "up", "rater": "x" * 65}, "at most 64 printable"),
    ({"image": "sample-0000.png", "rating": "up", "rater": "a\nb"}, "at most 64 printable"),
])
def test_bad_ratings_are_refused_with_a_reason_and_store_nothing(server, folder, body, message):
    status, answer = call(server.url + "/api/rate", "POST", body)
    assert status == 400 and message in answer["error"]
    assert not (folder / "ratings.jsonl").exists()


def test_a_rater_is_required_when_the_server_has_no_default(folder):
    running = ThreadServer(ReviewApp(folder))
    try:
        status, answer = call(running.url + "/api/rate", "POST", {"image": "sample-0000.png", "rating": "up"})
        assert status == 400 and "a rater name is required" in answer["error"]
    finally:
        running.close()


def test_posts_must_be_json_and_same_origin(server, folder):
    status, answer = call(server.url + "/api/rate", "POST", raw=b"image=sample-0000.png&rating=up",
                          headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert status == 415 and "JSON" in answer["error"]
    status, answer = call(server.url + "/api/rate", "POST", {"image": "sample-0000.png", "rating": "up"},
                          headers={"Origin": "http://evil.example"})
    assert status == 403 and "cross-origin" in answer["error"]
    status, answer = call(server.url + "/api/rate", "POST", raw=b"{not json")
    assert status == 400
    assert not (folder / "ratings.jsonl").exists()
    status, _ = call(server.url + "/api/rate", "POST", {"image": "sample-0000.png", "rating": "up"},
                     headers={"Origin": server.url})
    assert status == 200


def test_a_loopback_server_answers_only_loopback_host_names(server):
    """DNS rebinding: a page of evil.example resolving to 127.0.0.1 sends Host: evil.example."""
    status, answer = call(server.url + "/api/state", headers={"Host": f"evil.example:{server.port}"})
    assert status == 421 and "loopback" in answer["error"]
    assert call(server.url + "/api/state", headers={"Host": f"localhost:{server.port}"})[0] == 200
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("10.0.0.1")


def test_any_other_bind_needs_the_token_on_every_request(folder):
    running = ThreadServer(ReviewApp(folder, token="s3cret-token", loopback_only=False, default_rater="ann"))
    try:
        for path in ("/", "/api/state", "/images/sample-0000.png"):
            assert call(running.url + path)[0] == 401, path
            assert call(running.url + path + "?token=wrong")[0] == 401, path
            assert call(running.url + path + "?token=s3cret-token")[0] == 200, path
        assert call(running.url + "/api/rate", "POST", {"image": "sample-0000.png", "rating": "up"})[0] == 401
        assert call(running.url + "/api/rate", "POST", {"image": "sample-0000.png", "rating": "up"},
                    headers={"Authorization": "Bearer s3cret-token"})[0] == 200
        assert call(running.url + "/api/state", headers={"X-Genforge-Token": "s3cret-token"})[0] == 200
        # Not loopback-only: any Host is answered (with the token).
        assert call(running.url + "/api/state?token=s3cret-token", headers={"Host": "review.example"})[0] == 200
    finally:
        running.close()


def test_the_cli_prints_the_token_once_for_a_non_loopback_bind(folder):
    write_samples(folder, model="", version="")  # samples of a model folder (--uri), not of a GenModel
    server = ProcessServer(folder, "file:///data/m", "--host", "0.0.0.0")
    try:
        assert server.token and len(server.token) >= 24
        url = server.url.replace("0.0.0.0", "127.0.0.1")
        assert call(url + "/api/state")[0] == 401
        assert call(url + f"/api/state?token={server.token}")[0] == 200
    finally:
        server.stop()
    assert server.log.read_text().count(server.token) == 1


def test_two_raters_at_once_lose_nothing(server, folder):
    """Two people rating every image at the same moment (two threads, 2 × 60 POSTs)."""
    images = [f"sample-{i:04d}.png" for i in range(6)]
    errors: list[str] = []

    def rater(name: str, rating: str) -> None:
        for round_ in range(10):
            for image in images:
                status, answer = call(server.url + "/api/rate", "POST",
                                      {"image": image, "rating": rating if round_ % 2 == 0 else "up", "rater": name})
                if status != 200:
                    errors.append(f"{name}: {status} {answer}")

    threads = [threading.Thread(target=rater, args=("ann", "down")), threading.Thread(target=rater, args=("bob", "up"))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    lines = (folder / "ratings.jsonl").read_text().splitlines()
    assert len(lines) == 120 and all(json.loads(line)["rating"] in ("up", "down") for line in lines)
    state = call(server.url + "/api/state")[1]
    assert state["counts"]["total"] == {"up": 12, "down": 0}  # round 9 was "up" for both: 2 raters × 6 images


def test_a_restart_and_a_crash_lose_no_acknowledged_rating(folder):
    uri = "file:///data/m"
    write_samples(folder, model="", version="")
    first = ProcessServer(folder, uri)
    for image in ("sample-0000.png", "sample-0001.png"):
        assert call(first.url + "/api/rate", "POST", {"image": image, "rating": "up", "rater": "ann"})[0] == 200
    first.stop()  # a clean restart
    second = ProcessServer(folder, uri)
    state = call(second.url + "/api/state?rater=ann")[1]
    assert {s["file"] for s in state["samples"] if s["rating"] == "up"} == {"sample-0000.png", "sample-0001.png"}
    acknowledged = []
    stop = threading.Event()

    def rate_until_killed() -> None:
        i = 0
        while not stop.is_set():
            image = f"sample-{i % 6:04d}.png"
            try:
                status, _ = call(second.url + "/api/rate", "POST",
                                 {"image": image, "rating": "down" if i % 3 else "up", "rater": f"r{i}"})
            except OSError:
                return
            if status == 200:
                acknowledged.append((image, f"r{i}"))
            i += 1

    thread = threading.Thread(target=rate_until_killed)
    thread.start()
    import time

    time.sleep(1.5)
    second.stop(signal.SIGKILL)  # a crash mid-stream
    stop.set()
    thread.join(30)
    assert len(acknowledged) > 10
    third = ProcessServer(folder, uri)
    try:
        stored = {(r["image"], r["rater"]) for r in Journal(folder / "ratings.jsonl").lines() if "rating" in r}
        assert set(acknowledged) <= stored
        state = call(third.url + "/api/state")[1]
        assert state["counts"]["total"]["up"] + state["counts"]["total"]["down"] >= len(acknowledged) + 2
    finally:
        third.stop()


def test_a_folder_with_another_models_samples_is_refused(folder, capsys):
    from genforge_operator.cli import main

    assert main(["review", "--uri", "file:///data/other-model", "--dir", str(folder), "--port", "0"]) == 1
    err = capsys.readouterr().err
    assert "holds samples of shapes:v1" in err and "never go into another's file" in err


class FakeFineTunes:
    def __init__(self, refuse: Exception | None = None):
        self.created: list[dict] = []
        self.refuse = refuse

    def create(self, request):
        from genforge_operator.review.finetune import manifest

        if self.refuse:
            raise self.refuse
        body = manifest(request)
        self.created.append(body)
        return body

    def get(self, namespace, name):
        return {"status": {"phase": "Running", "progress": {"step": 3, "totalSteps": 60}}}


def _offer(folder) -> FineTuneRequest:
    return FineTuneRequest(namespace="team-a", model="shapes", version="v1", dataset="shapes",
                           feedback_uri=f"file://{folder}/ratings.jsonl", hardware={"pool": "cpu"})


def test_fine_tune_on_these_ratings_creates_the_preference_finetune_and_follows_it(folder, capsys):
    fake = FakeFineTunes()
    running = ThreadServer(ReviewApp(folder, finetune=_offer(folder), cluster=lambda: fake, default_rater="ann"))
    try:
        status, answer = call(running.url + "/api/finetune", "POST", {})
        assert status == 409 and "one 👎 of the same label" in answer["error"] and not fake.created
        call(running.url + "/api/rate", "POST", {"image": "sample-0000.png", "rating": "up"})
        call(running.url + "/api/rate", "POST", {"image": "sample-0001.png", "rating": "down"})  # another label
        assert call(running.url + "/api/finetune", "POST", {})[0] == 409
        call(running.url + "/api/rate", "POST", {"image": "sample-0002.png", "rating": "down"})
        status, yaml_text = call(running.url + "/api/finetune.yaml")
        assert status == 200 and b"method: preference" in yaml_text
        status, answer = call(running.url + "/api/finetune", "POST", {})
        assert status == 200 and answer["name"] == "shapes-v1-feedback" and answer["namespace"] == "team-a"
        body = fake.created[0]
        assert body["kind"] == "FineTune" and body["spec"]["method"] == "preference"
        assert body["spec"]["baseModel"] == {"name": "shapes", "version": "v1"}
        assert body["spec"]["datasetRef"] == {"name": "shapes"} and body["spec"]["hardware"] == {"pool": "cpu"}
        assert body["spec"]["preference"] == {"feedbackUri": f"file://{folder}/ratings.jsonl"}
        assert body["spec"]["training"] == {"steps": 60, "batchSize": 16, "learningRate": 3e-5}
        assert "kind: FineTune" in answer["yaml"] and "kubectl get finetune -n team-a" in answer["follow"]
        assert "created FineTune team-a/shapes-v1-feedback" in capsys.readouterr().out  # the CLI prints it too
        status, progress = call(running.url + "/api/finetune/shapes-v1-feedback")
        assert status == 200 and progress["phase"] == "Running" and progress["step"] == 3
        assert call(running.url + "/api/finetune/someone-elses")[0] == 404
    finally:
        running.close()


def test_a_refusal_of_the_kubernetes_api_is_shown_as_it_is(folder):
    from kubernetes.client.exceptions import ApiException

    refusal = ApiException(status=403, reason="Forbidden")
    refusal.body = json.dumps({"message": 'finetunes.genforge.dev is forbidden: User "bob" cannot create resource'})
    running = ThreadServer(ReviewApp(folder, finetune=_offer(folder), cluster=lambda: FakeFineTunes(refusal),
                                     default_rater="ann"))
    try:
        call(running.url + "/api/rate", "POST", {"image": "sample-0000.png", "rating": "up"})
        call(running.url + "/api/rate", "POST", {"image": "sample-0002.png", "rating": "down"})
        status, answer = call(running.url + "/api/finetune", "POST", {})
        assert status == 403 and 'User "bob" cannot create resource' in answer["error"]
    finally:
        running.close()


def test_without_a_genmodel_no_fine_tune_is_offered(folder):
    running = ThreadServer(ReviewApp(folder, finetune_unavailable="a model folder (--uri) has no GenModel"))
    try:
        state = call(running.url + "/api/state")[1]
        assert state["finetune"]["available"] is False and "no GenModel" in state["finetune"]["reason"]
        status, answer = call(running.url + "/api/finetune", "POST", {})
        assert status == 409 and "no GenModel" in answer["error"]
    finally:
        running.close()


def test_the_review_folder_is_on_the_data_volume_and_named_as_trainer_pods_see_it(tmp_path, monkeypatch):
    """With the data volume mapped (genforge local's GENFORGE_PATH_MAP, or the chart's PVC at
    /data), samples and ratings go to <data>/feedback/<ns>/<model>/<version>, and the FineTune
    reads them at the pod's path; without it, ./genforge-review/… and the path as it is."""
    from genforge_operator.review.cli import default_folder, to_pod

    monkeypatch.setenv("GENFORGE_PATH_MAP", json.dumps({"/data": str(tmp_path / "plane-data")}))
    (tmp_path / "plane-data").mkdir()
    folder = default_folder("team-a", "shapes", "v2")
    assert folder == tmp_path / "plane-data/feedback/team-a/shapes/v2"
    folder.mkdir(parents=True)
    assert to_pod(folder) == "/data/feedback/team-a/shapes/v2"
    # A data root that is not mounted here: a local folder instead.
    assert default_folder("team-a", "shapes", "v2", "/mnt/not-here") == Path("genforge-review/team-a/shapes/v2")
    monkeypatch.delenv("GENFORGE_PATH_MAP")
    assert to_pod(tmp_path) == str(tmp_path.resolve())
