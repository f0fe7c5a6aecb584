"""c2cq.kustomize, the renderer deploy/ is checked with: each feature on a small tree, and what it
does not support is an error, never a silently different output."""

from __future__ import annotations

import pytest
import yaml

from c2cq.errors import ConfigError
from c2cq.kustomize import render


def write(folder, files: dict[str, object]) -> None:
    for name, content in files.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content if isinstance(content, str) else yaml.safe_dump_all(content)
                        if isinstance(content, list) else yaml.safe_dump(content))


DEPLOY = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "app"},
          "spec": {"replicas": 1, "template": {"spec": {"containers": [
              {"name": "main", "image": "app:1", "resources": {"limits": {"nvidia.com/mig-1g.10gb": 1}}},
              {"name": "side", "image": "other:2"}]}}}}
VALUES = {"apiVersion": "v1", "kind": "ConfigMap",
          "metadata": {"name": "values", "annotations": {"config.kubernetes.io/local-config": "true"}},
          "data": {"size": "8Gi"}}


def test_resources_components_namespace_patches_images_and_replacements(tmp_path):
    write(tmp_path, {
        "base/kustomization.yaml": {"kind": "Kustomization", "namespace": "ns",
                                    "resources": ["app.yaml", "ns.yaml"]},
        "base/app.yaml": [DEPLOY],
        "base/ns.yaml": [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "ns"}}],
        "comp/kustomization.yaml": {"kind": "Component", "replacements": [{
            "source": {"kind": "ConfigMap", "name": "values", "fieldPath": "data.size"},
            "targets": [{"select": {"kind": "Deployment", "name": "app"},
                         "fieldPaths": ["spec.template.spec.containers.[name=main].resources.limits.memory"],
                         "options": {"create": True}}]}]},
        "over/kustomization.yaml": {
            "kind": "Kustomization", "resources": ["../base", "values.yaml"], "components": ["../comp"],
            "images": [{"name": "app", "newName": "reg/app", "newTag": "9"}],
            "patches": [{"target": {"kind": "Deployment", "name": "app"}, "patch": yaml.safe_dump([
                {"op": "replace", "path": "/spec/replicas", "value": 3},
                {"op": "remove", "path": "/spec/template/spec/containers/0/resources/limits/nvidia.com~1mig-1g.10gb"},
                {"op": "add", "path": "/spec/template/spec/containers/0/resources/limits/nvidia.com~1mig-2g.20gb",
                 "value": 1},
                {"op": "add", "path": "/spec/template/spec/containers/-", "value": {"name": "third", "image": "x"}}])}]},
        "over/values.yaml": [VALUES],
    })
    app, ns = render(tmp_path / "over")  # the local-config ConfigMap is not emitted
    assert ns == {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "ns"}}  # cluster-scoped: no namespace
    assert app["metadata"]["namespace"] == "ns" and app["spec"]["replicas"] == 3
    main, side, third = app["spec"]["template"]["spec"]["containers"]
    assert main["image"] == "reg/app:9" and side["image"] == "other:2" and third["name"] == "third"
    assert main["resources"]["limits"] == {"nvidia.com/mig-2g.20gb": 1, "memory": "8Gi"}
    assert DEPLOY["spec"]["replicas"] == 1  # the inputs are not modified


@pytest.mark.parametrize("kustomization, message", [
    ({"kind": "Kustomization", "resources": ["app.yaml"], "commonLabels": {"a": "b"}}, "unsupported keys"),
    ({"kind": "Kustomization", "resources": ["app.yaml"],
      "patches": [{"target": {"kind": "Deployment", "name": "nope"}, "patch": "[]"}]}, "selects nothing"),
    ({"kind": "Kustomization", "resources": ["app.yaml"],
      "patches": [{"target": {"kind": "Deployment"}, "patch": "spec: {replicas: 2}"}]}, "only JSON 6902"),
    ({"kind": "Kustomization", "resources": ["app.yaml"], "patches": [{"target": {"kind": "Deployment"},
      "patch": "[{op: replace, path: /spec/paused, value: true}]"}]}, "no such field"),
    ({"kind": "Kustomization", "resources": ["app.yaml", "values.yaml"], "replacements": [{
        "source": {"kind": "ConfigMap", "name": "values", "fieldPath": "data.size"},
        "targets": [{"select": {"kind": "Deployment"},
                     "fieldPaths": ["spec.template.spec.containers.[name=gone].image"]}]}]}, "selects 0 items"),
    ({"kind": "Kustomization", "resources": ["app.yaml", "values.yaml"], "replacements": [{
        "source": {"kind": "ConfigMap", "name": "values", "fieldPath": "data.size"},
        "targets": [{"select": {"kind": "Deployment"}, "fieldPaths": ["spec.missing.x"]}]}]}, "no field"),
    ({"kind": "Component", "resources": ["app.yaml"]}, "Kustomization was expected"),
])
def test_what_it_cannot_render_is_an_error(tmp_path, kustomization, message):
    write(tmp_path, {"kustomization.yaml": kustomization, "app.yaml": [DEPLOY], "values.yaml": [VALUES]})
    with pytest.raises(ConfigError, match=message):
        render(tmp_path)
