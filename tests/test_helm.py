"""The Helm chart in helm/loglake, checked offline with real Helm and real Kubernetes schemas.

Helm's own Go library (PyPI ``helm-python-sdk``) lints and renders the chart;
every rendered manifest is validated strictly against Kubernetes' JSON schemas
(PyPI ``kubernetes-validate``) for 1.29 and the newest version it bundles; and the
loglake.toml the ConfigMap carries is read by loglake's own config loader with
the environment each container would have, so the chart and the program cannot
drift apart.
"""

from __future__ import annotations

import copy
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes_validate
import pytest
import yaml
from kubernetes_validate import utils as kv_utils

from loglake.core.config import load_config

CHART = Path(__file__).resolve().parent.parent / "helm" / "loglake"
RELEASE, NAMESPACE = "rel", "logs"
FULLNAME = f"{RELEASE}-loglake"
K8S_VERSIONS = ("1.29", kv_utils.major_minor(kv_utils.latest_version()))
WORKLOAD_KINDS = {"Deployment", "DaemonSet"}

# -- values of the scenarios --------------------------------------------------------------

#: The values with no default: without any of them the chart refuses to render.
REQUIRED: dict[str, Any] = {
    "kafka": {"bootstrapServers": "kafka-0.kafka:9092,kafka-1.kafka:9092", "topic": "prod.logs"},
    "storage": {"dataRoot": "s3://acme-logs/loglake", "s3": {"existingSecret": "loglake-s3"}},
    "catalog": {"url": "postgresql://loglake@pg.db:5432/loglake?sslmode=require",
                "passwordSecret": {"name": "loglake-pg", "key": "password"}},
}

#: Every optional feature switched on.
FULL: dict[str, Any] = {
    "image": {"repository": "registry.example/loglake", "tag": "0.1.0-rc1", "pullPolicy": "Always"},
    "imagePullSecrets": [{"name": "registry-creds"}],
    "kafka": {
        "bootstrapServers": "b-1.msk.example:9096,b-2.msk.example:9096", "topic": "prod.logs", "partitions": 12,
        "securityProtocol": "SASL_SSL",
        "sasl": {"mechanism": "SCRAM-SHA-512", "existingSecret": "kafka-user", "passwordKey": "pw",
                 "usernameKey": "user"},
        "tls": {"existingSecret": "kafka-tls", "caKey": "ca.pem", "certKey": "client.pem", "keyKey": "client.key",
                "checkHostname": False},
    },
    "catalog": {"existingSecret": "loglake-catalog", "urlKey": "dsn"},
    "storage": {"dataRoot": "s3://acme-logs/loglake", "s3": {
        "endpointUrl": "https://minio.storage.svc:9000", "region": "eu-west-1", "pathStyle": True,
        "existingSecret": "minio-keys", "accessKeyIdKey": "accesskey", "secretAccessKeyKey": "secretkey"}},
    "config": {
        "ingest": {"flush_interval_s": 5, "formats": [{"service": "billing*", "format": "json"}]},
        "retention": {"policies": [{"tenant": "*", "max_age": "30d"}]},
        "compaction": {"interval_s": 600},
    },
    "podLabels": {"team": "observability"},
    "podAnnotations": {"example.com/owner": "sre"},
    "serviceAccount": {"annotations": {"example.com/role": "loglake"}},
    "metrics": {"serviceMonitor": {"enabled": True, "labels": {"release": "kube-prometheus"}}},
    "shipper": {"priorityClassName": "system-node-critical", "nodeSelector": {"kubernetes.io/os": "linux"},
                "exclude": ["/var/log/pods/kube-system_*/*/*.log"]},
    "ingest": {"affinity": {"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
        {"weight": 100, "podAffinityTerm": {"topologyKey": "kubernetes.io/hostname", "labelSelector": {
            "matchLabels": {"app.kubernetes.io/component": "ingest"}}}}]}},
        "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "logs", "effect": "NoSchedule"}]},
    "query": {"service": {"type": "LoadBalancer", "annotations": {"example.com/lb": "internal"}},
              "tls": {"existingSecret": "query-cert"},
              "ingress": {"enabled": True, "className": "nginx",
                          "annotations": {"nginx.ingress.kubernetes.io/proxy-read-timeout": "300"},
                          "hosts": [{"host": "logs.example.com", "paths": [{"path": "/", "pathType": "Prefix"}]}],
                          "tls": [{"secretName": "logs-tls", "hosts": ["logs.example.com"]}]}},
    "maintain": {"nodeSelector": {"kubernetes.io/os": "linux"},
                 "backup": {"dest": "s3://backups/loglake", "intervalS": 21600, "keep": 14},
                 "iceberg": {"enabled": True, "intervalS": 120}},
    "receive": {"enabled": True, "replicas": 3, "port": 4400, "service": {"port": 80, "annotations": {
        "example.com/lb": "internal"}}, "nodeSelector": {"kubernetes.io/os": "linux"}},
}

DEMO: dict[str, Any] = {
    "demo": {"enabled": True, "persistence": {"enabled": True, "storageClass": "standard"}},
    "query": {"ingress": {"enabled": True}},
}

SCENARIOS = {"required": REQUIRED, "full": FULL, "demo": DEMO}

#: What a secretKeyRef would hold, by variable, where the value's form matters to the loader.
SECRET_PLACEHOLDERS = {
    "LOGLAKE_STORAGE__CATALOG_URL": "postgresql://loglake:from-secret@pg.db:5432/loglake",
    "LOGLAKE_KAFKA__SASL_USERNAME": "user-from-secret",
}
NODE_NAME = "node-a"


def merged(*layers: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for layer in layers:
        out = _merge(out, layer)
    return out


def _merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(a)
    for k, v in b.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def without(values: dict[str, Any], dotted: str) -> dict[str, Any]:
    out = copy.deepcopy(values)
    *parents, last = dotted.split(".")
    node = out
    for p in parents:
        node = node[p]
    node.pop(last)
    return out


# -- rendering ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def chart() -> Iterator[helm.Chart]:
    with helm.Chart.load(CHART) as c:
        yield c


class Rendered:
    """The objects one render produced, with lookups the checks below use."""

    def __init__(self, files: dict[str, str]) -> None:
        self.notes = next((text for name, text in files.items() if name.endswith("NOTES.txt")), "")
        self.objects: list[dict[str, Any]] = []
        for name, text in sorted(files.items()):
            if name.endswith(".yaml"):
                self.objects += [doc for doc in yaml.safe_load_all(text) if doc]

    def kinds(self) -> list[str]:
        return sorted(o["kind"] for o in self.objects)

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [o for o in self.objects if o["kind"] == kind]

    def get(self, kind: str, name: str) -> dict[str, Any]:
        found = [o for o in self.of(kind) if o["metadata"]["name"] == name]
        assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}: {self.kinds()}"
        return found[0]

    def workloads(self) -> list[dict[str, Any]]:
        return [o for o in self.objects if o["kind"] in WORKLOAD_KINDS]

    def workload(self, component: str) -> dict[str, Any]:
        kind = "DaemonSet" if component == "shipper" else "Deployment"
        return self.get(kind, f"{FULLNAME}-{component}")

    def config_toml(self) -> str:
        return str(self.get("ConfigMap", FULLNAME)["data"]["loglake.toml"])


def render(chart: helm.Chart, values: dict[str, Any]) -> Rendered:
    return Rendered(chart.render(copy.deepcopy(values), name=RELEASE, namespace=NAMESPACE))


@pytest.fixture(scope="module")
def rendered(chart: helm.Chart) -> dict[str, Rendered]:
    return {name: render(chart, values) for name, values in SCENARIOS.items()}


def containers(workload: dict[str, Any], *, init: bool = True) -> list[dict[str, Any]]:
    spec = workload["spec"]["template"]["spec"]
    return list(spec.get("initContainers", []) if init else []) + list(spec["containers"])


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


# -- lint ------------------------------------------------------------------------------------


@pytest.mark.parametrize("scenario", list(SCENARIOS))
@pytest.mark.parametrize("kube_version", [None, "v1.29.0"])
def test_chart_lints_clean_in_strict_mode(scenario: str, kube_version: str | None) -> None:
    report = helm.lint(CHART, copy.deepcopy(SCENARIOS[scenario]), strict=True, kube_version=kube_version)
    assert report["total_charts_linted"] == 1
    problems = [m for m in report["messages"] if m["severity"] >= 2]   # 2 warning, 3 error
    assert not problems and not report["errors"], (problems, report["errors"])


def test_lint_reports_what_the_schema_forbids() -> None:
    """The lint check can fail: a misspelt top-level key is an error, not a silent no-op."""
    report = helm.lint(CHART, merged(REQUIRED, {"kafak": {"topic": "x"}}), strict=True)
    assert any("kafak" in e for e in report["errors"]), report


@pytest.mark.parametrize("bad, where", [
    ({"ingest": {"replicas": "two"}}, "/ingest/replicas"),
    ({"kafka": {"securityProtocol": "SASL"}}, "/kafka/securityProtocol"),
    ({"shipper": {"checkpointHostPath": "relative/dir"}}, "/shipper/checkpointHostPath"),
    ({"query": {"port": 70000}}, "/query/port"),
])
def test_values_schema_rejects_wrong_types(chart: helm.Chart, bad: dict[str, Any], where: str) -> None:
    with pytest.raises(helm.HelmValuesError, match=where):
        render(chart, merged(REQUIRED, bad))


# -- what each scenario renders ---------------------------------------------------------------


def test_defaults_plus_required_values_render_every_component(rendered: dict[str, Rendered]) -> None:
    r = rendered["required"]
    assert r.kinds() == sorted(["ConfigMap", "DaemonSet", "Deployment", "Deployment", "Deployment",
                                "HorizontalPodAutoscaler", "PodDisruptionBudget", "PodDisruptionBudget",
                                "Service", "ServiceAccount"])
    for component in ("shipper", "ingest", "query", "maintain"):
        assert containers(r.workload(component), init=False)[0]["args"] == [
            {"shipper": "ship", "query": "serve"}.get(component, component)]
    assert "Secret" not in r.kinds(), "secrets come from existing Secrets, never from the chart"
    assert not {"Role", "ClusterRole", "RoleBinding", "ClusterRoleBinding"} & set(r.kinds())
    assert "prod.logs" in r.notes and "s3://acme-logs/loglake" in r.notes


def test_every_optional_feature_renders(rendered: dict[str, Rendered]) -> None:
    r = rendered["full"]
    for kind in ("Ingress", "ServiceMonitor", "HorizontalPodAutoscaler", "PodDisruptionBudget", "DaemonSet"):
        assert r.of(kind), f"no {kind} rendered with every feature on"
    ingress = r.get("Ingress", f"{FULLNAME}-query")["spec"]
    assert ingress["ingressClassName"] == "nginx" and ingress["rules"][0]["host"] == "logs.example.com"
    assert ingress["tls"] == [{"secretName": "logs-tls", "hosts": ["logs.example.com"]}]
    assert {s["metadata"]["name"] for s in r.of("Service")} == {
        f"{FULLNAME}-query", f"{FULLNAME}-shipper-metrics", f"{FULLNAME}-ingest-metrics",
        f"{FULLNAME}-maintain-metrics", f"{FULLNAME}-receive", f"{FULLNAME}-receive-metrics"}
    for w in r.workloads():
        spec = w["spec"]["template"]["spec"]
        assert spec["imagePullSecrets"] == [{"name": "registry-creds"}]
        assert w["spec"]["template"]["metadata"]["labels"]["team"] == "observability"
        for c in containers(w):
            assert c["image"] == "registry.example/loglake:0.1.0-rc1" and c["imagePullPolicy"] == "Always"


def test_demo_mode_is_one_pod_running_loglake_up(rendered: dict[str, Rendered]) -> None:
    r = rendered["demo"]
    assert [w["kind"] for w in r.workloads()] == ["Deployment"]
    demo = r.workload("demo")
    assert demo["spec"]["replicas"] == 1 and demo["spec"]["strategy"]["type"] == "Recreate"
    assert containers(demo)[0]["args"] == ["up"]
    assert not {"DaemonSet", "HorizontalPodAutoscaler", "PodDisruptionBudget", "ServiceMonitor"} & set(r.kinds())
    pvc = r.get("PersistentVolumeClaim", f"{FULLNAME}-demo")
    volumes = {v["name"]: v for v in demo["spec"]["template"]["spec"]["volumes"]}
    assert volumes["data"]["persistentVolumeClaim"]["claimName"] == pvc["metadata"]["name"]
    assert "DEMO" in r.notes
    # Without persistence the data lives in an emptyDir and there is no claim.
    assert "PersistentVolumeClaim" not in render_kinds({"demo": {"enabled": True}})


def render_kinds(values: dict[str, Any]) -> list[str]:
    with helm.Chart.load(CHART) as c:
        return render(c, values).kinds()


def test_demo_mode_is_off_by_default() -> None:
    with helm.Chart.load(CHART) as c:
        assert c.values["demo"]["enabled"] is False


def test_the_push_receiver_is_off_by_default_and_deployed_on_its_own_when_on(rendered: dict[str, Rendered]) -> None:
    with helm.Chart.load(CHART) as c:
        assert c.values["receive"]["enabled"] is False
    assert not receive_objects(rendered["required"])
    r = rendered["full"]
    w = r.workload("receive")
    assert w["kind"] == "Deployment" and w["spec"]["replicas"] == 3
    c = containers(w, init=False)[0]
    assert c["args"] == ["receive"] and port_named(c, "http") == 4400
    assert (c["livenessProbe"]["httpGet"], c["readinessProbe"]["httpGet"]) == (
        {"path": "/healthz", "port": "http"}, {"path": "/readyz", "port": "http"})
    assert w["spec"]["template"]["spec"]["nodeSelector"] == {"kubernetes.io/os": "linux"}
    # Kafka's client certificate, as the other producers have it.
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    assert mounts["kafka-tls"] == "/etc/loglake/kafka-tls"
    svc = r.get("Service", f"{FULLNAME}-receive")
    assert svc["spec"]["type"] == "ClusterIP" and svc["metadata"]["annotations"] == {"example.com/lb": "internal"}
    assert svc["spec"]["ports"] == [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}]
    pdb = r.get("PodDisruptionBudget", f"{FULLNAME}-receive")
    assert selects(pdb["spec"]["selector"]["matchLabels"], w["spec"]["template"]["metadata"]["labels"])
    assert "/v1/logs" in r.notes and f"{FULLNAME}-receive" in r.notes
    # Not in demo mode, where `loglake up` runs the receiver in its one pod.
    with helm.Chart.load(CHART) as chart:
        assert not receive_objects(render(chart, merged(DEMO, {"receive": {"enabled": True}})))


def receive_objects(r: Rendered) -> list[str]:
    return [o["metadata"]["name"] for o in r.objects if "-receive" in o["metadata"]["name"]]


# -- Kubernetes schemas ------------------------------------------------------------------------


@pytest.mark.parametrize("scenario", list(SCENARIOS))
@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_manifests_validate_strictly(rendered: dict[str, Rendered], scenario: str, version: str) -> None:
    failures = []
    for obj in rendered[scenario].objects:
        if obj["apiVersion"].startswith("monitoring.coreos.com/"):
            # A CRD: Kubernetes ships no schema for it (checked by hand in test_service_monitor_...).
            with pytest.raises(kubernetes_validate.SchemaNotFoundError):
                kubernetes_validate.validate(obj, version, strict=True)
            continue
        try:
            validated = kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            failures.append(f"{obj['kind']}/{obj['metadata']['name']}: {'.'.join(map(str, e.path))}: {e.message}")
            continue
        assert validated == version
    assert not failures, "\n".join(failures)


def test_strict_validation_catches_an_unknown_field(rendered: dict[str, Rendered]) -> None:
    """The validator really is strict: a misplaced field in a rendered Deployment fails."""
    deployment = copy.deepcopy(rendered["required"].workload("query"))
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessprobe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSIONS[0], strict=True)


# -- required values ----------------------------------------------------------------------------


@pytest.mark.parametrize("missing, message", [
    ("kafka.bootstrapServers", "kafka.bootstrapServers is required"),
    ("kafka.topic", "kafka.topic is required"),
    ("storage.dataRoot", "storage.dataRoot is required"),
    ("storage.s3.existingSecret", "storage.s3.existingSecret is required"),
    ("catalog.url", "catalog.url (postgresql://user@host:5432/db, password from catalog.passwordSecret) or "
                    "catalog.existingSecret (a Secret holding the whole URL) is required"),
])
def test_each_missing_required_value_fails_with_its_message(chart: helm.Chart, missing: str, message: str) -> None:
    with pytest.raises(helm.HelmRenderError) as e:
        render(chart, without(REQUIRED, missing))
    assert message in str(e.value)
    assert str(e.value).count(" is required") == 1, "only the missing value is named"


def test_nothing_given_names_the_first_required_value(chart: helm.Chart) -> None:
    with pytest.raises(helm.HelmRenderError, match="kafka.bootstrapServers is required"):
        render(chart, {})


@pytest.mark.parametrize("change, message", [
    ({"storage": {"dataRoot": "/var/lib/loglake"}}, "storage.dataRoot must be s3://bucket/prefix"),
    ({"catalog": {"url": "sqlite:///var/lib/catalog.sqlite"}}, "catalog.url must be postgresql://"),
    ({"catalog": {"existingSecret": "pg-url"}}, "set one of catalog.url and catalog.existingSecret"),
    ({"kafka": {"securityProtocol": "SASL_SSL", "sasl": {"username": "u"}}},
     "kafka.sasl.existingSecret is required with kafka.securityProtocol=SASL_SSL"),
    ({"kafka": {"securityProtocol": "SASL_PLAINTEXT", "sasl": {"existingSecret": "k"}}},
     "kafka.sasl.username or kafka.sasl.usernameKey is required"),
    ({"kafka": {"tls": {"existingSecret": "t"}}}, "kafka.securityProtocol is not SSL or SASL_SSL"),
    ({"kafka": {"securityProtocol": "SSL", "tls": {"existingSecret": "t", "certKey": "c.pem"}}},
     "kafka.tls.certKey and kafka.tls.keyKey go together"),
    ({"ingest": {"autoscaling": {"minReplicas": 8}}}, r"minReplicas \(8\) is above maxReplicas \(6\)"),
])
def test_inconsistent_values_fail_with_a_message(chart: helm.Chart, change: dict[str, Any], message: str) -> None:
    with pytest.raises(helm.HelmRenderError, match=message):
        render(chart, merged(REQUIRED, change))


def test_demo_mode_needs_no_required_values(chart: helm.Chart) -> None:
    assert render(chart, {"demo": {"enabled": True}}).workload("demo")


# -- the config loglake reads ----------------------------------------------------------------------


def container_environ(c: dict[str, Any]) -> dict[str, str]:
    """The environment the container would start with (secrets replaced by placeholders)."""
    env: dict[str, str] = {}
    for e in c.get("env", []):
        if "value" in e:
            env[e["name"]] = e["value"]
        elif "secretKeyRef" in e.get("valueFrom", {}):
            ref = e["valueFrom"]["secretKeyRef"]
            env[e["name"]] = SECRET_PLACEHOLDERS.get(e["name"], f"<secret {ref['name']}/{ref['key']}>")
        elif e.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == "spec.nodeName":
            env[e["name"]] = NODE_NAME
        else:
            raise AssertionError(f"unexpected env source {e}")
    return env


def load_as_container(r: Rendered, workload: dict[str, Any], c: dict[str, Any], tmp_path: Path) -> Any:
    """loglake.config.load_config on the ConfigMap's TOML, with the container's environment."""
    env = container_environ(c)
    mounts = {m["name"]: m for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in workload["spec"]["template"]["spec"]["volumes"]}
    assert volumes["config"]["configMap"]["name"] == r.get("ConfigMap", FULLNAME)["metadata"]["name"]
    assert env["LOGLAKE_CONFIG"] == mounts["config"]["mountPath"] + "/loglake.toml"
    file = tmp_path / f"{workload['metadata']['name']}-{c['name']}.toml"
    file.write_text(r.config_toml())
    # Files from mounted Secrets exist in the pod: stand them in here, where the config points.
    for mount in mounts.values():
        if "secret" not in volumes[mount["name"]]:
            continue
        for name, value in env.items():
            if value.startswith(mount["mountPath"] + "/"):
                local = tmp_path / mount["name"] / value.rsplit("/", 1)[1]
                local.parent.mkdir(exist_ok=True)
                local.write_text("<secret file>")
                env[name] = str(local)
    return load_config(environ={**env, "LOGLAKE_CONFIG": str(file)})


def port_named(c: dict[str, Any], name: str) -> int:
    return next(int(p["containerPort"]) for p in c.get("ports", []) if p["name"] == name)


@pytest.mark.parametrize("scenario", ["required", "full"])
def test_configmap_is_read_by_loglakes_loader_in_every_container(
        rendered: dict[str, Rendered], scenario: str, tmp_path: Path) -> None:
    r, values = rendered[scenario], SCENARIOS[scenario]
    seen = set()
    for w in r.workloads():
        for c in containers(w, init=False):
            seen.add(c["name"])
            cfg = load_as_container(r, w, c, tmp_path)
            env = container_environ(c)
            # The required values come through.
            assert cfg.kafka.bootstrap_servers == values["kafka"]["bootstrapServers"]
            assert cfg.kafka.topic == values["kafka"]["topic"]
            assert cfg.storage.data_root == values["storage"]["dataRoot"]
            assert cfg.broker.embedded is False
            if c["name"] != "shipper":
                want = values["catalog"].get("url") or SECRET_PLACEHOLDERS["LOGLAKE_STORAGE__CATALOG_URL"]
                assert cfg.storage.resolved_catalog_url() == want
            if c["name"] in ("ingest", "query", "maintain"):
                # Where the config says the S3 keys are, the container has them, from the Secret.
                for name in (cfg.storage.s3.access_key_id_env, cfg.storage.s3.secret_access_key_env):
                    assert env[name].startswith(f"<secret {values['storage']['s3']['existingSecret']}/")
            # Listen addresses agree with the ports the pod declares.
            if c["name"] == "query":
                assert (cfg.query.host, cfg.query.port) == ("0.0.0.0", port_named(c, "http"))
            if c["name"] == "ingest":
                assert cfg.ingest.metrics_listen == f"0.0.0.0:{port_named(c, 'metrics')}"
            if c["name"] == "maintain":
                assert cfg.maintain.metrics_listen == f"0.0.0.0:{port_named(c, 'metrics')}"
            if c["name"] == "receive":
                assert (cfg.receive.host, cfg.receive.port) == ("0.0.0.0", port_named(c, "http"))
            if c["name"] == "shipper":
                assert cfg.shipper.metrics_listen == f"0.0.0.0:{port_named(c, 'metrics')}"
                assert cfg.shipper.host == NODE_NAME
                mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
                assert str(cfg.shipper.state_dir) == mounts["checkpoints"]
                assert cfg.shipper.resolved_inputs()[0].include == ["/var/log/pods/*/*/*.log"]
    assert seen == {"shipper", "ingest", "query", "maintain"} | ({"receive"} if scenario == "full" else set())


def test_full_values_reach_the_loaded_config(rendered: dict[str, Rendered], tmp_path: Path) -> None:
    r = rendered["full"]
    ingest = r.workload("ingest")
    c = containers(ingest, init=False)[0]
    cfg = load_as_container(r, ingest, c, tmp_path)
    env = container_environ(c)
    k = cfg.kafka
    assert (k.security_protocol, k.sasl_mechanism, k.partitions) == ("SASL_SSL", "SCRAM-SHA-512", 12)
    assert k.sasl_username == "user-from-secret"                      # LOGLAKE_KAFKA__SASL_USERNAME
    assert env[k.sasl_password_env] == "<secret kafka-user/pw>"
    assert not k.sasl_password_env.startswith("LOGLAKE_"), "would be read as a config override"
    tls_mount = next(m["mountPath"] for m in c["volumeMounts"] if m["name"] == "kafka-tls")
    assert (k.ssl_cafile, k.ssl_certfile, k.ssl_keyfile) == (
        f"{tls_mount}/ca.pem", f"{tls_mount}/client.pem", f"{tls_mount}/client.key")
    assert k.ssl_check_hostname is False
    s3 = cfg.storage.s3
    assert (s3.endpoint_url, s3.region, s3.path_style) == ("https://minio.storage.svc:9000", "eu-west-1", True)
    assert env[s3.access_key_id_env] == "<secret minio-keys/accesskey>"
    assert env[s3.secret_access_key_env] == "<secret minio-keys/secretkey>"
    # What `config` adds.
    assert cfg.ingest.flush_interval_s == 5 and cfg.ingest.formats[0].format == "json"
    assert cfg.retention.policies[0].max_age == "30d" and cfg.compaction.interval_s == 600
    # Scheduled backups and the Iceberg mirror (maintain's values).
    assert (cfg.backup.dest, cfg.backup.interval_s, cfg.backup.keep) == ("s3://backups/loglake", 21600, 14)
    assert (cfg.iceberg.enabled, cfg.iceberg.catalog_uri, cfg.iceberg.interval_s) == (True, "", 120)


def test_demo_config_is_read_by_loglakes_loader(rendered: dict[str, Rendered], tmp_path: Path) -> None:
    r = rendered["demo"]
    demo = r.workload("demo")
    c = containers(demo, init=False)[0]
    cfg = load_as_container(r, demo, c, tmp_path)
    assert cfg.broker.embedded is True and cfg.kafka.bootstrap_servers == cfg.broker.listen
    assert cfg.demo.enabled is True and cfg.storage.resolved_catalog_url().startswith("sqlite:///")
    data = next(m["mountPath"] for m in c["volumeMounts"] if m["name"] == "data")
    for path in (cfg.storage.data_root, cfg.shipper.state_dir, cfg.demo.dir, cfg.log.dir):
        assert str(path).startswith(data + "/"), f"{path} is not on the data volume {data}"
    assert cfg.shipper.resolved_inputs()[0].include == [f"{cfg.demo.dir}/*.log"]
    assert (cfg.query.host, cfg.query.port) == ("0.0.0.0", port_named(c, "http"))


#: `config` values that are awkward to write as TOML: quotes, backslashes, unicode,
#: dotted keys, nested tables, arrays of tables, big integers, floats, empty collections.
AWKWARD_CONFIG: dict[str, Any] = {
    "shipper": {
        "labels": {"app.kubernetes.io/name": "web", "cluster": "eu-1 \"blue\"", "ünïcode": "✓",
                   "html": "<b>&amp;</b> \\u003c\ttab", "empty": ""},
        "service_from_path": r"/var/log/pods/[^_]+_(?P<service>[^_]+)_",
        "multiline": {"preset": "java", "max_lines": 1000},
        "max_inflight_bytes": 1 << 34,
        "poll_interval_s": 0.25,
        "start_at": "end",
    },
    "ingest": {
        "topics": [{"name": "vector-logs", "tenant": "team-a", "service": "edge"}, {"name": "fluent-bit"}],
        "formats": [{"service": "billing*", "format": "pattern",
                     "pattern": r'^(?P<ts>\S+ \S+) \[(?P<level>\w+)\] "(?P<message>.*)"$'},
                    {"source": "*/nginx/*", "format": "nginx"}],
        "default_timezone": "Europe/Berlin",
        "flush_rows": 1000,
    },
    "retention": {"policies": [{"tenant": "*", "max_age": "30d"}, {"tenant": "acme", "max_bytes": "500GB"},
                               {"tenant": "acme", "service": "debug", "max_age": "3d"}],
                  "holds": [{"tenant": "acme", "service": "payments", "reason": "legal hold 2026-117\\n"}]},
    "compaction": {"enabled": False, "target_bytes": 268435456, "min_age_s": 0},
    "query": {"memory_limit": "1GB", "threads": 4},
    "log": {"level": "debug", "json_format": False},
}


def test_awkward_config_values_round_trip_through_the_rendered_toml(chart: helm.Chart, tmp_path: Path) -> None:
    r = render(chart, merged(REQUIRED, {"config": AWKWARD_CONFIG}))
    parsed = tomllib.loads(r.config_toml())
    for section, keys in AWKWARD_CONFIG.items():
        for key, value in keys.items():
            assert parsed[section][key] == value, (section, key)
    assert isinstance(parsed["shipper"]["max_inflight_bytes"], int), "integers stay integers"
    query = r.workload("query")
    cfg = load_as_container(r, query, containers(query)[0], tmp_path)
    assert cfg.shipper.labels["app.kubernetes.io/name"] == "web" and cfg.shipper.multiline.preset == "java"
    assert [t.name for t in cfg.ingest.topics] == ["vector-logs", "fluent-bit"]
    assert cfg.ingest.patterns() == (AWKWARD_CONFIG["ingest"]["formats"][0]["pattern"],)
    assert [p.max_bytes_n for p in cfg.retention.policies] == [None, 500 * 10**9, None]
    assert cfg.retention.holds[0].reason == "legal hold 2026-117\\n"
    assert cfg.compaction.enabled is False and cfg.log.level == "debug"


def test_chart_managed_keys_win_over_config(chart: helm.Chart, tmp_path: Path) -> None:
    r = render(chart, merged(REQUIRED, {"config": {
        "kafka": {"bootstrap_servers": "127.0.0.1:9092", "client_id": "acme"},
        "storage": {"data_root": "./var/data", "zstd_level": 6},
        "query": {"port": 9999}}}))
    query = r.workload("query")
    cfg = load_as_container(r, query, containers(query)[0], tmp_path)
    assert cfg.kafka.bootstrap_servers == REQUIRED["kafka"]["bootstrapServers"]
    assert cfg.storage.data_root == REQUIRED["storage"]["dataRoot"]
    assert cfg.query.port == port_named(containers(query)[0], "http") == 8080
    assert (cfg.kafka.client_id, cfg.storage.zstd_level) == ("acme", 6)     # the rest comes through


def test_a_config_key_loglake_does_not_know_is_refused_by_the_loader(chart: helm.Chart, tmp_path: Path) -> None:
    """The loader check can fail: the chart writes what it is given, loglake refuses unknown keys."""
    from loglake.core.config import ConfigError

    r = render(chart, merged(REQUIRED, {"config": {"ingest": {"flush_intervall_s": 5}}}))
    query = r.workload("query")
    with pytest.raises(ConfigError, match="flush_intervall_s"):
        load_as_container(r, query, containers(query)[0], tmp_path)


# -- security ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_every_container_has_resources_and_a_locked_down_security_context(
        rendered: dict[str, Rendered], scenario: str) -> None:
    r = rendered[scenario]
    for w in r.workloads():
        pod = w["spec"]["template"]["spec"]
        where = w["metadata"]["name"]
        assert pod["automountServiceAccountToken"] is False, where
        assert pod["serviceAccountName"] == r.get("ServiceAccount", FULLNAME)["metadata"]["name"], where
        assert pod["securityContext"]["runAsNonRoot"] is True, where
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, where
        for c in containers(w):
            res, sc = c["resources"], c["securityContext"]
            for part in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(res[part]), f"{where}/{c['name']} {part}"
            assert sc["readOnlyRootFilesystem"] is True, f"{where}/{c['name']}"
            assert sc["allowPrivilegeEscalation"] is False and sc.get("privileged") is False, f"{where}/{c['name']}"
            assert sc["capabilities"]["drop"] == ["ALL"], f"{where}/{c['name']}"
            assert sc["seccompProfile"] == {"type": "RuntimeDefault"}, f"{where}/{c['name']}"
            if c["name"] == "checkpoint-owner":
                # The one exception: root with CAP_CHOWN only, to hand the hostPath to the shipper's user.
                assert w["kind"] == "DaemonSet" and c in pod["initContainers"]
                assert sc["runAsUser"] == 0 and sc["capabilities"]["add"] == ["CHOWN"]
                assert c["command"][-1] == (f"chown {pod['securityContext']['runAsUser']}:"
                                            f"{pod['securityContext']['runAsGroup']} /var/lib/loglake/shipper")
                continue
            assert sc["runAsNonRoot"] is True and sc["runAsUser"] != 0, f"{where}/{c['name']}"
            assert "add" not in sc["capabilities"], f"{where}/{c['name']}"
            # The only writable places: an emptyDir at /tmp (HOME, TMPDIR, working directory) and state.
            volumes = {v["name"]: v for v in pod["volumes"]}
            tmp = next(m for m in c["volumeMounts"] if m["mountPath"] == "/tmp")
            assert "emptyDir" in volumes[tmp["name"]], f"{where}/{c['name']}"
            env = container_environ(c)
            assert env["HOME"] == env["TMPDIR"] == c["workingDir"] == "/tmp", f"{where}/{c['name']}"


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_service_links_are_off(rendered: dict[str, Rendered], scenario: str, tmp_path: Path) -> None:
    """Kubernetes' service-link variables for the release's Services would read as config overrides."""
    from loglake.core.config import ConfigError

    r = rendered[scenario]
    for w in r.workloads():
        assert w["spec"]["template"]["spec"]["enableServiceLinks"] is False, w["metadata"]["name"]
    # Why: a release named "loglake" has a Service "loglake-query"; its links would be these.
    query = r.workload("demo" if scenario == "demo" else "query")
    c = copy.deepcopy(containers(query, init=False)[0])
    c["env"] += [{"name": "LOGLAKE_QUERY_PORT", "value": "tcp://10.0.0.7:80"},
                 {"name": "LOGLAKE_QUERY_SERVICE_HOST", "value": "10.0.0.7"}]
    with pytest.raises(ConfigError, match="unknown key"):
        load_as_container(r, query, c, tmp_path)


def test_no_root_container_when_checkpoint_ownership_is_prepared(chart: helm.Chart) -> None:
    r = render(chart, merged(REQUIRED, {"shipper": {"fixCheckpointOwnership": False}}))
    assert "initContainers" not in r.workload("shipper")["spec"]["template"]["spec"]


def test_shipper_security_context_can_be_set_alone(chart: helm.Chart) -> None:
    r = render(chart, merged(REQUIRED, {"shipper": {"securityContext": {"runAsUser": 20000, "runAsGroup": 20000},
                                                    "podSecurityContext": {"runAsNonRoot": False}}}))
    ds = r.workload("shipper")
    pod = ds["spec"]["template"]["spec"]
    shipper = containers(ds, init=False)[0]
    assert pod["securityContext"]["runAsNonRoot"] is False, "false is set, not skipped"
    assert shipper["securityContext"]["runAsUser"] == 20000
    assert shipper["securityContext"]["readOnlyRootFilesystem"] is True, "the rest stays"
    assert pod["initContainers"][0]["command"][-1] == "chown 20000:20000 /var/lib/loglake/shipper"
    for component in ("ingest", "query", "maintain"):
        w = r.workload(component)
        assert w["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"] is True
        assert containers(w)[0]["securityContext"]["runAsUser"] == 10001
    for obj in r.objects:
        kubernetes_validate.validate(obj, K8S_VERSIONS[0], strict=True)


def test_service_account_mounts_no_token(rendered: dict[str, Rendered]) -> None:
    sa = rendered["full"].get("ServiceAccount", FULLNAME)
    assert sa["automountServiceAccountToken"] is False
    assert sa["metadata"]["annotations"] == {"example.com/role": "loglake"}


@pytest.mark.parametrize("scenario", ["required", "full"])
def test_each_container_gets_only_the_secrets_it_needs(rendered: dict[str, Rendered], scenario: str) -> None:
    r, values = rendered[scenario], SCENARIOS[scenario]
    kafka_secrets = {values["kafka"].get("sasl", {}).get("existingSecret")} - {None}
    storage_secrets = {values["storage"]["s3"]["existingSecret"],
                       values["catalog"].get("existingSecret") or values["catalog"]["passwordSecret"]["name"]}
    catalog_secret = {values["catalog"].get("existingSecret") or values["catalog"]["passwordSecret"]["name"]}
    want = {"shipper": kafka_secrets, "ingest": kafka_secrets | storage_secrets,
            "query": storage_secrets, "maintain": storage_secrets}
    if scenario == "full":
        want["receive"] = kafka_secrets | catalog_secret      # API keys from the catalog; no S3 keys
    for component, secrets in want.items():
        c = containers(r.workload(component), init=False)[0]
        got = {e["valueFrom"]["secretKeyRef"]["name"] for e in c["env"] if "secretKeyRef" in e.get("valueFrom", {})}
        assert got == secrets, component
        for e in c["env"]:
            if e["name"] in ("PGPASSWORD", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "KAFKA_SASL_PASSWORD"):
                assert "value" not in e, f"{component}: {e['name']} must come from a Secret"
    tls = [v for v in r.workload("ingest")["spec"]["template"]["spec"]["volumes"] if "secret" in v]
    assert [v["secret"]["secretName"] for v in tls] == (["kafka-tls"] if scenario == "full" else [])


def test_query_tls_mounts_the_certificate_sets_the_config_and_probes_over_https(
        rendered: dict[str, Rendered], tmp_path: Path) -> None:
    query = rendered["full"].workload("query")
    q = containers(query, init=False)[0]
    env = {e["name"]: e.get("value") for e in q["env"]}
    assert env["LOGLAKE_QUERY__TLS_CERT"] == "/etc/loglake/query-tls/tls.crt"
    assert env["LOGLAKE_QUERY__TLS_KEY"] == "/etc/loglake/query-tls/tls.key"
    mounts = {m["name"]: m for m in q["volumeMounts"]}
    assert mounts["query-tls"]["mountPath"] == "/etc/loglake/query-tls" and mounts["query-tls"]["readOnly"]
    volumes = {v["name"]: v for v in query["spec"]["template"]["spec"]["volumes"]}
    assert volumes["query-tls"]["secret"]["secretName"] == "query-cert"
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert q[probe]["httpGet"]["scheme"] == "HTTPS", probe
    for other in ("ingest", "maintain"):
        assert "query-tls" not in {v["name"] for v in rendered["full"].workload(other)["spec"]["template"]["spec"]
                                   ["volumes"]}


# -- how the pieces fit ---------------------------------------------------------------------------


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_selectors_ports_and_volumes_line_up(rendered: dict[str, Rendered], scenario: str) -> None:
    r = rendered[scenario]
    pods = {w["metadata"]["name"]: w["spec"]["template"] for w in r.workloads()}
    for w in r.workloads():
        template = w["spec"]["template"]
        assert selects(w["spec"]["selector"]["matchLabels"], template["metadata"]["labels"])
        others = [n for n, t in pods.items() if n != w["metadata"]["name"]
                  and selects(w["spec"]["selector"]["matchLabels"], t["metadata"]["labels"])]
        assert not others, f"{w['metadata']['name']}'s selector also matches {others}"
        volumes = {v["name"] for v in template["spec"]["volumes"]}
        for c in containers(w):
            assert {m["name"] for m in c["volumeMounts"]} <= volumes
            ports = {p["name"] for p in c.get("ports", [])}
            for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
                if probe in c:
                    assert c[probe]["httpGet"]["port"] in ports, f"{probe} of {c['name']}"
        for v in template["spec"]["volumes"]:
            if "configMap" in v:
                assert r.get("ConfigMap", v["configMap"]["name"])
            if "persistentVolumeClaim" in v:
                assert r.get("PersistentVolumeClaim", v["persistentVolumeClaim"]["claimName"])
    for svc in r.of("Service"):
        matched = [t for t in pods.values() if selects(svc["spec"]["selector"], t["metadata"]["labels"])]
        assert len(matched) == 1, f"Service {svc['metadata']['name']} selects {len(matched)} workloads"
        names = {p["name"] for c in matched[0]["spec"]["containers"] for p in c.get("ports", [])}
        for port in svc["spec"]["ports"]:
            assert port["targetPort"] in names, svc["metadata"]["name"]
    for pdb in r.of("PodDisruptionBudget"):
        assert sum(selects(pdb["spec"]["selector"]["matchLabels"], t["metadata"]["labels"])
                   for t in pods.values()) == 1
    for ing in r.of("Ingress"):
        for rule in ing["spec"]["rules"]:
            for path in rule["http"]["paths"]:
                backend = path["backend"]["service"]
                svc = r.get("Service", backend["name"])
                assert backend["port"]["name"] in {p["name"] for p in svc["spec"]["ports"]}


def test_service_monitor_scrapes_the_metrics_ports(rendered: dict[str, Rendered]) -> None:
    r = rendered["full"]
    (sm,) = r.of("ServiceMonitor")
    assert sm["apiVersion"] == "monitoring.coreos.com/v1" and sm["metadata"]["labels"]["release"] == "kube-prometheus"
    selected = [s for s in r.of("Service") if selects(sm["spec"]["selector"]["matchLabels"], s["metadata"]["labels"])]
    assert {s["metadata"]["name"] for s in selected} == {f"{FULLNAME}-shipper-metrics", f"{FULLNAME}-ingest-metrics",
                                                         f"{FULLNAME}-maintain-metrics", f"{FULLNAME}-receive-metrics"}
    (endpoint,) = sm["spec"]["endpoints"]
    assert endpoint["path"] == "/metrics"
    for svc in selected:
        assert svc["spec"]["clusterIP"] == "None"
        assert endpoint["port"] in {p["name"] for p in svc["spec"]["ports"]}
    assert "ServiceMonitor" not in rendered["required"].kinds(), "off unless asked for"


@pytest.mark.parametrize("scenario", ["required", "full"])
def test_prometheus_annotations_point_at_the_metrics_port(rendered: dict[str, Rendered], scenario: str) -> None:
    r = rendered[scenario]
    for component in ("shipper", "ingest", "maintain") + (("receive",) if scenario == "full" else ()):
        w = r.workload(component)
        annotations = w["spec"]["template"]["metadata"]["annotations"]
        assert annotations["prometheus.io/scrape"] == "true" and annotations["prometheus.io/path"] == "/metrics"
        # The receiver serves /metrics on its one port.
        port = "http" if component == "receive" else "metrics"
        assert int(annotations["prometheus.io/port"]) == port_named(containers(w, init=False)[0], port)
    for component in ("query",):     # not annotated for scraping
        annotations = r.workload(component)["spec"]["template"]["metadata"]["annotations"]
        assert "prometheus.io/scrape" not in annotations
    off = render_kinds_and_annotations(merged(REQUIRED, {"metrics": {"podAnnotations": False}}))
    assert "prometheus.io/scrape" not in off


def render_kinds_and_annotations(values: dict[str, Any]) -> dict[str, str]:
    with helm.Chart.load(CHART) as c:
        return render(c, values).workload("ingest")["spec"]["template"]["metadata"]["annotations"]


def test_config_changes_roll_the_pods(chart: helm.Chart) -> None:
    a = render(chart, REQUIRED).workload("query")["spec"]["template"]["metadata"]["annotations"]
    b = render(chart, merged(REQUIRED, {"config": {"query": {"threads": 8}}})).workload("query")
    assert a["checksum/config"] != b["spec"]["template"]["metadata"]["annotations"]["checksum/config"]


def test_shipper_daemonset_reads_node_logs_and_keeps_checkpoints_on_the_node(rendered: dict[str, Rendered]) -> None:
    ds = rendered["required"].workload("shipper")
    pod = ds["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m for m in containers(ds, init=False)[0]["volumeMounts"]}
    for path in ("/var/log/pods", "/var/log/containers"):
        assert mounts[path].get("readOnly") is True, path
        assert volumes[mounts[path]["name"]]["hostPath"]["path"] == path
    state = volumes[mounts["/var/lib/loglake/shipper"]["name"]]["hostPath"]
    assert state == {"path": f"/var/lib/loglake/{FULLNAME}", "type": "DirectoryOrCreate"}
    assert mounts["/var/lib/loglake/shipper"].get("readOnly") is not True
    assert {"operator": "Exists"} in pod["tolerations"], "must run on every node, tainted ones included"
    assert 0 in pod["securityContext"]["supplementalGroups"]


def test_ingest_scales_with_partitions_and_shuts_down_gracefully(rendered: dict[str, Rendered],
                                                                 chart: helm.Chart) -> None:
    r = rendered["required"]
    dep = r.workload("ingest")
    assert "replicas" not in dep["spec"], "the autoscaler owns the replica count"
    assert dep["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] >= 60
    hpa = r.get("HorizontalPodAutoscaler", f"{FULLNAME}-ingest")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                            "name": dep["metadata"]["name"]}
    assert hpa["spec"]["maxReplicas"] == 6, "defaults to kafka.partitions"
    assert rendered["full"].get("HorizontalPodAutoscaler", f"{FULLNAME}-ingest")["spec"]["maxReplicas"] == 12
    fixed = render(chart, merged(REQUIRED, {"ingest": {"autoscaling": {"enabled": False}, "replicas": 3}}))
    assert fixed.workload("ingest")["spec"]["replicas"] == 3
    assert not fixed.of("HorizontalPodAutoscaler")


def test_query_probes_and_maintain_singleton(rendered: dict[str, Rendered]) -> None:
    r = rendered["required"]
    q = containers(r.workload("query"))[0]
    assert q["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert q["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert all("scheme" not in q[p]["httpGet"] for p in ("readinessProbe", "livenessProbe", "startupProbe"))
    m = r.workload("maintain")
    assert m["spec"]["replicas"] == 1 and m["spec"]["strategy"] == {"type": "Recreate"}
    assert containers(m)[0]["args"] == ["maintain"]
    probe = containers(m)[0]["livenessProbe"]["httpGet"]
    assert probe["path"] == "/healthz" and probe["port"] == "metrics"


def test_the_alert_evaluator_deploys_on_its_own_with_its_metrics_port(chart: helm.Chart, tmp_path: Path) -> None:
    assert "alert" not in {w["metadata"]["name"].rsplit("-", 1)[-1] for w in render(chart, REQUIRED).workloads()}
    r = render(chart, merged(REQUIRED, {"alert": {"enabled": True, "replicas": 2}}))
    w = r.workload("alert")
    assert w["spec"]["replicas"] == 2          # leases in the catalog make a second one safe
    c = containers(w)[0]
    assert c["args"] == ["alert"]
    cfg = load_as_container(r, w, c, tmp_path)
    assert cfg.alerts.metrics_listen == f"0.0.0.0:{port_named(c, 'metrics')}"
    assert cfg.storage.resolved_catalog_url() == (REQUIRED["catalog"].get("url")
                                                  or SECRET_PLACEHOLDERS["LOGLAKE_STORAGE__CATALOG_URL"])
    assert containers(w)[0]["livenessProbe"]["httpGet"]["path"] == "/healthz"
