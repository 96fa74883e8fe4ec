"""Drain (He et al., ICWS 2017): log templates by a fixed-depth prefix tree, weighted by counts.

The query side hands it the *distinct* masked messages of a range (variable words already
replaced by :data:`PARAM` in DuckDB, :mod:`query.patterns.mask`) with how many lines each stands
for, so it runs over hundreds or thousands of strings, not over every line.

A message is split on single spaces, so a template joined back with single spaces keeps the
message's own spacing. The tree's first level is the token count; the next ``depth - 2`` levels
are the leading tokens (a token holding a digit or a placeholder goes down the wildcard branch,
as does any token once a node has ``max_children``); a leaf holds clusters. A message joins the
leaf's most similar cluster (the share of positions where the cluster's template has the
message's token, a masked variable matching a placeholder; ties to the one with more
placeholders) if that share reaches ``sim_th``,
turning the positions that differ into :data:`PARAM`; otherwise it starts a cluster of its own.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

#: The placeholder of a variable part, as Loki writes it.
PARAM = "<_>"


@dataclass
class Cluster:
    """One template and the (weighted) number of messages it holds."""

    id: int
    tokens: list[str]
    size: int = 0

    @property
    def template(self) -> str:
        return join_template(self.tokens)


def join_template(tokens: list[str]) -> str:
    """Tokens back into text, runs of placeholders written once (``<_><_>`` is no Loki pattern)."""
    text = " ".join(tokens)
    while PARAM + PARAM in text:
        text = text.replace(PARAM + PARAM, PARAM)
    return text


def _variable(token: str) -> bool:
    return PARAM in token or any(c.isdigit() for c in token)


@dataclass
class _Node:
    children: dict[str, _Node] = field(default_factory=dict)
    clusters: list[Cluster] = field(default_factory=list)


class Drain:
    """An online Drain parse tree: :meth:`add` messages (with weights), read :attr:`clusters`.

    The defaults (depth 4, similarity 0.5) are the paper's and were the best of those tried on the
    Loghub samples (``tests/test_patterns_loghub.py``)."""

    def __init__(self, depth: int = 4, sim_th: float = 0.5, max_children: int = 100) -> None:
        if depth < 3:
            raise ValueError("depth must be at least 3")
        if not 0.0 <= sim_th <= 1.0:
            raise ValueError("sim_th must be between 0 and 1")
        if max_children < 1:
            raise ValueError("max_children must be positive")
        self.depth = depth
        self.sim_th = sim_th
        self.max_children = max_children
        self._root = _Node()
        self._clusters: list[Cluster] = []

    @property
    def clusters(self) -> list[Cluster]:
        """Every cluster, largest first."""
        return sorted(self._clusters, key=lambda c: (-c.size, c.id))

    def cluster(self, cluster_id: int) -> Cluster:
        """The cluster :meth:`add` returned the id of."""
        return self._clusters[cluster_id]

    def add(self, message: str, count: int = 1) -> int:
        """Learn ``message`` standing for ``count`` lines; the id of the cluster it joined."""
        tokens = message.split(" ")
        leaf = self._leaf(tokens)
        best = self._best(leaf.clusters, tokens)
        if best is None:
            best = Cluster(len(self._clusters), tokens)
            self._clusters.append(best)
            leaf.clusters.append(best)
        elif best.tokens != tokens:
            best.tokens = [t if t == m else PARAM for t, m in zip(best.tokens, tokens, strict=True)]
        best.size += count
        return best.id

    def train(self, messages: Iterable[tuple[str, int]]) -> dict[str, int]:
        """Learn every distinct (message, count), most frequent first (ties by text, so the result
        does not depend on the order given); the cluster id of each message."""
        return {m: self.add(m, c) for m, c in sorted(messages, key=lambda mc: (-mc[1], mc[0]))}

    def _leaf(self, tokens: list[str]) -> _Node:
        node = self._root.children.setdefault(str(len(tokens)), _Node())
        for token in tokens[:self.depth - 2]:
            key = PARAM if _variable(token) else token
            child = node.children.get(key)
            if child is None:
                if len(node.children) >= self.max_children:
                    key = PARAM
                child = node.children.setdefault(key, _Node())
            node = child
        return node

    def _best(self, clusters: list[Cluster], tokens: list[str]) -> Cluster | None:
        best, best_sim, best_params = None, -1.0, -1
        for c in clusters:
            same = params = 0
            for t, m in zip(c.tokens, tokens, strict=True):
                if t == m:
                    same += 1
                elif t == PARAM:
                    params += 1
            sim = same / len(tokens)
            if sim > best_sim or (sim == best_sim and params > best_params):
                best, best_sim, best_params = c, sim, params
        return best if best is not None and best_sim >= self.sim_th else None
