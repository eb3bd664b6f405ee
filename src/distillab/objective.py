"""What one forward pass produced, and the named loss terms computed from it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from torch import Tensor, nn


@dataclass
class ModelOutput:
    """A network's output (logits, or an image for reconstruction) and its tapped features by module path."""

    out: Tensor
    features: dict[str, Tensor] = field(default_factory=dict)


@dataclass
class Outputs:
    """Everything a loss term may read for one batch."""

    inputs: Tensor
    targets: Tensor
    student: ModelOutput
    teachers: list[ModelOutput] = field(default_factory=list)
    index: Tensor | None = None  # each sample's index in the training set, where the loader yields it

    @property
    def teacher(self) -> ModelOutput:
        if not self.teachers:
            raise RuntimeError("this loss term needs a teacher, and none is configured")
        return self.teachers[0]


class Objective(nn.Module):
    """Named loss terms, each an `nn.Module` called on `Outputs` and returning a scalar tensor.

    Terms own their learnable parts (projectors), so those reach the optimizer and the checkpoint
    through `Objective.parameters()` / `state_dict()` with no extra wiring.
    """

    def __init__(self, terms: Mapping[str, nn.Module]) -> None:
        super().__init__()
        self.terms = nn.ModuleDict(terms)

    def forward(self, outputs: Outputs) -> dict[str, Tensor]:
        return {name: term(outputs) for name, term in self.terms.items()}
