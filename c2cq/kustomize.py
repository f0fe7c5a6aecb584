"""A small Kustomize renderer: the subset deploy/ uses, so the manifests render and are checked
where no kubectl is installed.

Supported, with kustomize's meaning: ``resources`` (files and folders), ``components``,
``namespace``, ``patches`` (JSON 6902 op lists, inline or from a file, with a kind/name target),
``images`` (newName/newTag), ``replacements`` (a source field copied to target fieldPaths with
``[key=value]`` list selectors), and resources annotated ``config.kubernetes.io/local-config``
used as replacement sources but not emitted. Any other key is an error, not silently ignored;
tests compare the output with ``kubectl kustomize`` where one is installed.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path

import yaml

from c2cq.errors import ConfigError

KNOWN = {"apiVersion", "kind", "resources", "components", "namespace", "patches", "images", "replacements"}
LOCAL_CONFIG = "config.kubernetes.io/local-config"
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "PersistentVolume", "StorageClass",
                  "CustomResourceDefinition", "PriorityClass", "RuntimeClass"}
_SELECTOR = re.compile(r"\[(.+?)=(.*)\]")


def render(folder: str | Path) -> list[dict]:
    """The resources ``kubectl kustomize FOLDER`` prints, in the order they were accumulated."""
    return [r for r in _build(Path(folder), component=False) if not _local(r)]


def _local(r: dict) -> bool:
    return (r.get("metadata", {}).get("annotations") or {}).get(LOCAL_CONFIG) == "true"


def _kustomization(folder: Path) -> dict:
    try:
        k = yaml.safe_load((folder / "kustomization.yaml").read_text()) or {}
    except OSError as e:
        raise ConfigError(f"{folder}: no kustomization.yaml ({e.strerror})") from None
    if unknown := set(k) - KNOWN:
        raise ConfigError(f"{folder}/kustomization.yaml: unsupported keys {sorted(unknown)}")
    return k


def _build(folder: Path, component: bool, acc: list[dict] | None = None) -> list[dict]:
    k = _kustomization(folder)
    if (k.get("kind") == "Component") != component:
        raise ConfigError(f"{folder}: a {'Component' if component else 'Kustomization'} was expected here")
    acc = [] if acc is None else acc
    for entry in k.get("resources", []):
        path = folder / entry
        if path.is_dir():
            acc.extend(_build(path, component=False))
        else:
            acc.extend(d for d in yaml.safe_load_all(path.read_text()) if d)
    for entry in k.get("components", []):
        acc = _build(folder / entry, component=True, acc=acc)
    for p in k.get("patches", []):
        ops = yaml.safe_load((folder / p["path"]).read_text()) if "path" in p else yaml.safe_load(p["patch"])
        if not isinstance(ops, list):
            raise ConfigError(f"{folder}: only JSON 6902 patches (a list of ops) are supported")
        targets = _select(acc, p.get("target") or {})
        if not targets:
            raise ConfigError(f"{folder}: patch target {p.get('target')} selects nothing")
        for r in targets:
            for op in ops:
                _apply_op(r, op)
    if ns := k.get("namespace"):
        for r in acc:
            if r.get("kind") not in CLUSTER_SCOPED:
                r.setdefault("metadata", {})["namespace"] = ns
    for image in k.get("images", []):
        for r in acc:
            for c in _containers(r):
                name, _, _ = c.get("image", "").partition(":")
                if name == image["name"]:
                    c["image"] = f"{image.get('newName', name)}:{image['newTag']}" if "newTag" in image \
                        else image.get("newName", name)
    for rep in k.get("replacements", []):
        _replace(acc, rep, folder)
    return acc


def _select(acc: list[dict], sel: dict) -> list[dict]:
    return [r for r in acc if all(r.get("kind") == v if f == "kind" else r.get("metadata", {}).get(f) == v
                                  for f, v in sel.items())]


def _containers(r: dict) -> list[dict]:
    spec = r.get("spec", {}).get("template", {}).get("spec", {})
    return [*spec.get("initContainers", []), *spec.get("containers", [])]


def _pointer(path: str) -> list[str]:
    return [p.replace("~1", "/").replace("~0", "~") for p in path.lstrip("/").split("/")]


def _apply_op(doc: dict, op: dict) -> None:
    *parents, last = _pointer(op["path"])
    node = doc
    for p in parents:
        node = node[int(p)] if isinstance(node, list) else node[p]
    kind = op["op"]
    if kind not in ("add", "replace", "remove"):
        raise ConfigError(f"unsupported patch op {kind!r}")
    if isinstance(node, list):
        i = len(node) if last == "-" else int(last)
        if kind == "add":
            node.insert(i, copy.deepcopy(op["value"]))
        elif kind == "replace":
            node[i] = copy.deepcopy(op["value"])
        else:
            del node[i]
        return
    if kind in ("replace", "remove") and last not in node:
        raise ConfigError(f"patch {kind} {op['path']}: no such field")
    if kind == "remove":
        del node[last]
    else:
        node[last] = copy.deepcopy(op["value"])


def _field_steps(path: str) -> list[str]:
    """``a.b.[name=x].c`` → ['a', 'b', '[name=x]', 'c'] (a selector is its own step)."""
    return [s for s in re.split(r"\.(?![^\[]*\])", path) if s]


def _walk(node, steps: list[str], create: bool, path: str):
    """(parent, key) of the field at ``steps``."""
    for i, step in enumerate(steps):
        last = i == len(steps) - 1
        if m := _SELECTOR.fullmatch(step):
            found = [x for x in node if isinstance(x, dict) and str(x.get(m.group(1))) == m.group(2)]
            if len(found) != 1:
                raise ConfigError(f"fieldPath {path}: {step} selects {len(found)} items")
            if last:
                return node, node.index(found[0])
            node = found[0]
            continue
        if last:
            if step not in node and not create:
                raise ConfigError(f"fieldPath {path}: no field {step!r}")
            return node, step
        if step not in node:
            if not create:
                raise ConfigError(f"fieldPath {path}: no field {step!r}")
            node[step] = {}
        node = node[step]
    raise ConfigError(f"empty fieldPath {path!r}")


def _replace(acc: list[dict], rep: dict, folder: Path) -> None:
    src = rep["source"]
    sources = _select(acc, {f: src[f] for f in ("kind", "name") if f in src})
    if len(sources) != 1:
        raise ConfigError(f"{folder}: replacement source {src} selects {len(sources)} resources")
    parent, key = _walk(sources[0], _field_steps(src.get("fieldPath", "metadata.name")), False, str(src))
    value = parent[key]
    for target in rep["targets"]:
        chosen = _select(acc, target["select"])
        if not chosen:
            raise ConfigError(f"{folder}: replacement target {target['select']} selects nothing")
        create = bool((target.get("options") or {}).get("create"))
        for r in chosen:
            for fp in target["fieldPaths"]:
                node, field = _walk(r, _field_steps(fp), create, fp)
                node[field] = copy.deepcopy(value)
