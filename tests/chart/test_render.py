"""The chart renders, lints clean and produces valid objects for every value set in ci/."""

from __future__ import annotations

import argparse
import copy

import pytest
import yaml

from chart.rendering import (
    CHART,
    CRDS_CHART,
    KUBE_VERSION,
    NAMESPACE,
    VALUE_SETS,
    chart_crds,
    ci_values,
    helm,
    of_kind,
    one,
    operator_container,
    operator_deployment,
    operator_env,
    render,
    render_files,
)

kubernetes_validate = pytest.importorskip("kubernetes_validate")

MONITORING = {"ServiceMonitor", "PodMonitor", "PrometheusRule"}
PEERING = {"ClusterKopfPeering", "KopfPeering"}


def test_the_issue_value_sets_exist():
    assert {"default", "ha", "namespaced", "monitoring"} <= set(VALUE_SETS)


@pytest.mark.parametrize("chart", [CHART, CRDS_CHART], ids=lambda p: p.name)
@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_lint_strict_is_clean(chart, value_set):
    values = ci_values(value_set) if chart == CHART else {}
    report = helm().lint(str(chart), values, strict=True, namespace=NAMESPACE, kube_version=f"v{KUBE_VERSION}.0")
    problems = [m for m in report["messages"] if m["severity"] >= 2]  # 1 is "info" (e.g. "icon is recommended")
    assert not problems and not report["errors"], problems or report["errors"]


def _validate(obj: dict) -> None:
    kind, api_version = obj["kind"], obj["apiVersion"]
    if api_version.startswith("genforge.dev/"):
        from genforge_operator import schema

        errors = schema.validate(obj)
        assert not errors, f"{kind} {obj['metadata']['name']}: {errors}"
    elif kind in PEERING:
        assert set(obj) == {"apiVersion", "kind", "metadata"}, obj  # kopf writes only status
    elif kind in MONITORING:
        assert api_version == "monitoring.coreos.com/v1" and obj["spec"], obj  # no schema offline: see below
    else:
        kubernetes_validate.validate(obj, KUBE_VERSION, strict=True)


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_every_rendered_object_is_valid(value_set):
    objects = render(ci_values(value_set))
    assert objects
    for obj in objects:
        _validate(obj)


def test_the_crds_helm_installs_are_valid():
    crds = chart_crds()
    assert len(crds) == 8
    for crd in crds:
        kubernetes_validate.validate(crd, KUBE_VERSION, strict=True)


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_objects_are_namespaced_or_cluster_scoped_as_kubernetes_expects(value_set):
    cluster_scoped = {"ClusterRole", "ClusterRoleBinding", "AcceleratorPool", "ClusterKopfPeering"}
    for obj in render(ci_values(value_set)):
        has_namespace = "namespace" in obj["metadata"]
        assert has_namespace != (obj["kind"] in cluster_scoped), f"{obj['kind']} {obj['metadata']['name']}"


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_no_two_objects_share_kind_namespace_and_name(value_set):
    keys = [(o["kind"], o["metadata"].get("namespace"), o["metadata"]["name"]) for o in render(ci_values(value_set))]
    assert len(keys) == len(set(keys))


# ------------------------------------------------------------------ what each value set means
def test_default_is_one_standalone_operator_watching_everything():
    objects = render({})
    deployment = operator_deployment(objects)
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}  # never two standalone operators at once
    assert "--all-namespaces" in operator_container(objects)["args"]
    assert "GENFORGE_PEERING" not in operator_env(objects)
    assert not of_kind(objects, "PodDisruptionBudget") and not of_kind(objects, "ClusterKopfPeering")
    assert {o["kind"] for o in objects} & MONITORING == set()


def test_ha_peers_three_replicas_with_a_disruption_budget():
    objects = render(ci_values("ha"))
    deployment = operator_deployment(objects)
    assert deployment["spec"]["replicas"] == 3
    assert deployment["spec"]["strategy"]["type"] == "RollingUpdate"
    peering = one(objects, "ClusterKopfPeering")
    assert operator_env(objects)["GENFORGE_PEERING"] == peering["metadata"]["name"]
    pdb = one(objects, "PodDisruptionBudget")
    assert pdb["spec"]["minAvailable"] == 1
    assert pdb["spec"]["selector"] == deployment["spec"]["selector"]
    pod = deployment["spec"]["template"]["spec"]
    assert pod["affinity"]["podAntiAffinity"], "replicas spread over nodes by default"
    assert any(e["name"] == "POD_ID" for e in operator_container(objects)["env"]), "kopf's peer identity"


def test_namespaced_mode_watches_and_peers_in_each_namespace():
    objects = render(ci_values("namespaced"))
    args = operator_container(objects)["args"]
    assert "--namespace=team-a" in args and "--namespace=team-b" in args and "--all-namespaces" not in args
    assert {o["metadata"]["namespace"] for o in of_kind(objects, "KopfPeering")} == {"team-a", "team-b"}
    assert not of_kind(objects, "ClusterKopfPeering")
    assert {o["metadata"]["namespace"] for o in of_kind(objects, "Role")} == {"team-a", "team-b"}
    trainer_accounts = [o for o in of_kind(objects, "ServiceAccount") if o["metadata"]["name"] == "genforge-trainer"]
    assert {o["metadata"]["namespace"] for o in trainer_accounts} == {"team-a", "team-b"}


def test_monitoring_objects():
    objects = render(ci_values("monitoring"))
    service = one(objects, "Service")
    monitor = one(objects, "ServiceMonitor")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["endpoints"] == [{
        "port": "metrics", "path": "/metrics", "interval": "30s", "scrapeTimeout": "10s", "honorLabels": True}]
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    pod_monitor = one(objects, "PodMonitor")
    assert pod_monitor["spec"]["podMetricsEndpoints"][0]["port"] == "metrics"
    assert pod_monitor["spec"]["namespaceSelector"] == {"any": True}


def test_the_prometheus_rule_carries_the_rules_file_literally():
    rule = one(render(ci_values("monitoring")), "PrometheusRule")
    assert rule["spec"] == yaml.safe_load((CHART / "rules" / "genforge-rules.yaml").read_text())
    text = render_files(ci_values("monitoring"))["genforge/templates/prometheusrule.yaml"]
    assert "{{ $labels.namespace }}" in text, "Prometheus templates must reach Prometheus unrendered"


def test_the_dashboard_configmap_is_the_dashboard_file():
    dashboard = one(render(ci_values("monitoring")), "ConfigMap")
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert dashboard["metadata"]["namespace"] == "monitoring"
    assert dashboard["data"]["genforge.json"] == (CHART / "dashboards" / "genforge.json").read_text().rstrip("\n")


def test_pools_and_budgets_come_from_values():
    values = ci_values("gke")
    objects = render(values)
    pools = {p["metadata"]["name"]: p["spec"] for p in of_kind(objects, "AcceleratorPool")}
    assert pools == values["pools"]
    budget = one(objects, "Budget")
    assert (budget["metadata"]["namespace"], budget["spec"]) == ("team-a", values["budgets"][0]["spec"])


# ------------------------------------------------------------------ the operator process
def test_the_container_args_are_a_valid_genforge_operator_command_line():
    from genforge_operator import cli, run_operator

    assert cli.COMMANDS["operator"][0] == run_operator.__name__
    for value_set, expected in (("default", ["--all-namespaces"]),
                                ("namespaced", ["--namespace", "team-a", "--namespace", "team-b"])):
        command, *rest = operator_container(render(ci_values(value_set)))["args"]
        assert command == "operator"
        parser = argparse.ArgumentParser()
        run_operator.add_arguments(parser)
        argv = run_operator.kopf_arguments(parser.parse_args(rest))
        assert " ".join(expected) in " ".join(argv)
        assert argv[argv.index("--liveness") + 1] == "http://0.0.0.0:8081/healthz"
        assert argv[-2:] == ["-m", "genforge_operator.main"]


def test_probes_and_metrics_ports_are_the_operators():
    from genforge_operator import metrics
    from genforge_operator.run_operator import DEFAULT_LIVENESS

    container = operator_container(render({}))
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"metrics": metrics.DEFAULT_PORT, "health": int(DEFAULT_LIVENESS.split(":")[2].split("/")[0])}
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert operator_env(render({}))["GENFORGE_METRICS_PORT"] == str(metrics.DEFAULT_PORT)


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_the_operator_reads_the_chart_settings_from_its_env(value_set):
    """The Deployment's env, read by the operator's own config code, says what the values say."""
    from genforge_operator.config import OperatorConfig

    values = ci_values(value_set)
    config = OperatorConfig.from_env(operator_env(render(values)))
    trainer = values.get("trainer", {})
    image = trainer.get("image", {})
    assert config.trainer_image == f"{image.get('repository', 'ghcr.io/genforge/trainer')}:{image.get('tag', '0.1.0')}"
    assert config.service_account == "genforge-trainer"
    storage = values.get("storage", {})
    if storage.get("type") == "objectStore":
        assert config.storage.pvc is None
        assert config.storage.uri == storage["objectStore"]["uri"]
    else:
        assert (config.storage.pvc, config.storage.mount_path, config.storage.uri) == (
            "genforge-data", "/data", "file:///data")
    if "memoryRequest" in trainer:
        assert config.memory_request == trainer["memoryRequest"]


def test_every_env_var_the_chart_sets_is_one_the_operator_reads():
    package = CHART.parents[1] / "operator" / "genforge_operator"
    read = "".join((package / f).read_text() for f in ("config.py", "main.py", "metrics.py"))
    read_by_others = {"POD_ID": "kopf", "MALLOC_ARENA_MAX": "glibc's malloc"}
    for name in operator_env(render(ci_values("ha"))):
        assert f'"{name}"' in read or name in read_by_others, f"{name} is set by the chart but read nowhere"


def test_the_digest_pins_the_image():
    digest = "sha256:" + "a" * 64
    objects = render({"operator": {"image": {"digest": digest}}, "trainer": {"image": {"digest": digest}}})
    assert operator_container(objects)["image"] == f"ghcr.io/genforge/operator@{digest}"
    assert operator_env(objects)["GENFORGE_TRAINER_IMAGE"] == f"ghcr.io/genforge/trainer@{digest}"


def test_notes_say_what_to_try_next():
    notes = render_files({})["genforge/templates/NOTES.txt"]
    assert "kubectl get genforge" in notes
    assert "kubectl get acceleratorpools" in notes


def test_trainer_jobs_under_the_chart_settings_are_valid(tmp_path):
    """What the operator would create with the chart's env: valid Jobs with the chart's image and storage."""
    from genforge_operator.config import OperatorConfig
    from genforge_operator.manifests import load_resources
    from genforge_operator.render import render as render_children

    objects = render(ci_values("kind"))
    config = OperatorConfig.from_env(operator_env(objects))
    pools = tmp_path / "pools.yaml"
    pools.write_text(yaml.safe_dump_all(of_kind(objects, "AcceleratorPool")))
    examples = CHART.parents[1] / "examples"
    files = [str(examples / f) for f in ("model.yaml", "dataset.yaml", "trainingrun.yaml")] + [str(pools)]
    children, problems = render_children(load_resources(files, "default"), config)
    assert not problems
    jobs = [o for _, o in children if o["kind"] == "Job"]
    assert jobs
    for job in jobs:
        kubernetes_validate.validate(_with_api_defaults(job), KUBE_VERSION, strict=True)
        pod = job["spec"]["template"]["spec"]
        assert pod["containers"][0]["image"] == "genforge/trainer:dev"
        assert pod["serviceAccountName"] == "genforge-trainer" and pod["automountServiceAccountToken"] is False
        claims = [v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"] if "persistentVolumeClaim" in v]
        assert claims == ["genforge-data"]
    created = {(o["metadata"]["namespace"], o["metadata"]["name"]) for o in of_kind(objects, "PersistentVolumeClaim")}
    assert ("default", "genforge-data") in created


def _with_api_defaults(job: dict) -> dict:
    """The Job as the API server stores it: podFailurePolicy onPodConditions[].status defaults to
    "True" (the OpenAPI documents of Kubernetes < 1.35 list the field as required all the same)."""
    job = copy.deepcopy(job)
    for rule in (job["spec"].get("podFailurePolicy") or {}).get("rules", []):
        for pattern in rule.get("onPodConditions", []):
            pattern.setdefault("status", "True")
    return job


def test_selectors_find_the_pods_they_mean():
    """NetworkPolicies and the PodMonitor select the trainer pods by the labels the operator gives them."""
    from genforge_operator.config import OperatorConfig
    from genforge_operator.naming import owner_labels

    objects = render(ci_values("monitoring"))
    trainer_labels = owner_labels("TrainingRun", "r", "uid")
    operator_pod_labels = operator_deployment(objects)["spec"]["template"]["metadata"]["labels"]
    trainer_port = OperatorConfig().metrics_port
    operator_policy = one(objects, "NetworkPolicy", "genforge-operator")
    assert operator_policy["spec"]["podSelector"]["matchLabels"].items() <= operator_pod_labels.items()
    to_trainers = operator_policy["spec"]["egress"][1]
    assert to_trainers["ports"] == [{"port": trainer_port, "protocol": "TCP"}]
    assert to_trainers["to"][0]["podSelector"]["matchLabels"].items() <= trainer_labels.items()
    for policy in of_kind(objects, "NetworkPolicy"):
        if policy["metadata"]["name"] == "genforge-trainer":
            assert policy["spec"]["podSelector"]["matchLabels"].items() <= trainer_labels.items()
            from_operator = policy["spec"]["ingress"][0]["from"][0]["podSelector"]["matchLabels"]
            assert from_operator.items() <= operator_pod_labels.items()
    assert one(objects, "PodMonitor")["spec"]["selector"]["matchLabels"].items() <= trainer_labels.items()


LONG_RELEASE = "a-release-name-of-fifty-three-characters-helm-accepts"  # Helm's limit is 53


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_every_name_stays_a_valid_dns_label_for_the_longest_release_name(value_set):
    """`<fullname>-metrics` was cut after `fullname` was cut to 63: a 47-53 character release name
    made a 64+ character Service name and `helm install` failed."""
    import re

    assert len(LONG_RELEASE) == 53
    with helm().Chart.load(str(CHART)) as loaded:
        files = loaded.render(ci_values(value_set), name=LONG_RELEASE, namespace=NAMESPACE)
    objects = [doc for path, text in files.items() if not path.endswith(".txt")
               for doc in yaml.safe_load_all(text) if doc]
    assert objects
    label = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    for obj in objects:
        name = obj["metadata"]["name"]
        assert len(name) <= 63 and label.match(name), f"{obj['kind']} {name!r} ({len(name)} characters)"
        if obj["kind"] == "Service":
            assert name[0].isalpha(), name  # DNS-1035
        for key, value in (obj["metadata"].get("labels") or {}).items():
            assert len(str(value)) <= 63, f"{obj['kind']} {name}: label {key}={value!r}"


# ----------------------------------------------------------------------------- review component


def _review(objects: list[dict]) -> list[dict]:
    return [o for o in objects if o["metadata"].get("labels", {}).get("app.kubernetes.io/component") == "review"]


def test_the_review_component_is_off_by_default():
    assert _review(render(ci_values("default"))) == []


def test_the_review_component_serves_genforge_review_on_the_pods_loopback_over_the_data_pvc():
    from genforge_operator import cli
    from genforge_operator.review import cli as review_cli

    objects = _review(render(ci_values("review")))
    assert sorted(o["kind"] for o in objects) == ["Deployment", "Role", "RoleBinding", "ServiceAccount"]
    assert {o["metadata"]["namespace"] for o in objects} == {"team-a"}
    pod = one(objects, "Deployment")["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["image"] == "ghcr.io/genforge/trainer:0.1.0"  # the trainer image: torch for generation
    assert container["command"] == ["genforge"] and cli.COMMANDS["review"][0] == review_cli.__name__
    command, *rest = container["args"]
    assert command == "review"
    parser = argparse.ArgumentParser()
    review_cli.add_arguments(parser)
    args = parser.parse_args(rest)
    assert (args.model, args.namespace, args.host, args.port) == ("shapes:v1", "team-a", "127.0.0.1", 8765)
    assert args.data_root == "/data" and args.per_label == 8
    assert {"name": "data", "mountPath": "/data"} in container["volumeMounts"]
    assert {"name": "data", "persistentVolumeClaim": {"claimName": "genforge-data"}} in pod["volumes"]
    assert pod["serviceAccountName"] == "genforge-review"
    probe = container["readinessProbe"]["exec"]["command"]
    assert probe[:2] == ["python", "-c"] and "http://127.0.0.1:8765/api/state" in probe[2]
    rules = one(objects, "Role")["rules"]
    assert {"apiGroups": ["genforge.dev"], "resources": ["finetunes"], "verbs": ["create"]} in rules
    assert all(set(r["verbs"]) <= {"get", "create"} for r in rules)


def test_without_allow_fine_tune_the_review_account_cannot_create_finetunes():
    values = ci_values("review")
    values["review"]["allowFineTune"] = False
    rules = one(_review(render(values)), "Role")["rules"]
    assert all(r["verbs"] == ["get"] for r in rules)


@pytest.mark.parametrize(("values", "message"), [
    ({"review": {"enabled": True, "model": "shapes"}, "storage": {"type": "objectStore",
                                                                  "objectStore": {"uri": "s3://b/g"}}},
     "review.enabled needs storage.type pvc"),
    ({"review": {"enabled": True}}, "review.model is required"),
])
def test_the_review_component_refuses_what_cannot_work(values, message):
    with pytest.raises(helm().HelmRenderError) as info:
        render(values)
    assert message in str(info.value)
