"""Render a kustomization the way `kustomize build --load-restrictor LoadRestrictionsNone`
does, for the subset of kustomize that deploy/k8s uses, so the tests check the manifests
a cluster would receive without the kustomize binary (not installable from the package
registries this project uses).

Supported, with kustomize's meaning:
  resources          YAML files (several documents each) and directories holding a kustomization
  configMapGenerator name, files (`path` or `key=path`), literals, behavior create|merge|replace;
                     the name gets kustomize's content hash suffix, and every reference to the
                     ConfigMap in a pod template (volumes, projected volumes, env, envFrom) is
                     renamed to match
  patches            a file holding a JSON 6902 patch (a list of operations) and a target
                     (kind, name, and optionally group and version)
  images             name, newName, newTag, digest, applied to containers and init containers

Anything else in a kustomization (a strategic merge patch, another field) raises
Unsupported: the renderer never silently ignores what kustomize would do.
"""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import Any

import jsonpatch
import yaml

SUPPORTED = {"apiVersion", "kind", "resources", "configMapGenerator", "patches", "images"}
GENERATOR_KEYS = {"name", "files", "literals", "behavior"}
POD_TEMPLATE_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"}


class Unsupported(Exception):
    pass


def kustomize_hash(configmap: dict[str, Any]) -> str:
    """kustomize's ConfigMap name suffix (api/hasher): sha256 of the JSON encoding of kind,
    name and data as Go's json.Marshal writes it, the first 10 hex digits, with 0 1 3 a e
    replaced so that the suffix never spells words."""
    encoded = json.dumps({"data": configmap.get("data", {}), "kind": "ConfigMap",
                          "name": configmap["metadata"]["name"]},
                         sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    for char, escape in (("&", "\\u0026"), ("<", "\\u003c"), (">", "\\u003e"),
                         ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):
        encoded = encoded.replace(char, escape)
    digest = hashlib.sha256(encoded.encode()).hexdigest()[:10]
    return digest.translate(str.maketrans("013ae", "ghkmt"))


def build(directory: Path) -> list[dict[str, Any]]:
    """The resources `kustomize build directory` writes, generated ConfigMaps hashed and referenced."""
    resources, generated = _build(Path(directory))
    names = {}
    for configmap in generated:
        original = configmap["metadata"]["name"]
        configmap["metadata"]["name"] = f"{original}-{kustomize_hash(configmap)}"
        names[original] = configmap["metadata"]["name"]
    for resource in resources:
        if resource["kind"] in POD_TEMPLATE_KINDS:
            _rename_configmaps(resource["spec"]["template"]["spec"], names)
    return generated + resources


def _build(directory: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    unsupported = set(kustomization) - SUPPORTED
    if unsupported:
        raise Unsupported(f"{directory}: kustomization fields not rendered here: {sorted(unsupported)}")
    resources: list[dict[str, Any]] = []
    generated: list[dict[str, Any]] = []
    for entry in kustomization.get("resources", []):
        path = directory / entry
        if path.is_dir():
            more, more_generated = _build(path)
            resources += more
            generated += more_generated
        else:
            resources += [d for d in yaml.safe_load_all(path.read_text()) if d]
    for generator in kustomization.get("configMapGenerator", []):
        _generate(directory, generator, generated)
    for patch in kustomization.get("patches", []):
        _patch(directory, patch, resources + generated)
    for image in kustomization.get("images", []):
        for resource in resources:
            if resource["kind"] in POD_TEMPLATE_KINDS:
                spec = resource["spec"]["template"]["spec"]
                for container in spec.get("initContainers", []) + spec["containers"]:
                    container["image"] = _image(container["image"], image)
    return resources, generated


def _generate(directory: Path, generator: dict[str, Any], generated: list[dict[str, Any]]) -> None:
    unsupported = set(generator) - GENERATOR_KEYS
    if unsupported:
        raise Unsupported(f"{directory}: configMapGenerator fields not rendered here: {sorted(unsupported)}")
    data: dict[str, str] = {}
    for entry in generator.get("files", []):
        key, _, source = entry.rpartition("=") if "=" in entry else ("", "", entry)
        path = directory / source
        data[key or path.name] = path.read_text()  # a missing file fails, as in kustomize
    for literal in generator.get("literals", []):
        key, value = literal.split("=", 1)
        data[key] = value
    behavior = generator.get("behavior", "create")
    existing = next((c for c in generated if c["metadata"]["name"] == generator["name"]), None)
    if behavior == "create":
        if existing is not None:
            raise ValueError(f"{directory}: ConfigMap {generator['name']} already exists (behavior: create)")
        generated.append({"apiVersion": "v1", "kind": "ConfigMap",
                          "metadata": {"name": generator["name"]}, "data": data})
    elif existing is None:
        raise ValueError(f"{directory}: ConfigMap {generator['name']} has no base to {behavior}")
    elif behavior == "merge":
        existing["data"].update(data)
    elif behavior == "replace":
        existing["data"] = data
    else:
        raise Unsupported(f"{directory}: configMapGenerator behavior {behavior!r}")


def _patch(directory: Path, patch: dict[str, Any], resources: list[dict[str, Any]]) -> None:
    if set(patch) != {"path", "target"}:
        raise Unsupported(f"{directory}: a patch must be a JSON 6902 file with a target: {patch}")
    operations = yaml.safe_load((directory / patch["path"]).read_text())
    if not isinstance(operations, list):
        raise Unsupported(f"{directory}/{patch['path']}: not a JSON 6902 patch (a strategic merge patch?)")
    target = patch["target"]
    matched = [r for r in resources if r["kind"] == target["kind"] and r["metadata"]["name"] == target["name"]
               and _api_matches(r["apiVersion"], target)]
    if not matched:
        raise ValueError(f"{directory}: patch {patch['path']} matches no resource: {target}")
    for resource in matched:
        patched = jsonpatch.JsonPatch(operations).apply(copy.deepcopy(resource))
        resource.clear()
        resource.update(patched)


def _api_matches(api_version: str, target: dict[str, Any]) -> bool:
    group, _, version = api_version.rpartition("/")
    return target.get("group", group) == group and target.get("version", version) == version


def _image(reference: str, image: dict[str, Any]) -> str:
    name, tag, digest = reference, "", ""
    if "@" in name:
        name, digest = name.split("@", 1)
    if ":" in name.rsplit("/", 1)[-1]:
        name, tag = name.rsplit(":", 1)
    if name != image["name"]:
        return reference
    name = image.get("newName", name)
    if "digest" in image:
        return f"{name}@{image['digest']}"
    tag = image.get("newTag", tag)
    return f"{name}:{tag}" if tag else (f"{name}@{digest}" if digest else name)


def _rename_configmaps(pod: dict[str, Any], names: dict[str, str]) -> None:
    def rename(holder: dict[str, Any] | None) -> None:
        if holder and holder.get("name") in names:
            holder["name"] = names[holder["name"]]

    for volume in pod.get("volumes", []):
        rename(volume.get("configMap"))
        for source in volume.get("projected", {}).get("sources", []):
            rename(source.get("configMap"))
    for container in pod.get("initContainers", []) + pod["containers"]:
        for variable in container.get("env", []):
            rename(variable.get("valueFrom", {}).get("configMapKeyRef"))
        for source in container.get("envFrom", []):
            rename(source.get("configMapRef"))
