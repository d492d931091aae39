"""Kubernetes pod settings per long-running service, as the `dagster-k8s/config` run tag.

In production every run is a Kubernetes Job started by dagster-k8s's K8sRunLauncher
(deploy/dagster.yaml). The launcher's own config gives every run the same default container
resources; a service whose needs differ carries this tag on its job, and the launcher merges
it into that run's pod. Locally the tag is inert (the default launcher ignores it).

Sizes are the steady-state needs of one process at the rates of ARCHITECTURE §5 with
headroom, not measurements of this machine: the lake sink buffers up to a 256 MiB target file
per open table, the feature processor holds one window state per symbol, collectors and the
thin consumers are network-bound. Memory limits bound a leak to one pod; no CPU limits, so a
service catching up after a restart may burst (requests still place pods sensibly).

Collectors bind each socket to one of the shard's egress IPs (collectors/sharding.py). A pod
owns only its own address, so collector pods use the node's network: the node's secondary
private IPs, each associated with one Elastic IP, are the shard's `egress_ips`, and the pods
land only on nodes labelled for egress (deploy/README.md: egress IPs).

tests/test_deploy.py validates every value against dagster-k8s's own schema and builds the
Kubernetes Job the launcher would submit for each service.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

#: dagster-k8s reads per-run pod settings from this tag (job tags reach every run of the job).
K8S_CONFIG_TAG = "dagster-k8s/config"

#: Node label of the nodes whose secondary IPs carry the collectors' Elastic IPs.
EGRESS_NODE_LABEL = "ticklake/egress"

COLLECTOR = "collector"
NORMALIZER = "normalizer"
FEATURE_PROCESSOR = "feature-processor"
LAKE_SINK = "lake-sink"
CLICKHOUSE_LIVE = "clickhouse-live"
PRAGMA_PUBLISHER = "pragma-publisher"
INFERENCE = "inference"


def _resources(cpu: str, memory: str, memory_limit: str) -> dict[str, Any]:
    return {"requests": {"cpu": cpu, "memory": memory}, "limits": {"memory": memory_limit}}


#: Container resources per service kind (the `ticklake/service` tag value, without a shard).
SERVICE_RESOURCES: Mapping[str, Mapping[str, Any]] = {
    COLLECTOR: _resources("500m", "512Mi", "1Gi"),
    NORMALIZER: _resources("1", "1Gi", "2Gi"),
    FEATURE_PROCESSOR: _resources("1", "2Gi", "4Gi"),
    LAKE_SINK: _resources("1", "4Gi", "8Gi"),
    CLICKHOUSE_LIVE: _resources("250m", "512Mi", "1Gi"),
    PRAGMA_PUBLISHER: _resources("250m", "512Mi", "1Gi"),
    INFERENCE: _resources("500m", "1Gi", "2Gi"),
}

#: Pod settings beyond resources: collectors share the egress nodes' network (see module doc),
#: one shard per node so two shards never claim the same addresses or metrics port.
_COLLECTOR_POD_SPEC: Mapping[str, Any] = {
    "host_network": True,
    "dns_policy": "ClusterFirstWithHostNet",
    "node_selector": {EGRESS_NODE_LABEL: "true"},
    "affinity": {
        "pod_anti_affinity": {
            "required_during_scheduling_ignored_during_execution": [
                {
                    "label_selector": {"match_labels": {"ticklake/service-kind": COLLECTOR}},
                    "topology_key": "kubernetes.io/hostname",
                }
            ]
        }
    },
}


def service_kind(service: str) -> str:
    """`collector:<shard>` -> `collector`; other service names are their own kind."""
    return service.split(":", 1)[0]


def k8s_config(service: str) -> dict[str, Any]:
    """The dagster-k8s user-defined config (container + pod settings) of one service."""
    kind = service_kind(service)
    if kind not in SERVICE_RESOURCES:
        raise KeyError(f"no Kubernetes resources for service {service!r}; add it to SERVICE_RESOURCES")
    config: dict[str, Any] = {
        "container_config": {"resources": dict(SERVICE_RESOURCES[kind])},
        "pod_template_spec_metadata": {"labels": {"ticklake/service-kind": kind}},
    }
    if kind == COLLECTOR:
        config["pod_spec_config"] = dict(_COLLECTOR_POD_SPEC)
    return config


def k8s_tags(service: str) -> dict[str, str]:
    """Job tags that size the service's pod under K8sRunLauncher (JSON, as run tags are strings)."""
    return {K8S_CONFIG_TAG: json.dumps(k8s_config(service), sort_keys=True)}
