"""Gradient-level multi-loss methods (UPGrad, PCGrad, MGDA, CAGrad, Nash-MTL, IMTL-G, DualProj, GradDrop,
Aligned-MTL, ...) through torchjd: the update is an aggregation of the terms' gradients, not the gradient
of one weighted sum."""

from __future__ import annotations

import functools
import warnings
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from distillab.errors import InvalidArgument
from distillab.weighting.base import BackwardContext, Weighting

if TYPE_CHECKING:
    from torchjd.aggregation import Aggregator


class JacobianAggregation(Weighting):
    """A torchjd aggregator (`aggregator`, e.g. `{_target_: torchjd.aggregation.UPGrad}`) decides the update.

    Each term is scaled by its configured weight (`loss.weights`, which also set `loss/total`: the scaled
    terms' sum, not the logged weights times the terms, since no one loss has the update as its gradient), the
    Jacobian of the scaled terms with respect to the shared (student) parameters is aggregated by torchjd
    into their `.grad`; each term's own parameters (projectors, embeddings) get that term's own gradient.
    Terms of weight 0 are left out. `loss_weight/<term>` logs the effective weight each term received: the
    aggregator's weight on its row times its configured weight, so that the update is
    `sum_i weight_i * grad L_i`. Aggregators without a weighting (GradDrop) drop or mix coordinates; for
    them the logged weights are the least-squares fit of the update on the term gradients. An aggregator
    config with `_partial_: true` is completed with `n_tasks` (Nash-MTL). Not under trainer.strategy=ddp:
    the Jacobian is one process's.
    """

    supports_ddp = False

    def __init__(self, weights: Mapping[str, float], aggregator: Any) -> None:
        super().__init__(weights)
        self.active = [i for i, w in enumerate(self.initial.tolist()) if w > 0]
        if not self.active:
            raise InvalidArgument(
                "weights",
                dict(weights),
                "weights with at least one > 0",
                why="every weight is 0, so there is no gradient to aggregate",
            )
        if isinstance(aggregator, Mapping):  # the YAML files pass it unbuilt (_recursive_: false), to name its keys
            from distillab.instantiate import instantiate

            aggregator = instantiate(aggregator, key="weighting.aggregator")
        if isinstance(aggregator, functools.partial):  # Nash-MTL: a bargaining between the terms
            if len(self.active) < 2:
                name = aggregator.func.__name__
                raise InvalidArgument(
                    "aggregator",
                    name,
                    "a loss with several weighted terms, or another weighting such as weighting=fixed",
                    why=f"{name} bargains between the loss terms and this loss has {len(self.active)} with a weight "
                    "> 0",
                )
            aggregator = aggregator(n_tasks=len(self.active))
        from torchjd.aggregation import Aggregator

        if not isinstance(aggregator, Aggregator):
            raise InvalidArgument(
                "aggregator",
                aggregator,
                "a config that builds a torchjd.aggregation aggregator, e.g. {_target_: torchjd.aggregation.UPGrad}",
                why=f"it builds a {type(aggregator).__name__}",
            )
        self.aggregator: Aggregator = aggregator
        # cvxpy's notice that Nash-MTL's problem is re-solved from scratch each time: true, and nothing to act on
        warnings.filterwarnings("ignore", message="You are solving a parameterized problem that is not DPP")

    def forward(self, losses: Tensor) -> tuple[Tensor, Tensor]:
        weights = self.initial.to(losses.dtype)
        return (weights * losses).sum(), weights

    def backward(self, total: Tensor, losses: Tensor, ctx: BackwardContext) -> Tensor | None:
        from torchjd.aggregation import WeightedAggregator
        from torchjd.autojac import backward as jacobian_backward
        from torchjd.autojac import jac_to_grad

        scaled = ctx.scale(losses * self.initial.to(losses.dtype))
        terms = [scaled[i] for i in self.active]
        for i in self.active:  # each term's own parameters: its own gradient
            own = [p for p in ctx.own.get(self.names[i], []) if p.requires_grad]
            if own:
                torch.autograd.backward(scaled[i], inputs=own, retain_graph=True)
        shared = [p for p in ctx.shared if p.requires_grad]
        jacobian_backward(terms, inputs=shared)
        weighted = isinstance(self.aggregator, WeightedAggregator)
        jacobian = None if weighted else torch.cat([p.jac.flatten(1) for p in shared], dim=1)  # type: ignore[attr-defined]
        row_weights = jac_to_grad(shared, self.aggregator)
        if row_weights is None:  # the update's least-squares coordinates on the term gradients
            update = torch.cat([torch.zeros_like(p).flatten() if p.grad is None else p.grad.flatten() for p in shared])
            row_weights = torch.linalg.lstsq(jacobian.T, update[:, None]).solution.squeeze(1)  # type: ignore[union-attr]
        effective = torch.zeros_like(self.initial)
        effective[self.active] = row_weights.detach().to(effective) * self.initial[self.active]
        return effective
