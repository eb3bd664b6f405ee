"""The interface every weighting strategy implements: loss values -> a total, and the backward pass."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from distillab import checks
from distillab.errors import InvalidArgument

Scale = Callable[[Tensor], Tensor]  # the GradScaler's `scale` (the identity unless trainer.precision=16-mixed)


@dataclass
class BackwardContext:
    """What a weighting's `backward` may need beyond the step's loss values.

    `shared`: the parameters every term trains (the student's); `own`: each term's own parameters
    (projectors, embeddings), by term name, in `Weighting.names` order; `separate`: one backward pass
    per term (`trainer.backward=separate`) instead of one on the total; `scale`: the loss scaling of
    16-mixed precision (the identity otherwise)."""

    shared: list[nn.Parameter]
    own: dict[str, list[nn.Parameter]] = field(default_factory=dict)
    separate: bool = False
    scale: Scale = lambda t: t
    # this step's term values before they were stacked, in `Weighting.names` order (set by the stage each step):
    # each term's own graph, for a strategy that asks which parameters a term reaches (DOT; the stacked values'
    # gradient reaches every parameter of every term, as zeros where a term does not)
    terms: Sequence[Tensor] = ()


class Weighting(nn.Module):
    """Turns the stacked term losses `L` (ordered as `self.names`) into `(total, w)`, and decides how
    the terms' gradients become the update (`backward`).

    `w` holds the effective weight of each term at this step, the numbers logged as `loss_weight/<term>`. The
    loop keeps it, as it is, until it sums the logged values (several steps later): it must not require
    grad and must not change afterwards, so a strategy that updates its weights in place (GradNorm) returns
    a copy, and one that returns a buffer changes that buffer only in `on_epoch_end` (the loop has summed
    the epoch's steps by then; DDP's buffer broadcast rewrites it with the same values). The same holds for
    the weights `backward` returns.
    `weights` are the configured weights (the fixed ones, or the initial ones of an adaptive strategy);
    they must be finite and non-negative. A strategy's own parameters go into the optimizer in a group of
    their own, with learning rate `lr` (None: the optimizer's) and no weight decay.

    `supports_ddp`: False where the strategy's update is decided in one process (trainer.strategy=ddp
    refuses it before anything is built further).
    """

    supports_ddp = True
    initial: Tensor  # buffer: the configured weights, in `names` order

    def __init__(self, weights: Mapping[str, float], lr: float | None = None) -> None:
        super().__init__()
        if not isinstance(weights, Mapping) or not weights:
            raise InvalidArgument("weights", weights, "a mapping of loss term names to weights")
        check_weights("weights", weights)
        self.names = list(weights)
        self.lr = None if lr is None else checks.number("lr", lr, above=0, at_most=10)
        self.register_buffer("initial", torch.tensor([float(weights[n]) for n in self.names]))

    def forward(self, losses: Tensor) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def backward(self, total: Tensor, losses: Tensor, ctx: BackwardContext) -> Tensor | None:
        """Put this step's gradients into `.grad`; return the effective weights if backward decided them
        (gradient-level methods), else None (the forward's `w` stands). Default: one backward pass of the
        total, or one per term with `trainer.backward=separate` (the same gradients)."""
        scaled = ctx.scale(total)
        if ctx.separate:
            backward_per_term(scaled, losses, self.trained_by_total())
        else:
            scaled.backward()
        return None

    @classmethod
    def decides_in_backward(cls) -> bool:
        """Whether the strategy overrides `backward` (gradient-level: GradNorm, torchjd's, DOT): it then keeps state
        and reads values there, which the NaN guard, a fused group and a CUDA graph each have to account for."""
        return cls.backward is not Weighting.backward

    def trained_by_total(self) -> list[nn.Parameter]:
        """The strategy's parameters whose gradient comes from the total (learnable weights)."""
        return list(self.parameters())

    def bind(self, student: nn.Module) -> None:
        """Called once with the student before training (strategies that look at its gradients)."""

    def check_training(self, optimizer: torch.optim.Optimizer, trainer: Mapping[str, Any]) -> None:
        """Called before training with the built optimizer and the trainer's settings (strategies that need some)."""

    def check_metrics(self, available: Sequence[str]) -> None:
        """Called before training with the metric names `on_epoch_end` will see (strategies that follow one)."""

    def on_epoch_end(self, epoch: int, metrics: Mapping[str, float]) -> None:
        """Called after each epoch with `loss/<term>` epoch means and the `val/...` metrics."""

    def epoch_scalars(self) -> dict[str, float]:
        """Extra values to log after each epoch (e.g. the current stage)."""
        return {}


# Published weights go up to a few thousand (SP's 3000); beyond a million a term only overflows the total.
MAX_WEIGHT = 1e6


def check_weights(name: str, weights: Mapping[str, Any]) -> None:
    """Each of `weights` (the argument `name`) is a number in [0, MAX_WEIGHT] (1e6), the one place this is
    checked: `weighting.weights` is `${loss.weights}`, so a refusal names `loss.weights.<term>` (`config_key`)."""
    for term, value in weights.items():
        if not (checks.is_number(value) and 0 <= value <= MAX_WEIGHT):  # (nan fails both comparisons)
            raise InvalidArgument(f"{name}.{term}", value, "a number >= 0 and <= 1e6")


def backward_per_term(total: Tensor, values: Tensor, weighting_params: Sequence[Tensor]) -> None:
    """Gradients of `total` by one backward pass per loss term, accumulating into `.grad`.

    The coefficient of each term, d total / d L_i (its weight for a weighted sum), comes from the cheap
    graph of the weighting; then `L_i` is back-propagated alone with that coefficient. The weighting's
    own parameters get their gradient from `total` directly. The result equals `total.backward()`.
    """
    (coefficients,) = torch.autograd.grad(total, values, retain_graph=True)
    if weighting_params:
        torch.autograd.backward(total, inputs=list(weighting_params), retain_graph=True)
    last = len(values) - 1
    for i in range(len(values)):
        values[i].backward(coefficients[i], retain_graph=i < last)
