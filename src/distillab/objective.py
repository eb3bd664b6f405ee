"""What one forward pass produced, and the named loss terms computed from it."""

from __future__ import annotations

from collections.abc import ItemsView, Mapping, ValuesView
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, cast

from torch import Tensor, nn

if TYPE_CHECKING:
    from distillab.losses import LossTerm


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
            raise RuntimeError(
                "it reads outputs.teacher, but no term of this loss declares needs_teacher = True, so no teacher was "
                "built: set needs_teacher = True on the term's class"
            )
        return self.teachers[0]


class Objective(nn.Module):
    """Named loss terms, each an `nn.Module` called on `Outputs` and returning a scalar tensor.

    Terms own their learnable parts (projectors), so those reach the optimizer and the checkpoint
    through `Objective.parameters()` / `state_dict()` with no extra wiring.
    """

    def __init__(self, terms: Mapping[str, LossTerm]) -> None:
        super().__init__()
        self.terms = nn.ModuleDict(terms)

    def items(self) -> ItemsView[str, LossTerm]:
        """The named terms, typed (nn.ModuleDict only knows they are modules)."""
        return cast("dict[str, LossTerm]", self.terms).items()

    def values(self) -> ValuesView[LossTerm]:
        return cast("dict[str, LossTerm]", self.terms).values()

    def __getitem__(self, name: str) -> LossTerm:
        return cast("LossTerm", self.terms[name])

    def set_epoch(self, epoch: int) -> None:
        for term in self.values():
            term.set_epoch(epoch)

    def scalars(self) -> dict[str, float]:
        """The terms' own logged state (`LossTerm.scalars`) as `<name>/<term>`: a host read, made at log points."""
        return {f"{key}/{name}": float(v) for name, term in self.items() for key, v in term.scalars().items()}
