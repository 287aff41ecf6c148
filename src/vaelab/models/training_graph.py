"""A model's training graph as plain data: inputs, networks, noise, sampled variables and cost
terms, with edges in the direction computation flows. Each model describes its own graph with a
`training_graph(config)` classmethod; vaelab.plots.graphs renders them all in one style, so the
graphs read consistently side by side.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

NodeKind = Literal["input", "network", "noise", "sampled", "cost", "output"]


@dataclass(frozen=True)
class Node:
    name: str  # unique key, used by edges
    label: str  # what the picture shows
    kind: NodeKind
    highlight: bool = False  # drawn in the accent colour (the VAE's KL cost)


@dataclass(frozen=True)
class TrainingGraph:
    title: str
    nodes: tuple[Node, ...]
    edges: tuple[tuple[str, str], ...]

    def __post_init__(self):
        names = [node.name for node in self.nodes]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate node names in the {self.title} graph")
        unknown = {end for edge in self.edges for end in edge} - set(names)
        if unknown:
            raise ValueError(f"edges of the {self.title} graph name unknown nodes {sorted(unknown)}")
