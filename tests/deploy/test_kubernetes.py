"""deploy/: every overlay renders (c2cq.kustomize; the same as `kubectl kustomize` where kubectl is
installed), passes kubernetes-validate --strict for a supported Kubernetes version, and keeps the
invariants the design needs: one MIG resource per executor pod, catalog and executors on the same
hostPath folders, hugepages requests == limits, Services that reach a named container port,
Secrets mounted read-only; the operator's values validate against deploy/values.schema.json."""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

from c2cq.kustomize import render
from c2cq.supervisor.roles import CLIENT_PORT  # where `c2cq up --role control` binds remote clients

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
OVERLAYS = sorted(p.name for p in (DEPLOY / "overlays").iterdir() if (p / "kustomization.yaml").exists())
K8S_VERSION = "1.33.0"  # a supported release; kubernetes-validate bundles its schemas (offline)
WORKLOADS = ("Deployment", "DaemonSet", "StatefulSet")


def key(doc: dict) -> tuple[str, str, str]:
    return doc["kind"], doc["metadata"].get("namespace", ""), doc["metadata"]["name"]


@pytest.fixture(scope="module", params=OVERLAYS)
def rendered(request) -> tuple[str, list[dict]]:
    return request.param, render(DEPLOY / "overlays" / request.param)


def one(docs: list[dict], kind: str, name: str) -> dict:
    (doc,) = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    return doc


def pod(doc: dict) -> dict:
    return doc["spec"]["template"]["spec"]


def env(container: dict) -> dict[str, str]:
    return {e["name"]: e.get("value") for e in container.get("env", [])}


def test_there_are_overlays_for_both_shared_memory_kinds():
    assert {"a100-tmpfs", "h200-hugepages"} <= set(OVERLAYS)


def test_the_manifests_pass_kubernetes_validate_strict(rendered):
    name, docs = rendered
    assert {d["kind"] for d in docs} >= {"Namespace", "Deployment", "DaemonSet", "Service", "PersistentVolumeClaim"}
    for doc in docs:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    wrong = copy.deepcopy(one(docs, "DaemonSet", "c2cq-catalog"))
    pod(wrong)["containers"][0]["resource"] = {}  # a misspelt field: strict validation must catch it
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(wrong, K8S_VERSION, strict=True)


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed: c2cq.kustomize renders alone")
def test_the_renderer_agrees_with_kubectl_kustomize(rendered):
    name, docs = rendered
    out = subprocess.run(["kubectl", "kustomize", str(DEPLOY / "overlays" / name)], capture_output=True, text=True,
                         timeout=120, check=True).stdout
    theirs = [d for d in yaml.safe_load_all(out) if d]
    assert sorted(docs, key=key) == sorted(theirs, key=key)


def test_one_mig_slice_per_executor_pod(rendered):
    _, docs = rendered
    ex = one(docs, "Deployment", "c2cq-executor")
    (c,) = pod(ex)["containers"]
    migs = {k: v for k, v in c["resources"]["limits"].items() if k.startswith("nvidia.com/")}
    assert len(migs) == 1 and next(iter(migs)).startswith("nvidia.com/mig-") and list(migs.values()) == [1], migs
    assert "NVIDIA_VISIBLE_DEVICES" not in env(c)  # the device plugin sets it to the slice's MIG UUID
    assert ex["spec"]["replicas"] >= 1


def _mounts(doc: dict, container: str) -> dict[str, tuple[str, dict]]:
    """mountPath → (volume name, volume) of one container."""
    vols = {v["name"]: v for v in pod(doc)["volumes"]}
    (c,) = [c for c in pod(doc)["containers"] if c["name"] == container]
    return {m["mountPath"]: (m["name"], vols[m["name"]]) for m in c["volumeMounts"]}


def test_catalog_and_executors_share_the_same_host_folders(rendered):
    _, docs = rendered
    cat, ex = one(docs, "DaemonSet", "c2cq-catalog"), one(docs, "Deployment", "c2cq-executor")
    assert pod(cat)["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    cat_env, ex_env = env(pod(cat)["containers"][0]), env(pod(ex)["containers"][0])
    for var in ("C2CQ_SHM_ROOT", "C2CQ_HOME"):  # the shm folder's name derives from the home's path
        assert cat_env[var] == ex_env[var], var
        at = cat_env[var]
        (_, cv), (_, ev) = _mounts(cat, "catalog")[at], _mounts(ex, "executor")[at]
        assert "hostPath" in cv and cv["hostPath"] == ev["hostPath"], (var, cv, ev)
    shm = _mounts(cat, "catalog")[cat_env["C2CQ_SHM_ROOT"]][1]["hostPath"]["path"]
    huge = any(k.startswith("hugepages-") for c in pod(cat)["containers"] for k in c["resources"].get("limits", {}))
    assert shm.startswith("/dev/hugepages/" if huge else "/dev/shm/"), shm


def test_hugepages_requests_equal_limits(rendered):
    _, docs = rendered
    for doc in docs:
        if doc["kind"] not in WORKLOADS:
            continue
        for c in pod(doc)["containers"] + pod(doc).get("initContainers", []):
            res = c.get("resources", {})
            for k in {*res.get("requests", {}), *res.get("limits", {})}:
                if k.startswith("hugepages-"):
                    assert res["requests"].get(k) == res["limits"].get(k), (doc["metadata"]["name"], k)


def test_services_reach_a_named_port_of_the_pods_they_select(rendered):
    _, docs = rendered
    workloads = [d for d in docs if d["kind"] in WORKLOADS]
    services = [d for d in docs if d["kind"] == "Service"]
    assert {s["metadata"]["name"] for s in services} == {"c2cq-http", "c2cq-nodes", "c2cq-clients"}
    for svc in services:
        sel = svc["spec"]["selector"]
        (target,) = [w for w in workloads if sel.items() <= w["spec"]["template"]["metadata"]["labels"].items()]
        ports = {p["name"]: p["containerPort"] for c in pod(target)["containers"] for p in c.get("ports", [])}
        for p in svc["spec"]["ports"]:
            assert p["targetPort"] in ports, (svc["metadata"]["name"], p)
    http = one(docs, "Service", "c2cq-http")
    assert [p["port"] for p in http["spec"]["ports"]] == [8000]
    assert [p["port"] for p in one(docs, "Service", "c2cq-clients")["spec"]["ports"]] == [CLIENT_PORT]
    dialled = {c["command"][c["command"].index("--join") + 1] for w in workloads for c in pod(w)["containers"]
               if "--join" in c["command"]}
    node_ports = {p["port"] for p in one(docs, "Service", "c2cq-nodes")["spec"]["ports"]}
    assert dialled and {int(a.rsplit(":", 1)[1]) for a in dialled} <= node_ports
    assert all(a.startswith("tcp://c2cq-nodes:") for a in dialled), dialled


def test_secrets_are_mounted_read_only_and_unreadable_by_others(rendered):
    _, docs = rendered
    seen = 0
    for doc in docs:
        if doc["kind"] not in WORKLOADS:
            continue
        secrets = {v["name"]: v["secret"] for v in pod(doc).get("volumes", []) if "secret" in v}
        for c in pod(doc)["containers"] + pod(doc).get("initContainers", []):
            for m in c.get("volumeMounts", []):
                if m["name"] in secrets:
                    seen += 1
                    assert m.get("readOnly") is True, (doc["metadata"]["name"], m)
                    assert secrets[m["name"]]["defaultMode"] & 0o007 == 0 or m["name"] == "allowed", m
    assert seen >= 4


def test_the_control_plane_is_one_replica_with_its_log_on_a_claim(rendered):
    _, docs = rendered
    ctl = one(docs, "Deployment", "c2cq-control")
    assert ctl["spec"]["replicas"] == 1 and ctl["spec"]["strategy"] == {"type": "Recreate"}
    home = env(pod(ctl)["containers"][0])["C2CQ_HOME"]
    _, vol = _mounts(ctl, "control")[home]
    one(docs, "PersistentVolumeClaim", vol["persistentVolumeClaim"]["claimName"])
    assert pod(ctl)["containers"][0]["command"][:4] == ["c2cq", "up", "--role", "control"]


# --- the values an operator may change


def _schema() -> dict:
    return json.loads((DEPLOY / "values.schema.json").read_text())


def _values(overlay: str) -> dict:
    return yaml.safe_load((DEPLOY / "overlays" / overlay / "values.yaml").read_text())


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_each_overlays_values_follow_the_schema_and_reach_the_manifests(overlay):
    values = _values(overlay)
    jsonschema.validate(values["data"], _schema())
    docs = render(DEPLOY / "overlays" / overlay)
    assert "c2cq-values" not in {d["metadata"]["name"] for d in docs}  # local config: not applied
    text = yaml.safe_dump_all(docs)
    for k, v in values["data"].items():
        assert str(v) in text, (k, v)
    cat = one(docs, "DaemonSet", "c2cq-catalog")
    limits = pod(cat)["containers"][0]["resources"]["limits"]
    assert values["data"]["shmSize"] in (limits.get("memory"), limits.get("hugepages-2Mi"))
    assert one(docs, "Service", "c2cq-http")["spec"]["type"] == values["data"]["httpServiceType"]


@pytest.mark.parametrize("change", [{"shmSize": "lots"}, {"shmSize": "0Gi"}, {"httpServiceType": "Ingress"},
                                    {"modelStoreClaim": "Bad_Name"}, {"replicas": "3"}])
def test_values_outside_the_schema_are_refused(change):
    data = {**_values(OVERLAYS[0])["data"], **change}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(data, _schema())


def test_every_value_in_the_schema_is_used_by_a_replacement():
    used = set()
    for k in DEPLOY.glob("components/*/kustomization.yaml"):
        for rep in yaml.safe_load(k.read_text()).get("replacements", []):
            used.add(rep["source"]["fieldPath"].removeprefix("data."))
    assert set(_schema()["properties"]) == used
