"""GradNorm (Chen et al. 2018): weights that balance each term's gradient norm on a shared layer."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from distillab.errors import InvalidArgument
from distillab.taps import submodule
from distillab.weighting.base import BackwardContext, Weighting


def last_layer_with_weights(model: nn.Module) -> str:
    """Dotted path of the last submodule (in registration order) that owns a `weight` parameter; refused as the
    argument `shared_layer` (null) when there is none."""
    paths = [name for name, m in model.named_modules() if name and isinstance(getattr(m, "weight", None), nn.Parameter)]
    if not paths:
        raise InvalidArgument(
            "shared_layer",
            None,
            "the module path of a layer with weights",
            why=f"{type(model).__name__} has no layer with weights to pick",
        )
    return paths[-1]


class GradNorm(Weighting):
    """Weights `w_i` (a parameter, renormalised to sum to the number of terms) trained to minimise
    `sum_i |G_i - mean(G) * r_i^alpha|`, where `G_i = w_i ||dL_i/dW||` on the shared layer `W` and `r_i`
    is term i's loss ratio `L_i(t) / L_i(0)` relative to the mean ratio (its inverse training rate).

    The model is trained on `sum_i w_i L_i` (the weights held constant); the weights only on the GradNorm
    objective, whose gradient `backward` writes into their `.grad` (the optimizer then steps them with
    `lr`). `shared_layer` is a module path; null picks the student's last layer with weights (the paper's
    choice: one small layer, not the whole network, keeps the extra cost to one small backward per term).
    Each process would measure its own norms, so not under trainer.strategy=ddp.
    """

    supports_ddp = False
    initial_losses: Tensor
    started: Tensor

    def __init__(
        self,
        weights: Mapping[str, float],
        lr: float | None = 0.025,
        alpha: float = 1.5,
        shared_layer: str | None = None,
    ) -> None:
        super().__init__(weights, lr)
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 <= alpha < 100:
            raise InvalidArgument("alpha", alpha, "GradNorm's asymmetry, a number in [0, 100) (the paper: 1.5)")
        if shared_layer is not None and not (isinstance(shared_layer, str) and shared_layer):
            raise InvalidArgument(
                "shared_layer", shared_layer, "a module path of the student, or null (its last layer)"
            )
        self.alpha, self.shared_layer = float(alpha), shared_layer
        k = len(self.names)
        self.task_weights = nn.Parameter(self.initial * k / self.initial.sum().clamp_min(1e-12))
        self.register_buffer("initial_losses", torch.zeros(k))
        self.register_buffer("started", torch.tensor(False))
        self._shared: list[nn.Parameter] = []

    def bind(self, student: nn.Module) -> None:
        path = self.shared_layer or last_layer_with_weights(student)
        layer = submodule(student, path, "shared_layer", f"a module path of {type(student).__name__}")
        self._shared = [p for p in layer.parameters() if p.requires_grad]
        if not self._shared:  # a ReLU, a pooling layer: no gradient norm to balance, GradNorm would do nothing
            raise InvalidArgument(
                "shared_layer",
                path,
                "a layer with weights (a Linear or Conv), or null for the student's last one",
                why="it has no trainable weights, so GradNorm has no gradient norms to balance",
            )

    def forward(self, losses: Tensor) -> tuple[Tensor, Tensor]:
        with torch.no_grad():  # renormalise (after the previous optimizer step): positive, sum = K
            w = self.task_weights.clamp_min(1e-3)
            self.task_weights.copy_(w * len(w) / w.sum())
        weights = self.task_weights.detach().clone()  # a copy: the optimizer moves task_weights in place
        return (weights * losses).sum(), weights

    def backward(self, total: Tensor, losses: Tensor, ctx: BackwardContext) -> Tensor | None:
        if self._shared:
            if not self.started:
                self.initial_losses.copy_(losses.detach())
                self.started.fill_(True)
            # ||dL_i/dW|| once per term (G_i is linear in w_i, so no graph through the norms is needed)
            norms = torch.stack(
                [
                    torch.cat(
                        [
                            g.flatten()
                            for g in torch.autograd.grad(ctx.scale(losses[i]), self._shared, retain_graph=True)
                        ]
                    ).norm()
                    for i in range(len(self.names))
                ]
            )
            w = self.task_weights.detach()
            g = w * norms
            ratio = losses.detach() / self.initial_losses.clamp_min(1e-12)
            target = g.mean() * (ratio / ratio.mean()) ** self.alpha
            # d/dw_i sum_j |w_j n_j - target_j| with the target held constant (the paper's treatment)
            self.task_weights.grad = torch.sign(g - target) * norms
        return super().backward(total, losses, ctx)

    def trained_by_total(self) -> list[nn.Parameter]:
        return []  # the weights' gradient is GradNorm's own, written above
