"""An input's settings, compiled, and what a file's path says about it: runtime wrapping, pod labels."""

from __future__ import annotations

import re
from dataclasses import dataclass

from loglake.core.config import InputConfig
from shippers.multiline import LineJoiner

_POD_LOG = re.compile(r"/(?P<namespace>[^/_]+)_(?P<pod>[^/_]+)_(?P<uid>[0-9a-fA-F-]{8,})"
                      r"/(?P<container>[^/]+)/\d+\.log$")
_CONTAINER_LOG = re.compile(r"/(?P<pod>[^/_]+)_(?P<namespace>[^/_]+)_(?P<container>[^/_]+)-(?P<id>[0-9a-f]{64})\.log$")


def kubernetes_labels(path: str) -> dict[str, str]:
    """Namespace, pod and container from a kubelet log path (/var/log/pods or /var/log/containers)."""
    if m := _POD_LOG.search(path):
        return {"k8s.namespace.name": m["namespace"], "k8s.pod.name": m["pod"], "k8s.pod.uid": m["uid"],
                "k8s.container.name": m["container"]}
    if m := _CONTAINER_LOG.search(path):
        return {"k8s.namespace.name": m["namespace"], "k8s.pod.name": m["pod"], "k8s.container.name": m["container"]}
    return {}


def wrapper_for(path: str, fmt: str) -> str:
    """The container runtime wrapping a file's lines may have: "", "cri" or "docker".

    Only a suggestion: the joiner and ingest unwrap a line only if it has the runtime's shape,
    so an application's own log that merely lives or is named like a container log stays as it is.
    """
    if fmt != "auto":
        return "" if fmt == "plain" else fmt
    if path.endswith("-json.log"):
        return "docker"
    if "/var/log/pods/" in path or "/var/log/containers/" in path or _POD_LOG.search(path):
        return "cri"
    return ""


@dataclass(frozen=True, slots=True)
class Input:
    """An input's settings, compiled."""

    cfg: InputConfig
    joiner: LineJoiner | None
    service_re: re.Pattern[str] | None

    @classmethod
    def compile(cls, cfg: InputConfig) -> Input:
        return cls(cfg, LineJoiner.from_config(cfg.multiline) if cfg.multiline else None,
                   re.compile(cfg.service_from_path) if cfg.service_from_path else None)
