"""The running steps of a runtime, on either step runner (containerd tasks or direct)."""

from __future__ import annotations

import json


def running_steps(rt, label: tuple[str, str] | None = None) -> list[tuple[str, dict]]:
    """(container id, OCI spec) of each running step container of ``rt``: containerd's
    containers (the task path, services) and the direct steps' bundles; only those with
    ``label`` (key, value) when given (a label of the StepSpec)."""
    from kata.runtimes.containerd.client import containers_pb2

    c = rt.client
    found = []
    filters = [f'labels."{label[0]}"=={label[1]}'] if label else []
    for ctr in c.call(c.containers.List, containers_pb2.ListContainersRequest(filters=filters),
                      "list").containers:
        if ctr.id.startswith("kata-anchor-"):  # a shared shim's anchor (shimgroup.py), no step
            continue
        found.append((ctr.id, json.loads(ctr.spec.value)))
    for d in rt.direct.step_dirs():
        try:
            spec = json.loads((d / "config.json").read_text())
        except (OSError, ValueError):
            continue  # being written or removed
        if label is None or spec.get("annotations", {}).get(label[0]) == label[1]:
            found.append((d.name, spec))
    return found
