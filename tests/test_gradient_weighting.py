"""Gradient-level weighting through torchjd: the update against independent computations, each term's own
parameters, the logged effective weights, and the DDP refusal."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torchjd.aggregation import MGDA, PCGrad, UPGrad

from distillab.build import check_terms
from distillab.errors import ConfigError
from distillab.objective import Objective
from distillab.weighting import BackwardContext, GradNorm, JacobianAggregation

G1 = torch.tensor([1.0, 2.0, -1.0])
G2 = torch.tensor([-2.0, 0.5, 1.5])  # G1 . G2 = -2.5: they conflict


def linear_terms(g1: torch.Tensor, g2: torch.Tensor) -> tuple[nn.Parameter, torch.Tensor]:
    """Two terms linear in one shared parameter, so their gradients are exactly g1 and g2."""
    theta = nn.Parameter(torch.zeros(3))
    return theta, torch.stack([g1 @ theta, g2 @ theta])


def aggregate(
    aggregator, weights: dict[str, float], g1: torch.Tensor, g2: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    weighting = JacobianAggregation(weights, aggregator)
    theta, losses = linear_terms(g1, g2)
    total, _ = weighting(losses)
    effective = weighting.backward(total, losses, BackwardContext(shared=[theta]))
    return theta.grad, effective


def project(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """`a` without its component along `b` when they conflict (Yu et al. 2020)."""
    dot = a @ b
    return a - dot / (b @ b) * b if dot < 0 else a


@pytest.mark.parametrize("w", [(1.0, 1.0), (0.5, 2.0)])
def test_pcgrad_update_is_the_sum_of_the_mutually_projected_gradients(w) -> None:
    update, effective = aggregate(PCGrad(), {"a": w[0], "b": w[1]}, G1, G2)
    g1, g2 = w[0] * G1, w[1] * G2  # each term scaled by its configured weight
    expected = project(g1, g2) + project(g2, g1)
    torch.testing.assert_close(update, expected)
    assert update @ G1 > 0 or update @ G2 > 0
    # the logged weights reproduce the update on the raw gradients: sum_i w_i grad L_i
    torch.testing.assert_close(effective[0] * G1 + effective[1] * G2, expected)


def test_on_aligned_gradients_upgrad_averages_and_mgda_takes_the_smaller_one() -> None:
    upgrad, w_up = aggregate(UPGrad(), {"a": 1.0, "b": 1.0}, G1, 2 * G1)
    torch.testing.assert_close(upgrad, (G1 + 2 * G1) / 2)  # no conflict: nothing to project, the mean
    torch.testing.assert_close(w_up, torch.tensor([0.5, 0.5]))
    mgda, w_mgda = aggregate(MGDA(), {"a": 1.0, "b": 1.0}, G1, 2 * G1)
    torch.testing.assert_close(mgda, G1, atol=1e-3, rtol=1e-3)  # the minimum-norm point of the segment [G1, 2 G1]
    assert w_mgda[0] > 0.99 and w_mgda[1] < 0.01


def test_loss_total_is_the_configured_sum_not_the_logged_weights_times_the_terms() -> None:
    """What docs/weighting.md says `loss/total` is under a torchjd weighting: the terms times `loss.weights`,
    while `loss_weight/<term>` logs the weights the update gave them (here UPGrad's mean of two aligned terms)."""
    weighting = JacobianAggregation({"a": 1.0, "b": 3.0}, UPGrad())
    theta = nn.Parameter(torch.ones(3))
    losses = torch.stack([G1 @ theta, 2 * G1 @ theta])  # 2 and 4, aligned gradients
    total, _ = weighting(losses)
    effective = weighting.backward(total, losses, BackwardContext(shared=[theta]))
    torch.testing.assert_close(total, torch.tensor(1.0 * 2 + 3.0 * 4))
    torch.testing.assert_close(theta.grad, (G1 + 3 * 2 * G1) / 2)  # the mean of the scaled gradients
    torch.testing.assert_close(effective, torch.tensor([0.5, 1.5]))
    assert not torch.isclose((effective * losses).sum(), total)  # 7, not 14


def test_upgrad_never_conflicts_with_a_term() -> None:
    update, _ = aggregate(UPGrad(), {"a": 1.0, "b": 1.0}, G1, G2)
    assert update @ G1 >= -1e-6 and update @ G2 >= -1e-6


def test_each_terms_own_parameters_get_that_terms_gradient_and_zero_weights_are_left_out() -> None:
    theta = nn.Parameter(torch.zeros(3))
    own_a, own_b = nn.Parameter(torch.ones(2)), nn.Parameter(torch.ones(2))
    losses = torch.stack([G1 @ theta + own_a.pow(2).sum(), G2 @ theta + 3 * own_b.sum()])
    weighting = JacobianAggregation({"a": 0.5, "b": 2.0}, UPGrad())
    total, _ = weighting(losses)
    weighting.backward(total, losses, BackwardContext(shared=[theta], own={"a": [own_a], "b": [own_b]}))
    torch.testing.assert_close(own_a.grad, 0.5 * 2 * torch.ones(2))  # d(w_a L_a)/d own_a
    torch.testing.assert_close(own_b.grad, 2.0 * 3 * torch.ones(2))
    zero = JacobianAggregation({"a": 1.0, "b": 0.0}, MGDA())
    theta, losses = linear_terms(G1, G2)
    total, _ = zero(losses)
    effective = zero.backward(total, losses, BackwardContext(shared=[theta]))
    torch.testing.assert_close(theta.grad, G1)  # MGDA would stop at a zero row; a weight-0 term is not a row
    assert effective.tolist() == [1.0, 0.0]


def test_an_aggregator_config_that_is_not_torchjds_is_one_sentence() -> None:
    with pytest.raises(
        ConfigError,
        match=r"^aggregator=Linear\(.*\) is not valid \(it builds a Linear\): use a config that builds a "
        "torchjd.aggregation aggregator",
    ):
        JacobianAggregation({"a": 1.0}, nn.Linear(1, 1))


@pytest.mark.parametrize("weighting", [JacobianAggregation({"ce": 1.0}, UPGrad()), GradNorm({"ce": 1.0})])
def test_strategies_that_decide_in_one_process_are_refused_under_ddp(weighting) -> None:
    with pytest.raises(ConfigError, match="does not run under trainer.strategy=ddp: use trainer.strategy=single"):
        check_terms(Objective({}), weighting, [], ddp=True)
    check_terms(Objective({}), weighting, [], ddp=False)


def min_norm_point(gradients: torch.Tensor) -> torch.Tensor:
    """The exact minimum-norm point of the convex hull of the rows, in float64: for each subset of rows, the
    affine minimiser from the KKT system (Gramian, sum of coefficients 1); the best one with coefficients >= 0."""
    import itertools

    g64, best = gradients.double(), None
    for r in range(1, len(g64) + 1):
        for rows in itertools.combinations(range(len(g64)), r):
            g = g64[list(rows)]
            system = torch.zeros(r + 1, r + 1, dtype=torch.float64)
            system[:r, :r], system[:r, r], system[r, :r] = 2 * g @ g.T, 1.0, 1.0
            rhs = torch.zeros(r + 1, dtype=torch.float64)
            rhs[r] = 1.0
            coefficients = torch.linalg.lstsq(system, rhs).solution[:r]
            if (coefficients < -1e-12).any():
                continue
            point = coefficients @ g
            if best is None or point.norm() < best.norm():
                best = point
    assert best is not None
    return best


@pytest.mark.parametrize("rows", [2, 3])
def test_the_shipped_mgda_reaches_the_min_norm_point_on_conflicting_gradients(rows: int) -> None:
    from distillab.config import compose
    from distillab.instantiate import instantiate

    cfg = compose(["weighting=mgda", "loss=ce"])
    gradients = torch.stack([G1, G2, torch.tensor([0.5, -1.5, -0.5])])[:rows]  # pairwise conflicting
    names = [f"t{i}" for i in range(rows)]
    weighting = JacobianAggregation(dict.fromkeys(names, 1.0), instantiate(cfg.weighting.aggregator))
    theta = nn.Parameter(torch.zeros(3))
    losses = gradients @ theta
    total, _ = weighting(losses)
    weighting.backward(total, losses, BackwardContext(shared=[theta]))
    exact = min_norm_point(gradients)
    assert ((theta.grad.double() - exact).norm() / exact.norm()).item() < 1e-4
