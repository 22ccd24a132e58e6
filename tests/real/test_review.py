"""`genforge review` against a real kube-apiserver (issue 17): the page's "fine-tune on these
ratings" creates the preference FineTune with the credentials of whoever runs it — the
server accepts (schema, CEL, defaults) what the admin creates, and refuses a user whose RBAC
does not allow it, with the API's own message on the page."""

from __future__ import annotations

import json

import pytest
from review.helpers import ProcessServer, call, write_samples

pytestmark = pytest.mark.kube

URI = "file:///data/runs/team/shapes/abc/model"


def _setup(kube, namespace: str) -> None:
    from genforge_operator.bundled import examples_dir

    for name in ("dataset.yaml", "model.yaml", "trainingrun.yaml"):
        kube.real.kubectl("apply", "-n", namespace, "-f", str(examples_dir() / name))
    status = {"status": {"latest": "v1", "versions": [
        {"name": "v1", "source": {"kind": "TrainingRun", "name": "shapes-v1"}, "uri": URI,
         "createdAt": "2026-12-07T00:00:00Z"}]}}
    kube.real.kubectl("patch", "genmodel", "shapes", "-n", namespace, "--subresource=status", "--type=merge",
                      "-p", json.dumps(status))


def test_the_page_creates_the_finetune_with_the_callers_credentials(kube, kube_namespace, tmp_path):
    _setup(kube, kube_namespace)
    folder = tmp_path / "review"
    write_samples(folder, model="shapes", version="v1", uri=URI)
    admin = kube.real.write_kubeconfig(tmp_path / "admin.kubeconfig")
    server = ProcessServer(folder, None, "--namespace", kube_namespace, env={"KUBECONFIG": str(admin)},
                           model="shapes")
    try:
        assert call(server.url + "/api/rate", "POST", {"image": "sample-0000.png", "rating": "up", "rater": "a"})[0] == 200
        assert call(server.url + "/api/rate", "POST", {"image": "sample-0002.png", "rating": "down", "rater": "a"})[0] == 200
        status, answer = call(server.url + "/api/finetune", "POST", {})
        assert status == 200, answer
        name = answer["name"]
        assert name == "shapes-v1-feedback"
        body = json.loads(kube.real.kubectl("get", "finetune", name, "-n", kube_namespace, "-o", "json").stdout)
        spec = body["spec"]
        assert spec["method"] == "preference" and spec["baseModel"] == {"name": "shapes", "version": "v1"}
        assert spec["datasetRef"] == {"name": "shapes"}  # from the TrainingRun that made v1
        assert spec["preference"]["feedbackUri"] == f"file://{folder.resolve()}/ratings.jsonl"
        assert spec["preference"]["beta"] == 5000  # defaulted by the API server from the CRD
        assert spec["hardware"]["pool"] == "cpu" and spec["budget"]["maxCost"] == "1"
        assert spec["training"]["learningRate"] == 3e-5 and spec["training"]["steps"] == 60
        # A second press makes a second FineTune, not a conflict.
        status, again = call(server.url + "/api/finetune", "POST", {})
        assert status == 200 and again["name"] == "shapes-v1-feedback-2"
        status, progress = call(server.url + f"/api/finetune/{name}")
        assert status == 200 and progress["phase"] == "Pending"  # no operator runs in this test
    finally:
        server.stop()
    assert f"created FineTune {kube_namespace}/shapes-v1-feedback" in server.log.read_text()


def test_a_user_without_create_on_finetunes_sees_the_api_servers_refusal(kube, kube_namespace, tmp_path):
    _setup(kube, kube_namespace)
    ns = kube_namespace
    kube.real.kubectl("create", "serviceaccount", "rater", "-n", ns)
    kube.real.kubectl("create", "role", "rater", "-n", ns, "--verb=get",
                      "--resource=genmodels.genforge.dev,trainingruns.genforge.dev,finetunes.genforge.dev")
    kube.real.kubectl("create", "rolebinding", "rater", "-n", ns, "--role=rater", f"--serviceaccount={ns}:rater")
    token = kube.real.service_account_token(ns, "rater")
    kubeconfig = kube.real.write_kubeconfig(tmp_path / "rater.kubeconfig", user={"token": token})
    folder = tmp_path / "review"
    write_samples(folder, model="shapes", version="v1", uri=URI)
    server = ProcessServer(folder, None, "--namespace", ns, env={"KUBECONFIG": str(kubeconfig)}, model="shapes")
    try:
        call(server.url + "/api/rate", "POST", {"image": "sample-0000.png", "rating": "up", "rater": "a"})
        call(server.url + "/api/rate", "POST", {"image": "sample-0002.png", "rating": "down", "rater": "a"})
        status, answer = call(server.url + "/api/finetune", "POST", {})
        assert status == 403
        assert "cannot create resource \"finetunes\"" in answer["error"] and f"system:serviceaccount:{ns}:rater" \
            in answer["error"]
    finally:
        server.stop()
    assert kube.real.kubectl("get", "finetunes", "-n", ns, "-o", "name").stdout.strip() == ""
