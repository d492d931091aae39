"""Kubernetes pod settings of a long-running service, as the `dagster-k8s/config` run tag.

In production every run is a Kubernetes Job started by dagster-k8s's K8sRunLauncher
(deploy/dagster.yaml). The launcher's own config gives every run the same default container
resources; a service whose needs differ carries this tag on its job, and the launcher merges
it into that run's pod. Locally the tag is inert (the default launcher ignores it). Each
service declares its `Pod` in its own `service(...)` call (pipelines/services/builder.py).

Sizes are the steady-state needs of one process at the rates of ARCHITECTURE §5 with
headroom, not measurements of this machine: the lake sink buffers up to a 256 MiB target file
per open table, the feature processor holds one window state per symbol, collectors and the
thin consumers are network-bound. Memory limits bound a leak to one pod; no CPU limits, so a
service catching up after a restart may burst (requests still place pods sensibly).

Collectors bind each socket to one of the shard's egress IPs (collectors/sharding.py). A pod
owns only its own address, so collector pods use the node's network: the node's secondary
private IPs, each associated with one Elastic IP, are the shard's `egress_ips`, and the pods
land only on nodes labelled for egress (deploy/README.md: egress IPs).

tests/test_deploy.py validates every registered service's value against dagster-k8s's own
schema and builds the Kubernetes Job the launcher would submit for each.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

#: dagster-k8s reads per-run pod settings from this tag (job tags reach every run of the job).
K8S_CONFIG_TAG = "dagster-k8s/config"

#: Node label of the nodes whose secondary IPs carry the collectors' Elastic IPs.
EGRESS_NODE_LABEL = "ticklake/egress"

#: Pod label naming the service kind (the service tag's value without an instance key).
KIND_LABEL = "ticklake/service-kind"


@dataclass(frozen=True)
class Pod:
    """Container size of one run of a service (requests; a memory limit bounds a leak to the
    pod, no CPU limit so a catching-up service may burst). `egress`: the service binds the
    node's egress IPs (collectors), so its pods use the host network on egress nodes, one per node."""

    cpu: str
    memory: str
    memory_limit: str
    egress: bool = False

    @property
    def resources(self) -> dict[str, Any]:
        return {"requests": {"cpu": self.cpu, "memory": self.memory}, "limits": {"memory": self.memory_limit}}


def _egress_pod_spec(kind: str) -> dict[str, Any]:
    """Pod settings of an egress service: the egress nodes' network (see module doc), one pod
    of the kind per node so two never claim the same addresses or metrics port."""
    return {
        "host_network": True,
        "dns_policy": "ClusterFirstWithHostNet",
        "node_selector": {EGRESS_NODE_LABEL: "true"},
        "affinity": {
            "pod_anti_affinity": {
                "required_during_scheduling_ignored_during_execution": [
                    {
                        "label_selector": {"match_labels": {KIND_LABEL: kind}},
                        "topology_key": "kubernetes.io/hostname",
                    }
                ]
            }
        },
    }


def service_kind(service: str) -> str:
    """`collector:<shard>` -> `collector` (an instance's service value); other names are their own kind."""
    return service.split(":", 1)[0]


def k8s_config(service: str, pod: Pod) -> dict[str, Any]:
    """The dagster-k8s user-defined config (container + pod settings) of one service."""
    kind = service_kind(service)
    config: dict[str, Any] = {
        "container_config": {"resources": pod.resources},
        "pod_template_spec_metadata": {"labels": {KIND_LABEL: kind}},
    }
    if pod.egress:
        config["pod_spec_config"] = _egress_pod_spec(kind)
    return config


def k8s_tags(service: str, pod: Pod) -> dict[str, str]:
    """Job tags that size the service's pod under K8sRunLauncher (JSON, as run tags are strings)."""
    return {K8S_CONFIG_TAG: json.dumps(k8s_config(service, pod), sort_keys=True)}
