"""The Job controller's and kubelet's decisions (pure): tables of cases."""

from __future__ import annotations

import pytest

from genforge_local import jobcontrol as jc

POLICY = (
    {"action": "FailJob", "onExitCodes": {"containerName": "trainer", "operator": "In", "values": [2, 3, 4]}},
    {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]},
)
DISRUPTED = ({"type": "DisruptionTarget", "status": "True"},)

FAILURES = {
    "listed exit code fails the job": (POLICY, 2, (), "FailJob"),
    "other exit code counts": (POLICY, 1, (), "Count"),
    "sigterm counts": (POLICY, 143, (), "Count"),
    "disruption is ignored": (POLICY, 143, DISRUPTED, "Ignore"),
    "exit code rule wins over a later condition rule": (POLICY, 3, DISRUPTED, "FailJob"),
    "no policy counts": ((), 2, (), "Count"),
    "NotIn matches the rest": (({"action": "Ignore", "onExitCodes": {"operator": "NotIn", "values": [1]}},),
                               7, (), "Ignore"),
    "NotIn never matches exit 0": (({"action": "FailJob", "onExitCodes": {"operator": "NotIn", "values": [1]}},),
                                   0, (), "Count"),
    "another container's rule does not apply": (
        ({"action": "FailJob", "onExitCodes": {"containerName": "sidecar", "operator": "In", "values": [2]}},),
        2, (), "Count"),
}


@pytest.mark.parametrize("rules,exit_code,conditions,action", FAILURES.values(), ids=FAILURES.keys())
def test_pod_failure_policy(rules, exit_code, conditions, action):
    pod = jc.PodOutcome("p-abcde", None, False, exit_code, conditions=conditions)
    verdict = jc.judge_failure(rules, pod, "ns")
    assert verdict.action == action
    if action == "FailJob" and exit_code:
        assert verdict.message == (f"Container trainer for pod ns/p-abcde failed with exit code {exit_code} "
                                   "matching FailJob rule at index 0")


def job(**spec) -> dict:
    return {"metadata": {"name": "j", "namespace": "ns", "uid": "u-1"},
            "spec": {"template": {"metadata": {"labels": {"app": "x"}, "annotations": {"a": "b"}},
                                  "spec": {"containers": [{"name": "trainer"}]}}, **spec}}


WANTED = {
    "one pod": ({}, dict(succeeded=0, succeeded_indexes=set(), running_indexes=[], running=0), [None]),
    "already running": ({}, dict(succeeded=0, succeeded_indexes=set(), running_indexes=[None], running=1), []),
    "done": ({}, dict(succeeded=1, succeeded_indexes=set(), running_indexes=[], running=0), []),
    "suspended": ({"suspend": True}, dict(succeeded=0, succeeded_indexes=set(), running_indexes=[], running=0), []),
    "parallel completions": ({"completions": 5, "parallelism": 2},
                             dict(succeeded=2, succeeded_indexes=set(), running_indexes=[None], running=1), [None]),
    "indexed, all at once": ({"completionMode": "Indexed", "completions": 3, "parallelism": 3},
                             dict(succeeded=0, succeeded_indexes=set(), running_indexes=[], running=0), [0, 1, 2]),
    "indexed, replace a failed index": ({"completionMode": "Indexed", "completions": 3, "parallelism": 3},
                                        dict(succeeded=1, succeeded_indexes={0}, running_indexes=[2], running=1), [1]),
    "work queue: runs until one succeeds": ({"parallelism": 2},
                                            dict(succeeded=1, succeeded_indexes=set(), running_indexes=[], running=0), []),
}


@pytest.mark.parametrize("spec,state,expected", WANTED.values(), ids=WANTED.keys())
def test_pods_wanted(spec, state, expected):
    assert jc.pods_wanted(jc.JobSpec.of(job(**spec)), **state) == expected


def test_job_defaults_follow_the_api_server():
    spec = jc.JobSpec.of(job())
    assert (spec.indexed, spec.completions, spec.parallelism, spec.backoff_limit, spec.suspend) == (
        False, 1, 1, 6, False)
    assert jc.JobSpec.of(job(parallelism=2)).completions is None  # a work queue
    assert not spec.wait_for_terminating
    assert jc.JobSpec.of(job(podFailurePolicy={"rules": list(POLICY)})).wait_for_terminating


def test_indexed_pod_shape():
    pod = jc.build_pod(job(completionMode="Indexed", completions=2), 1, jc.pod_name("j", 1, "xyz12"), "node")
    meta = pod["metadata"]
    assert meta["name"] == "j-1-xyz12"
    assert meta["labels"] == {"app": "x", "batch.kubernetes.io/job-name": "j", "job-name": "j",
                              "batch.kubernetes.io/controller-uid": "u-1", "controller-uid": "u-1",
                              "batch.kubernetes.io/job-completion-index": "1"}
    assert meta["annotations"] == {"a": "b", "batch.kubernetes.io/job-completion-index": "1"}
    assert meta["finalizers"] == ["batch.kubernetes.io/job-tracking"]
    assert meta["ownerReferences"] == [{"apiVersion": "batch/v1", "kind": "Job", "name": "j", "uid": "u-1",
                                        "controller": True, "blockOwnerDeletion": True}]
    assert pod["spec"]["hostname"] == "j-1" and pod["spec"]["nodeName"] == "node"


EXPANSIONS = {
    "defined": ("--rank=$(RANK)", "--rank=3"),
    "undefined stays": ("$(NOPE)", "$(NOPE)"),
    "escaped": ("$$(RANK)", "$(RANK)"),
    "two": ("$(RANK)-$(RANK)", "3-3"),
    "plain dollar": ("$RANK", "$RANK"),
}


@pytest.mark.parametrize("text,expected", EXPANSIONS.values(), ids=EXPANSIONS.keys())
def test_expand_like_the_kubelet(text, expected):
    assert jc.expand(text, {"RANK": "3"}) == expected


def test_container_env_order_and_sources():
    pod = {"metadata": {"name": "p", "namespace": "ns", "annotations": {jc.COMPLETION_INDEX: "2"}},
           "status": {"podIP": "127.0.0.5"}}
    container = {
        "envFrom": [{"secretRef": {"name": "creds"}}, {"configMapRef": {"name": "absent", "optional": True}}],
        "env": [{"name": "TOKEN", "value": "from-env"},  # env wins over envFrom
                {"name": "RANK", "valueFrom": {"fieldRef": {
                    "fieldPath": f"metadata.annotations['{jc.COMPLETION_INDEX}']"}}},
                {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                {"name": "KEY", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "KEY"}}},
                {"name": "CPUS", "valueFrom": {"resourceFieldRef": {"resource": "requests.cpu", "divisor": "1m"}}},
                {"name": "ARG", "value": "rank-$(RANK)"}],
        "resources": {"requests": {"cpu": "500m"}},
    }
    env = jc.container_env(pod, container, config_maps={"absent": None},
                           secrets_={"creds": {"TOKEN": "secret", "KEY": "k"}})
    assert env == {"TOKEN": "from-env", "RANK": "2", "IP": "127.0.0.5", "KEY": "k", "CPUS": "500", "ARG": "rank-2"}


def test_a_missing_secret_is_a_config_error():
    with pytest.raises(jc.ConfigError, match='secret "creds" not found'):
        jc.container_env({}, {"envFrom": [{"secretRef": {"name": "creds"}}]}, config_maps={}, secrets_={"creds": None})


MESSAGES = {
    "file wins": (b'{"outcome":"Failed"}', b"log\n", True, "FallbackToLogsOnError", '{"outcome":"Failed"}'),
    "log tail on error": (b"", b"a\nb\n", True, "FallbackToLogsOnError", "a\nb\n"),
    "no tail on success": (b"", b"a\n", False, "FallbackToLogsOnError", ""),
    "no tail with File policy": (b"", b"a\n", True, "File", ""),
    "capped at 4096 bytes": (b"x" * 5000, b"", False, None, "x" * 4096),
    "tail capped at 2048 bytes": (b"", b"y" * 3000, True, "FallbackToLogsOnError", "y" * 2048),
    "tail capped at 80 lines": (b"", b"".join(b"%d\n" % i for i in range(100)), True, "FallbackToLogsOnError",
                                "".join(f"{i}\n" for i in range(20, 100))),
}


@pytest.mark.parametrize("written,log,failed,policy,expected", MESSAGES.values(), ids=MESSAGES.keys())
def test_termination_message(written, log, failed, policy, expected):
    assert jc.termination_message(written, log, failed=failed, policy=policy) == expected


@pytest.mark.parametrize("indexes,text", [((), ""), ((0,), "0"), ((0, 1, 2, 5), "0-2,5"), ((3, 1, 7, 8), "1,3,7-8")])
def test_completed_indexes(indexes, text):
    assert jc.compress_indexes(indexes) == text


def test_backoff_doubles_up_to_the_cap():
    assert [jc.backoff_delay(n, 10, 360) for n in range(7)] == [0, 10, 20, 40, 80, 160, 320]
    assert jc.backoff_delay(9, 10, 360) == 360


def test_conditions_keep_transition_time_unless_status_flips():
    t0, t1 = jc.parse_timestamp("2026-01-01T00:00:00Z"), jc.parse_timestamp("2026-01-01T00:01:00Z")
    conditions = jc.set_condition([], "Suspended", "True", "JobSuspended", "Job suspended", t0)
    same = jc.set_condition(conditions, "Suspended", "True", "JobSuspended", "Job suspended", t1)
    flipped = jc.set_condition(conditions, "Suspended", "False", "JobResumed", "Job resumed", t1)
    assert same[0]["lastTransitionTime"] == "2026-01-01T00:00:00Z"
    assert flipped[0]["lastTransitionTime"] == "2026-01-01T00:01:00Z" and flipped[0]["reason"] == "JobResumed"


def test_exit_codes_of_signals():
    assert (jc.exit_code_of(0), jc.exit_code_of(2), jc.exit_code_of(-15), jc.exit_code_of(-9)) == (0, 2, 143, 137)
