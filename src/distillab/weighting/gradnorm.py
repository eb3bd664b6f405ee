"""GradNorm (Chen et al. 2018): weights that balance each term's gradient norm on a shared layer."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from distillab.errors import ConfigError
from distillab.taps import check_paths
from distillab.weighting.base import Weighting


def last_layer_with_weights(model: nn.Module) -> str:
    """Dotted path of the last submodule (in registration order) that owns a `weight` parameter."""
    paths = [name for name, m in model.named_modules() if name and isinstance(getattr(m, "weight", None), nn.Parameter)]
    if not paths:
        raise ConfigError(f"{type(model).__name__} has no layer with weights for weighting.shared_layer: name one by module path.")
    return paths[-1]


class GradNorm(Weighting):
    """Weights `w_i` (a parameter, renormalised to sum to the number of terms) trained to minimise
    `sum_i |G_i - mean(G) * r_i^alpha|`, where `G_i = ||d(w_i L_i)/dW||` on the shared layer `W` and
    `r_i` is term i's loss ratio `L_i(t) / L_i(0)` relative to the mean ratio (its inverse training rate).

    The model is trained on `sum_i w_i L_i`; the weights only on the GradNorm objective (its gradient is
    passed through a zero-valued surrogate, so `loss/total` stays the weighted sum). `shared_layer` is a
    module path; null picks the student's last layer with weights (the paper's choice: one small layer,
    not the whole network, keeps the extra cost to one small backward per term).
    """

    def __init__(self, weights: Mapping[str, float], lr: float | None = 0.025, alpha: float = 1.5, shared_layer: str | None = None) -> None:
        super().__init__(weights, lr)
        self.alpha, self.shared_layer = alpha, shared_layer
        k = len(self.names)
        self.task_weights = nn.Parameter(self.initial * k / self.initial.sum())
        self.register_buffer("initial_losses", torch.zeros(k))
        self.register_buffer("started", torch.tensor(False))
        self._shared: list[nn.Parameter] = []

    def bind(self, student: nn.Module) -> None:
        path = self.shared_layer or last_layer_with_weights(student)
        check_paths(student, [path], "weighting.shared_layer")
        self._shared = [p for p in dict(student.named_modules())[path].parameters() if p.requires_grad]

    def forward(self, losses: Tensor) -> tuple[Tensor, Tensor]:
        with torch.no_grad():  # renormalise (after the previous optimizer step): positive, sum = K
            w = self.task_weights.clamp_min(1e-3)
            self.task_weights.copy_(w * len(w) / w.sum())
        weights = self.task_weights
        total = (weights.detach() * losses).sum()
        if not (torch.is_grad_enabled() and losses.requires_grad and self._shared):
            return total, weights.detach()
        if not self.started:
            self.initial_losses.copy_(losses.detach())
            self.started.fill_(True)
        norms = torch.stack([
            torch.cat([g.flatten() for g in torch.autograd.grad(weights[i] * losses[i], self._shared, retain_graph=True, create_graph=True)]).norm()
            for i in range(len(self.names))
        ])
        with torch.no_grad():
            ratio = losses.detach() / self.initial_losses.clamp_min(1e-12)
            target = norms.mean() * (ratio / ratio.mean()) ** self.alpha
        (grad,) = torch.autograd.grad((norms - target).abs().sum(), weights, retain_graph=True)
        surrogate = (weights * grad).sum()  # d/dw = the GradNorm gradient; no path into the model
        return total + surrogate - surrogate.detach(), weights.detach()
