"""The local executor plays the Job controller and the kubelet: Jobs whose command is a small
Python script, run as real processes against the emulated API server."""

from __future__ import annotations

import base64
import json
import os
import sys
import textwrap
import time

import pytest
from harness import wait_for

from genforge_local.executor import LocalExecutor

# A script that records SIGTERM in $MARKER, then exits 143 as the trainer does.
SLEEPER = textwrap.dedent("""
    import os, signal, sys, time
    marker = os.environ["MARKER"]
    def stop(*_):
        with open(marker, "a") as f:
            f.write("SIGTERM\\n")
        sys.exit(143)
    signal.signal(signal.SIGTERM, stop)
    with open(marker + ".pids", "a") as f:
        f.write(f"{os.getpid()}\\n")
    time.sleep(120)
""")


@pytest.fixture
def executor(cluster, namespace, tmp_path):
    """An executor for the test's namespace only."""
    with LocalExecutor(cluster.url, tmp_path / "data", namespace=namespace, backoff_base=0.05,
                       shutdown_grace=5) as ex:
        yield ex


def make_job(name: str, script: str, **spec) -> dict:
    """A Job running `python -c script` in a container named `trainer`."""
    container = {"name": "trainer", "image": "local", "command": [sys.executable, "-c", script],
                 "terminationMessagePolicy": "FallbackToLogsOnError"}
    container.update(spec.pop("container", {}))
    pod_spec = {"restartPolicy": "Never", "terminationGracePeriodSeconds": spec.pop("grace", 5),
                "containers": [container]}
    pod_spec.update(spec.pop("pod", {}))
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name, "labels": {"app": name}},
            "spec": {"backoffLimit": 0, **spec,
                     "template": {"metadata": {"labels": {"app": name}}, "spec": pod_spec}}}


def get_job(batch_api, api_client, namespace, name) -> dict:
    return api_client.sanitize_for_serialization(batch_api.read_namespaced_job(name, namespace))


def pods_of(core_api, api_client, namespace, job_name) -> list[dict]:
    pods = core_api.list_namespaced_pod(namespace, label_selector=f"batch.kubernetes.io/job-name={job_name}")
    return sorted(api_client.sanitize_for_serialization(pods)["items"],
                  key=lambda p: p["metadata"]["creationTimestamp"])


def finished(batch_api, api_client, namespace, name, timeout=20.0) -> dict:
    """The Job once it has a Complete or Failed condition."""
    def done():
        job = get_job(batch_api, api_client, namespace, name)
        conditions = {c["type"]: c for c in job["status"].get("conditions") or [] if c["status"] == "True"}
        return job if {"Complete", "Failed"} & conditions.keys() else None

    return wait_for(done, timeout=timeout, message=f"Job {name} finished")


def conditions_of(job: dict) -> dict:
    return {c["type"]: c for c in job["status"].get("conditions") or [] if c["status"] == "True"}


def terminated(pod: dict) -> dict:
    return pod["status"]["containerStatuses"][0]["state"]["terminated"]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie counts as gone
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except OSError:
        return True


def test_success_reports_termination_message_and_pod_shape(executor, namespace, batch_api, core_api, api_client):
    script = textwrap.dedent("""
        import json, os
        env = {k: os.environ.get(k) for k in ("POD", "NS", "GREETING", "GENFORGE_METRICS_HOST")}
        open(os.environ["GENFORGE_TERMINATION_LOG"], "w").write(json.dumps({"outcome": "Succeeded", **env}))
        print("done")
    """)
    job = make_job("ok", script, container={"env": [
        {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
        {"name": "WHO", "value": "world"},
        {"name": "GREETING", "value": "hello $(WHO) $$(WHO)"},
    ]})
    created = batch_api.create_namespaced_job(namespace, job)
    done = finished(batch_api, api_client, namespace, "ok")

    assert "Complete" in conditions_of(done)
    assert done["status"]["succeeded"] == 1 and done["status"].get("failed") is None
    assert done["status"]["startTime"] and done["status"]["completionTime"]
    [pod] = pods_of(core_api, api_client, namespace, "ok")
    meta = pod["metadata"]
    assert meta["name"].startswith("ok-") and len(meta["name"]) == len("ok-") + 5
    assert meta["labels"] | {"app": "ok", "job-name": "ok", "controller-uid": created.metadata.uid} == meta["labels"]
    assert meta["ownerReferences"][0] | {"kind": "Job", "name": "ok", "controller": True} == meta["ownerReferences"][0]
    assert pod["status"]["phase"] == "Succeeded"
    state = terminated(pod)
    assert state["exitCode"] == 0 and state["reason"] == "Completed" and state["startedAt"] and state["finishedAt"]
    message = json.loads(state["message"])
    assert message == {"outcome": "Succeeded", "POD": meta["name"], "NS": namespace,
                       "GREETING": "hello world $(WHO)", "GENFORGE_METRICS_HOST": pod["status"]["podIP"]}
    assert pod["status"]["podIP"].startswith("127.") and pod["status"]["podIP"] != "127.0.0.1"
    log = executor.log_path(namespace, meta["name"])
    assert log.read_text() == "done\n"
    assert "finalizers" not in meta  # counted: the job-tracking finalizer is gone


def test_failed_pods_are_retried_up_to_the_backoff_limit(executor, namespace, batch_api, core_api, api_client):
    script = "import sys; print('boom', file=sys.stderr); sys.exit(1)"
    batch_api.create_namespaced_job(namespace, make_job("flaky", script, backoffLimit=2))
    done = finished(batch_api, api_client, namespace, "flaky")

    failed = conditions_of(done)["Failed"]
    assert failed["reason"] == "BackoffLimitExceeded"
    assert done["status"]["failed"] == 3
    pods = pods_of(core_api, api_client, namespace, "flaky")
    assert len(pods) == 3
    for pod in pods:
        assert pod["status"]["phase"] == "Failed"
        assert terminated(pod)["exitCode"] == 1
        assert terminated(pod)["message"] == "boom\n"  # FallbackToLogsOnError: the log's tail


def test_pod_failure_policy_fails_the_job_on_a_listed_exit_code(executor, namespace, batch_api, core_api, api_client):
    policy = {"rules": [{"action": "FailJob", "onExitCodes": {"containerName": "trainer", "operator": "In",
                                                              "values": [2, 3, 4]}},
                        {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]}]}
    batch_api.create_namespaced_job(namespace, make_job("bad-config", "raise SystemExit(2)", backoffLimit=5,
                                                        podFailurePolicy=policy))
    done = finished(batch_api, api_client, namespace, "bad-config")

    failed = conditions_of(done)["Failed"]
    assert failed["reason"] == "PodFailurePolicy"
    assert "exit code 2 matching FailJob rule at index 0" in failed["message"]
    assert len(pods_of(core_api, api_client, namespace, "bad-config")) == 1


def test_suspend_stops_gracefully_and_resume_starts_a_new_pod(executor, namespace, batch_api, core_api,
                                                              api_client, tmp_path):
    marker = tmp_path / "marker"
    job = make_job("pausable", SLEEPER, container={"env": [{"name": "MARKER", "value": str(marker)}]})
    batch_api.create_namespaced_job(namespace, job)
    wait_for(lambda: get_job(batch_api, api_client, namespace, "pausable")["status"].get("ready") == 1)
    wait_for(lambda: (tmp_path / "marker.pids").exists(), message="SIGTERM handler installed")
    [first] = pods_of(core_api, api_client, namespace, "pausable")
    assert first["status"]["phase"] == "Running"
    assert first["status"]["containerStatuses"][0]["state"]["running"]["startedAt"]

    batch_api.patch_namespaced_job("pausable", namespace, {"spec": {"suspend": True}})
    wait_for(lambda: marker.exists() and marker.read_text() == "SIGTERM\n", message="SIGTERM delivered")
    wait_for(lambda: not pods_of(core_api, api_client, namespace, "pausable"), message="pods deleted")

    def suspended():
        job = get_job(batch_api, api_client, namespace, "pausable")
        return job if "Suspended" in conditions_of(job) and not job["status"].get("active") else None

    job = wait_for(suspended)
    assert conditions_of(job)["Suspended"]["reason"] == "JobSuspended"
    assert job["status"].get("failed") is None  # a suspension is not a failure

    batch_api.patch_namespaced_job("pausable", namespace, {"spec": {"suspend": False}})
    [second] = wait_for(lambda: pods_of(core_api, api_client, namespace, "pausable"))
    assert second["metadata"]["name"] != first["metadata"]["name"]
    wait_for(lambda: len((tmp_path / "marker.pids").read_text().split()) == 2, message="second process started")
    resumed = get_job(batch_api, api_client, namespace, "pausable")
    assert {c["type"]: c["status"] for c in resumed["status"]["conditions"]}["Suspended"] == "False"


def test_active_deadline_fails_the_job_after_a_graceful_stop(executor, namespace, batch_api, core_api,
                                                             api_client, tmp_path):
    marker = tmp_path / "marker"
    job = make_job("slow", SLEEPER, activeDeadlineSeconds=1,
                   container={"env": [{"name": "MARKER", "value": str(marker)}]})
    started = time.monotonic()
    batch_api.create_namespaced_job(namespace, job)
    done = finished(batch_api, api_client, namespace, "slow")

    assert conditions_of(done)["Failed"]["reason"] == "DeadlineExceeded"
    assert conditions_of(done)["FailureTarget"]["reason"] == "DeadlineExceeded"
    assert 1.0 <= time.monotonic() - started < 15  # generous: a loaded 2-core machine
    assert marker.read_text() == "SIGTERM\n"
    pods = pods_of(core_api, api_client, namespace, "slow")
    assert all(terminated(p)["exitCode"] == 143 for p in pods)


def test_deleting_the_job_kills_its_process(executor, namespace, batch_api, core_api, api_client, tmp_path):
    marker = tmp_path / "marker"
    job = make_job("doomed", SLEEPER, container={"env": [{"name": "MARKER", "value": str(marker)}]})
    batch_api.create_namespaced_job(namespace, job)
    pid = int(wait_for(lambda: (tmp_path / "marker.pids").read_text().split()[0], ignore=(OSError, IndexError)))
    assert alive(pid)

    batch_api.delete_namespaced_job("doomed", namespace, propagation_policy="Background")
    wait_for(lambda: not alive(pid), message="the process is gone")
    wait_for(lambda: not pods_of(core_api, api_client, namespace, "doomed"), message="the pods are collected")
    assert marker.read_text() == "SIGTERM\n"
    assert not [p for p in executor.processes() if p.namespace == namespace]


def test_sigkill_after_the_grace_period(executor, namespace, batch_api, core_api, api_client):
    script = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('up', flush=True); time.sleep(120)"
    batch_api.create_namespaced_job(namespace, make_job("stubborn", script, grace=1))
    wait_for(lambda: get_job(batch_api, api_client, namespace, "stubborn")["status"].get("ready") == 1)
    [pod] = pods_of(core_api, api_client, namespace, "stubborn")
    log = executor.log_path(namespace, pod["metadata"]["name"])
    wait_for(lambda: log.exists() and log.read_text() == "up\n", message="SIGTERM ignored")
    stopped = time.monotonic()
    batch_api.patch_namespaced_job("stubborn", namespace, {"spec": {"suspend": True}})
    wait_for(lambda: not pods_of(core_api, api_client, namespace, "stubborn"), timeout=10)
    assert 1.0 <= time.monotonic() - stopped < 10  # SIGKILL after the 1 s grace, not at once


def test_indexed_job_runs_every_index_as_its_own_process(executor, namespace, batch_api, core_api, api_client):
    script = textwrap.dedent("""
        import json, os
        keys = ("NODE_RANK", "MASTER_ADDR", "MASTER_PORT", "HOSTNAME")
        open(os.environ["GENFORGE_TERMINATION_LOG"], "w").write(json.dumps({k: os.environ[k] for k in keys}))
    """)
    env = [{"name": "NODE_RANK", "valueFrom": {"fieldRef": {
               "fieldPath": "metadata.annotations['batch.kubernetes.io/job-completion-index']"}}},
           {"name": "MASTER_ADDR", "value": f"multi-0.multi.{namespace}.svc"},
           {"name": "MASTER_PORT", "value": "29500"}]
    job = make_job("multi", script, completions=2, parallelism=2, completionMode="Indexed",
                   container={"env": env}, pod={"subdomain": "multi"})
    batch_api.create_namespaced_job(namespace, job)
    done = finished(batch_api, api_client, namespace, "multi")

    assert "Complete" in conditions_of(done)
    assert done["status"]["succeeded"] == 2 and done["status"]["completedIndexes"] == "0-1"
    pods = pods_of(core_api, api_client, namespace, "multi")
    seen = {}
    for pod in pods:
        index = pod["metadata"]["annotations"]["batch.kubernetes.io/job-completion-index"]
        assert pod["metadata"]["name"].startswith(f"multi-{index}-")
        seen[index] = json.loads(terminated(pod)["message"])
    assert sorted(seen) == ["0", "1"]
    assert {s["NODE_RANK"] for s in seen.values()} == {"0", "1"}
    assert {s["MASTER_ADDR"] for s in seen.values()} == {"127.0.0.1"}  # no cluster DNS: loopback
    [port] = {s["MASTER_PORT"] for s in seen.values()}  # one free port for the whole Job
    assert port.isdigit()
    assert {s["HOSTNAME"] for s in seen.values()} == {"multi-0", "multi-1"}
    assert len({p["status"]["podIP"] for p in pods}) == 2


def test_config_map_volume_secret_env_and_path_map(executor, namespace, batch_api, core_api, api_client):
    core_api.create_namespaced_config_map(namespace, {"metadata": {"name": "spec"}, "data": {"run.json": '{"a": 1}'}})
    core_api.create_namespaced_secret(namespace, {"metadata": {"name": "creds"},
                                                  "data": {"TOKEN": base64.b64encode(b"s3cret").decode()}})
    script = textwrap.dedent("""
        import json, os
        paths = json.loads(os.environ["GENFORGE_PATH_MAP"])
        spec = json.load(open(os.path.join(paths["/etc/genforge"], "run.json")))
        open(os.path.join(paths["/data"], "out.txt"), "w").write("written")
        result = {"spec": spec, "token": os.environ["TOKEN"], "mounts": sorted(paths)}
        open(os.environ["GENFORGE_TERMINATION_LOG"], "w").write(json.dumps(result))
    """)
    job = make_job("mounts", script, container={
        "envFrom": [{"secretRef": {"name": "creds"}}],
        "volumeMounts": [{"name": "run-spec", "mountPath": "/etc/genforge", "readOnly": True},
                         {"name": "data", "mountPath": "/data"}, {"name": "scratch", "mountPath": "/tmp"}]},
        pod={"volumes": [{"name": "run-spec", "configMap": {"name": "spec"}},
                         {"name": "data", "persistentVolumeClaim": {"claimName": "genforge-data"}},
                         {"name": "scratch", "emptyDir": {}}]})
    batch_api.create_namespaced_job(namespace, job)
    done = finished(batch_api, api_client, namespace, "mounts")

    assert "Complete" in conditions_of(done)
    [pod] = pods_of(core_api, api_client, namespace, "mounts")
    result = json.loads(terminated(pod)["message"])
    assert result == {"spec": {"a": 1}, "token": "s3cret", "mounts": ["/data", "/etc/genforge", "/tmp"]}
    assert (executor.claim_dir(namespace, "genforge-data") / "out.txt").read_text() == "written"


def test_downward_api_volume_with_one_annotation_and_all_labels(executor, namespace, batch_api, core_api, api_client):
    """How the trainer gets its run document: the pod's own annotation as a file, the value as
    it is (a missing key: an empty file), as the kubelet writes a downward-API volume."""
    script = textwrap.dedent("""
        import json, os
        folder = json.loads(os.environ["GENFORGE_PATH_MAP"])["/etc/genforge"]
        files = {n: open(os.path.join(folder, n)).read() for n in sorted(os.listdir(folder))}
        open(os.environ["GENFORGE_TERMINATION_LOG"], "w").write(json.dumps(files))
    """)
    job = make_job("downward", script, container={
        "volumeMounts": [{"name": "run-spec", "mountPath": "/etc/genforge", "readOnly": True}]},
        pod={"volumes": [{"name": "run-spec", "downwardAPI": {"items": [
            {"path": "run.json", "fieldRef": {"fieldPath": "metadata.annotations['genforge.dev/run-spec']"}},
            {"path": "none", "fieldRef": {"fieldPath": "metadata.annotations['absent']"}},
            {"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}}]}}]})
    document = json.dumps({"command": "train", "text": "quotes \" and\nnew lines"}, indent=2)
    job["spec"]["template"]["metadata"]["annotations"] = {"genforge.dev/run-spec": document}
    batch_api.create_namespaced_job(namespace, job)
    done = finished(batch_api, api_client, namespace, "downward")

    assert "Complete" in conditions_of(done)
    [pod] = pods_of(core_api, api_client, namespace, "downward")
    files = json.loads(terminated(pod)["message"])
    assert files["run.json"] == document and files["none"] == ""
    assert 'app="downward"' in files["labels"].splitlines()


def test_missing_secret_keeps_the_pod_pending_until_it_exists(executor, namespace, batch_api, core_api, api_client):
    job = make_job("waits", "import os; assert os.environ['TOKEN'] == 'late'",
                   container={"envFrom": [{"secretRef": {"name": "later"}}]})
    batch_api.create_namespaced_job(namespace, job)
    waiting = wait_for(lambda: pods_of(core_api, api_client, namespace, "waits")[0]["status"]
                       ["containerStatuses"][0]["state"].get("waiting", {}).get("reason") == "CreateContainerConfigError")
    assert waiting
    core_api.create_namespaced_secret(namespace, {"metadata": {"name": "later"}, "stringData": {"TOKEN": "late"}})
    done = finished(batch_api, api_client, namespace, "waits")
    assert "Complete" in conditions_of(done)


def test_eviction_is_ignored_by_the_pod_failure_policy(executor, namespace, batch_api, core_api, api_client, tmp_path):
    marker = tmp_path / "marker"
    policy = {"rules": [{"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]}]}
    job = make_job("spot", SLEEPER, podFailurePolicy=policy, container={"env": [{"name": "MARKER", "value": str(marker)}]})
    batch_api.create_namespaced_job(namespace, job)
    wait_for(lambda: (tmp_path / "marker.pids").exists(), message="SIGTERM handler installed")
    [first] = pods_of(core_api, api_client, namespace, "spot")

    executor.evict(namespace, first["metadata"]["name"])
    replacement = wait_for(lambda: [p for p in pods_of(core_api, api_client, namespace, "spot")
                                    if p["metadata"]["name"] != first["metadata"]["name"]])
    assert replacement
    job = get_job(batch_api, api_client, namespace, "spot")
    assert job["status"].get("failed") is None and "Failed" not in conditions_of(job)


def test_missing_executable_is_a_start_error(executor, namespace, batch_api, core_api, api_client):
    job = make_job("typo", "", container={"command": ["genforge-no-such-command"]})
    batch_api.create_namespaced_job(namespace, job)
    done = finished(batch_api, api_client, namespace, "typo")
    [pod] = pods_of(core_api, api_client, namespace, "typo")
    assert terminated(pod)["reason"] == "StartError" and terminated(pod)["exitCode"] == 128
    assert "executable file not found" in terminated(pod)["message"]
    assert conditions_of(done)["Failed"]["reason"] == "BackoffLimitExceeded"


def test_bin_dir_comes_first_on_the_pods_path(cluster, namespace, batch_api, core_api, api_client, tmp_path):
    """`bin_dir` replaces this Python's folder at the head of PATH: a benchmark's stand-in
    `genforge-trainer` runs instead of the real one for a `genforge/trainer` image."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    stand_in = bin_dir / "genforge-trainer"
    stand_in.write_text('#!/bin/sh\nprintf "stand-in %s" "$*" > "$GENFORGE_TERMINATION_LOG"\n')
    stand_in.chmod(0o755)
    with LocalExecutor(cluster.url, tmp_path / "data", namespace=namespace, bin_dir=bin_dir):
        job = make_job("stand-in", "")
        job["spec"]["template"]["spec"]["containers"][0] = {"name": "trainer", "image": "genforge/trainer:dev"}
        batch_api.create_namespaced_job(namespace, job)
        done = finished(batch_api, api_client, namespace, "stand-in")
        [pod] = pods_of(core_api, api_client, namespace, "stand-in")
    assert "Complete" in conditions_of(done)
    assert terminated(pod)["message"] == "stand-in --help"  # the image's CMD, run by the stand-in


def test_stop_terminates_every_process(cluster, namespace, batch_api, tmp_path):
    marker = tmp_path / "marker"
    executor = LocalExecutor(cluster.url, tmp_path / "data", namespace=namespace, shutdown_grace=5).start()
    try:
        job = make_job("left-running", SLEEPER, container={"env": [{"name": "MARKER", "value": str(marker)}]})
        batch_api.create_namespaced_job(namespace, job)
        pid = int(wait_for(lambda: (tmp_path / "marker.pids").read_text().split()[0], ignore=(OSError, IndexError)))
    finally:
        executor.stop()
    assert not alive(pid)
    assert marker.read_text() == "SIGTERM\n"
