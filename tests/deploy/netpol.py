"""Whether Kubernetes NetworkPolicies let one pod open a connection to another,
by the rules of the API (networking.k8s.io/v1): a pod that no policy selects
for a direction is open in that direction; a selected one takes only what some
rule of a selecting policy allows; egress of the source and ingress of the
destination must both allow. An ipBlock is taken to match every address, which
can only allow more: the tests that say "no other" stay on the safe side. An
address outside the cluster (`outside_cluster`) is matched by ipBlocks only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

Manifest = dict[str, Any]


@dataclass(frozen=True)
class Pod:
    labels: dict[str, str]
    namespace: str
    namespace_labels: dict[str, str] = field(default_factory=dict)
    outside_cluster: bool = False

    def __post_init__(self) -> None:
        self.namespace_labels.setdefault("kubernetes.io/metadata.name", self.namespace)


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    for key, value in selector.get("matchLabels", {}).items():
        if labels.get(key) != value:
            return False
    for expression in selector.get("matchExpressions", []):
        key, operator = expression["key"], expression["operator"]
        values = expression.get("values", [])
        present = key in labels
        if operator == "In" and not (present and labels[key] in values):
            return False
        if operator == "NotIn" and present and labels[key] in values:
            return False
        if operator == "Exists" and not present:
            return False
        if operator == "DoesNotExist" and present:
            return False
    return True


def peer_matches(peer: dict[str, Any], pod: Pod, policy_namespace: str) -> bool:
    if "ipBlock" in peer:
        return True
    if pod.outside_cluster:
        return False
    if "namespaceSelector" in peer:
        if not selects(peer["namespaceSelector"], pod.namespace_labels):
            return False
    elif pod.namespace != policy_namespace:
        return False
    return selects(peer.get("podSelector", {}), pod.labels)


def port_matches(rule_ports: list[dict[str, Any]] | None, port: int, protocol: str) -> bool:
    if not rule_ports:
        return True
    return any(
        entry.get("protocol", "TCP") == protocol and entry.get("port") in (None, port)
        for entry in rule_ports
    )


def policy_types(policy: Manifest) -> list[str]:
    spec = policy["spec"]
    return list(spec.get("policyTypes") or ["Ingress", *(["Egress"] if "egress" in spec else [])])


def allows(
    policies: list[Manifest], subject: Pod, other: Pod, port: int, protocol: str, direction: str
) -> bool:
    """Whether the policies on `subject`'s side allow the connection to (Egress)
    or from (Ingress) `other` on `port`."""
    peers_key = "to" if direction == "Egress" else "from"
    selecting = [
        p
        for p in policies
        if p["metadata"]["namespace"] == subject.namespace
        and direction in policy_types(p)
        and selects(p["spec"]["podSelector"], subject.labels)
    ]
    if not selecting:
        return True
    for policy in selecting:
        for rule in policy["spec"].get(direction.lower(), []):
            peers = rule.get(peers_key)
            peer_ok = not peers or any(
                peer_matches(peer, other, policy["metadata"]["namespace"]) for peer in peers
            )
            if peer_ok and port_matches(rule.get("ports"), port, protocol):
                return True
    return False


def can_connect(
    policies: list[Manifest], source: Pod, destination: Pod, port: int, protocol: str = "TCP"
) -> bool:
    return allows(policies, source, destination, port, protocol, "Egress") and allows(
        policies, destination, source, port, protocol, "Ingress"
    )
