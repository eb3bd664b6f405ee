from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from distillab.errors import ConfigError
from distillab.instantiate import instantiate
from distillab.weighting import (
    DWA,
    BackwardContext,
    Fixed,
    GradNorm,
    JacobianAggregation,
    Learnable,
    Scheduled,
    Staged,
    Uncertainty,
)
from distillab.weighting.epochwise import schedule_factor


def test_fixed_weights_multiply_and_never_change() -> None:
    weighting = Fixed({"a": 0.25, "b": 2.0})
    assert list(weighting.parameters()) == []  # nothing for an optimizer to move
    losses = torch.tensor([4.0, 3.0], requires_grad=True)
    total, weights = weighting(losses)
    assert total.item() == pytest.approx(0.25 * 4 + 2 * 3)
    total.backward()
    assert losses.grad.tolist() == [0.25, 2.0]
    assert weights.tolist() == [0.25, 2.0]


@pytest.mark.parametrize("bad", [-0.5, float("nan"), float("inf"), "heavy"])
def test_invalid_fixed_weight_is_refused_naming_the_term(bad) -> None:
    with pytest.raises(ConfigError, match=r"^weights\.kd=.* is not valid: use a number >= 0 and <= 1e6\.$"):
        Fixed({"ce": 1.0, "kd": bad})
    with pytest.raises(ConfigError, match=r"^teacher\.weighting\.weights\.kd=.* is not valid: use a number >= 0"):
        instantiate({"_target_": "distillab.weighting.Fixed", "weights": {"ce": 1.0, "kd": bad}}, "teacher.weighting")


def optimize(weighting: nn.Module, losses: torch.Tensor, steps: int, lr: float = 0.05) -> list[torch.Tensor]:
    """Minimise the weighting's total over its own parameters with the losses held constant."""
    optimizer = torch.optim.Adam(weighting.parameters(), lr=lr)
    history = []
    for _ in range(steps):
        total, weights = weighting(losses)
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
        history.append(weights.detach().clone())
    return history


def test_learnable_starts_at_the_configured_weights_in_log_space() -> None:
    weighting = Learnable({"ce": 0.5, "kd": 1.0})
    assert torch.allclose(weighting.log_weights.detach(), torch.tensor([math.log(0.5), 0.0]))
    _, weights = weighting(torch.tensor([1.0, 1.0]))
    assert torch.allclose(weights, torch.tensor([0.5, 1.0]))


def kkt_weights(configured: list[float], losses: list[float]) -> torch.Tensor:
    """The bounded form's optimum, solved independently: p_i = w0_i / (W L_i + lam) with sum p = 1 (bisection on
    lam, which makes the sum decrease), times W."""
    w0, loss, total = (
        torch.tensor(configured, dtype=torch.float64),
        torch.tensor(losses, dtype=torch.float64),
        sum(configured),
    )
    low, high = -total * float(loss.min()) + 1e-12, total * 10.0
    for _ in range(200):
        lam = (low + high) / 2
        low, high = (lam, high) if (w0 / (total * loss + lam)).sum() > 1 else (low, lam)
    return (total * w0 / (total * loss + lam)).float()


@pytest.mark.parametrize(
    ("configured", "losses"),
    [([1.0, 1.0], [0.0, 1.0]), ([0.1, 0.9], [0.0, 0.5]), ([1.0, 1.0, 0.5], [2.0, 0.5, 8.0]), ([0.5, 0.5], [1.0, 1.0])],
    ids=["a term at zero", "kd weights, ce at zero", "three terms", "equal losses"],
)
def test_learnable_weights_are_bounded_by_their_configured_total_when_a_term_goes_to_zero(
    configured: list[float], losses: list[float]
) -> None:
    names = [f"t{i}" for i in range(len(configured))]
    history = optimize(Learnable(dict(zip(names, configured))), torch.tensor(losses), steps=2000)
    total = sum(configured)
    assert all(((w > 0) & (w < total)).all() for w in history)  # bounded by construction, all along the way
    assert torch.allclose(history[-1], kkt_weights(configured, losses), rtol=0.01)
    assert history[-1].sum().item() == pytest.approx(total, rel=1e-5)
    if configured == [1.0, 1.0] and losses == [0.0, 1.0]:  # by hand: lam = sqrt 2
        assert torch.allclose(history[-1], torch.tensor([math.sqrt(2), 2 - math.sqrt(2)]), rtol=0.01)
    if losses == [1.0, 1.0]:  # equal losses keep the configured weights
        assert torch.allclose(history[-1], torch.tensor(configured), rtol=1e-3)
    if 0.0 in losses:  # what the bound prevents: the barrier form's weight runs to its clamp, exp(6)
        barrier = optimize(Learnable(dict(zip(names, configured)), form="barrier"), torch.tensor(losses), steps=500)
        assert barrier[-1].max().item() == pytest.approx(math.exp(6.0), rel=1e-3)


def test_the_barrier_form_settles_each_weighted_term_at_its_configured_weight() -> None:
    losses, configured = torch.tensor([0.5, 2.0, 8.0]), {"a": 0.1, "b": 0.9, "c": 1.0}
    history = optimize(Learnable(configured, form="barrier"), losses, steps=1500)
    w0 = torch.tensor(list(configured.values()))
    assert torch.allclose(history[-1], w0 / losses, rtol=0.02)  # minimum of exp(s) L - w0 s: w = w0 / L
    assert all((w > 0).all() and (w < 10).all() for w in history)  # positive and bounded throughout


def test_the_barrier_form_and_uncertainty_differ_by_what_the_weighted_terms_settle_at() -> None:
    """Same losses, same configured weights (KD's 0.1 / 0.9): learnable keeps the proportions
    (w L -> w0), uncertainty equalises every term (w L -> 1)."""
    losses, configured = torch.tensor([2.0, 0.5]), {"ce": 0.1, "kd": 0.9}
    learnable = optimize(Learnable(configured, log_weight_range=(-8, 8), form="barrier"), losses, steps=1500)[-1]
    uncertainty = optimize(Uncertainty(configured, log_weight_range=(-8, 8)), losses, steps=1500)[-1]
    assert torch.allclose(learnable * losses, torch.tensor([0.1, 0.9]), rtol=0.02)
    assert torch.allclose(uncertainty * losses, torch.ones(2), rtol=0.02)


def test_with_all_configured_weights_1_the_barrier_form_and_uncertainty_are_one_algorithm() -> None:
    """exp(s) L - s and exp(-u) L + u are the same objective under u = -s, and Adam's update is odd in
    the gradient: the weights follow identical trajectories (a sweep over the two compares a strategy with itself)."""
    losses = torch.tensor([0.7, 3.0])
    a = optimize(Learnable({"x": 1.0, "y": 1.0}, form="barrier"), losses, steps=200)
    b = optimize(Uncertainty({"x": 1.0, "y": 1.0}), losses, steps=200)
    assert all(torch.allclose(wa, wb, rtol=1e-5) for wa, wb in zip(a, b))


def test_the_bare_form_warns_and_collapses_towards_zero() -> None:
    with pytest.warns(UserWarning, match="collapses"):
        weighting = Learnable({"a": 1.0, "b": 1.0}, form="bare")
    history = optimize(weighting, torch.tensor([1.0, 2.0]), steps=400)
    assert (history[-1] < 0.05).all()  # it only stops at the clamp's lower bound, exp(-6)


def test_barrier_weights_are_clamped_when_a_term_reaches_zero() -> None:
    history = optimize(
        Learnable({"a": 1.0, "b": 1.0}, log_weight_range=(-2.0, 2.0), form="barrier"),
        torch.tensor([0.0, 1.0]),
        steps=300,
    )
    assert history[-1][0].item() == pytest.approx(math.exp(2.0))


def test_uncertainty_step_by_hand_and_optimum() -> None:
    weighting = Uncertainty({"a": 1.0, "b": 0.5})
    s = weighting.log_weights.detach()
    assert torch.allclose(s, torch.tensor([0.0, math.log(2.0)]))  # exp(-s) = initial weight
    losses = torch.tensor([3.0, 4.0])
    total, weights = weighting(losses)
    assert total.item() == pytest.approx(math.exp(-0.0) * 3 + 0 + math.exp(-math.log(2)) * 4 + math.log(2))
    assert torch.allclose(weights, torch.tensor([1.0, 0.5]))
    half = Uncertainty({"a": 1.0}, half=True)
    total, weights = half(torch.tensor([3.0]))
    s = half.log_weights.item()
    assert total.item() == pytest.approx(0.5 * math.exp(-s) * 3 + 0.5 * s) and weights.item() == pytest.approx(1.0)
    history = optimize(Uncertainty({"a": 1.0, "b": 1.0}), losses, steps=600)
    assert torch.allclose(history[-1], 1 / losses, rtol=0.02)


def test_dwa_one_epoch_by_hand() -> None:
    weighting = DWA({"a": 1.0, "b": 1.0}, temperature=2.0)
    weighting.on_epoch_end(0, {"loss/a": 4.0, "loss/b": 2.0})
    assert weighting(torch.tensor([1.0, 1.0]))[1].tolist() == [1.0, 1.0]  # needs two epochs of history
    weighting.on_epoch_end(1, {"loss/a": 2.0, "loss/b": 1.8})
    r = torch.tensor([2.0 / 4.0, 1.8 / 2.0])
    expected = 2 * torch.exp(r / 2) / torch.exp(r / 2).sum()
    total, weights = weighting(torch.tensor([3.0, 5.0]))
    assert torch.allclose(weights, expected) and total.item() == pytest.approx(
        (expected * torch.tensor([3.0, 5.0])).sum().item()
    )
    assert weights[1] > weights[0]  # the term that improves more slowly gets more weight


def test_staged_switches_at_the_first_epoch_that_crosses_the_threshold() -> None:
    stages = [
        {"weights": {"ce": 1.0}, "until": {"metric": "loss/ce", "below": 0.5}},
        {"weights": {"ce": 0.5, "kd": 0.5}},
    ]
    weighting = Staged({"ce": 0.5, "kd": 0.5}, stages)
    seen = []
    for epoch, ce in enumerate([0.9, 0.7, 0.49, 0.3, 0.8]):
        seen.append(weighting(torch.tensor([1.0, 1.0]))[1].tolist())
        weighting.on_epoch_end(epoch, {"loss/ce": ce, "loss/kd": 1.0})
    assert seen == [[1.0, 0.0]] * 3 + [[0.5, 0.5]] * 2  # switched after epoch 3, never back
    assert int(weighting.stage) == 1 and weighting.epoch_scalars() == {"weighting/stage": 1.0}


def test_staged_refuses_a_stage_without_a_condition() -> None:
    with pytest.raises(
        ConfigError, match=r"^stages\[0\]\.until=None is not valid: use a metric and exactly one number, below or above"
    ):
        Staged({"ce": 1.0}, [{"weights": {"ce": 1.0}}, {"weights": {"ce": 1.0}}])


def test_staged_checks_its_metric_against_what_the_task_reports_before_training() -> None:
    weighting = Staged(
        {"ce": 1.0},
        [{"weights": {"ce": 1.0}, "until": {"metric": "val/accuracy", "above": 80}}, {"weights": {"ce": 1.0}}],
    )
    with pytest.raises(
        ConfigError,
        match=r"^stages\[0\]\.until\.metric='val/accuracy' is not valid \(this run does not report it\): use one of "
        "val/acc, val/loss",
    ):
        weighting.check_metrics(["val/acc", "val/loss", "loss/ce"])


def test_a_schedule_without_any_term_is_refused_with_an_example() -> None:
    with pytest.raises(
        ConfigError,
        match=r"^schedules=\{\} is not valid \(it schedules no term\): use a mapping of loss terms to schedules, "
        r"e\.g\. \{kd: \{kind: linear, epochs: 20\}\}",
    ):
        Scheduled({"ce": 0.5, "kd": 0.5}, {})


def test_schedules_ramp_and_step() -> None:
    assert [schedule_factor({"kind": "linear", "epochs": 20}, e) for e in (1, 10, 20, 30)] == [0.05, 0.5, 1.0, 1.0]
    assert schedule_factor({"kind": "cosine", "epochs": 4}, 2) == pytest.approx(0.5)
    steps = {"kind": "steps", "steps": {3: 0.5, 6: 0.0}}
    assert [schedule_factor(steps, e) for e in (1, 3, 5, 6, 9)] == [1.0, 0.5, 0.5, 0.0, 0.0]
    weighting = Scheduled({"ce": 0.5, "kd": 0.5}, {"kd": {"kind": "linear", "epochs": 4}})
    assert weighting(torch.tensor([1.0, 1.0]))[1].tolist() == [0.5, 0.125]
    weighting.on_epoch_end(0, {})
    assert weighting(torch.tensor([1.0, 1.0]))[1].tolist() == [0.5, 0.25]


def _two_task_problem():
    """A shared layer feeding two heads whose losses differ in scale by 100x."""
    torch.manual_seed(0)
    shared, heads = nn.Linear(8, 8), nn.ModuleList([nn.Linear(8, 1), nn.Linear(8, 1)])
    x = torch.randn(64, 8)
    targets = [torch.randn(64, 1), 10 * torch.randn(64, 1)]
    model = nn.ModuleDict({"shared": shared, "heads": heads})

    def losses() -> torch.Tensor:
        h = torch.relu(shared(x))
        return torch.stack([nn.functional.mse_loss(head(h), t) for head, t in zip(heads, targets)])

    return model, losses


def _gradient_norm_ratio(weighting, steps: int = 150) -> float:
    model, losses = _two_task_problem()
    weighting.bind(nn.Sequential(model["shared"]))
    optimizer = torch.optim.Adam(
        [{"params": model.parameters(), "lr": 1e-2}, {"params": weighting.parameters(), "lr": 0.025}]
    )
    ratios = []
    for _ in range(steps):
        values = losses()
        total, w = weighting(values)
        norms = [
            torch.autograd.grad(w[i] * values[i], model["shared"].weight, retain_graph=True)[0].norm() for i in range(2)
        ]
        ratios.append((max(norms) / min(norms)).item())
        optimizer.zero_grad()
        weighting.backward(
            total, values, BackwardContext(shared=list(model.parameters()))
        )  # GradNorm's update is in its backward
        optimizer.step()
    return sum(ratios[-20:]) / 20


def test_gradnorm_brings_per_term_gradient_norms_closer_than_fixed_weights() -> None:
    fixed = _gradient_norm_ratio(Fixed({"a": 1.0, "b": 1.0}))
    gradnorm = GradNorm({"a": 1.0, "b": 1.0}, alpha=1.5)
    balanced = _gradient_norm_ratio(gradnorm)
    assert fixed > 20 and balanced < fixed / 4
    assert gradnorm.task_weights.sum().item() == pytest.approx(2.0, rel=0.05)  # renormalised to K
    assert gradnorm.task_weights[0] > gradnorm.task_weights[1]  # the small-gradient term is boosted


@pytest.mark.parametrize(
    "make",
    [
        lambda: Fixed({"a": 0.3, "b": 2.0}),
        lambda: Learnable({"a": 0.3, "b": 2.0}),
        lambda: Uncertainty({"a": 1.0, "b": 1.0}),
        lambda: GradNorm({"a": 1.0, "b": 1.0}),
    ],
    ids=["fixed", "learnable", "uncertainty", "gradnorm"],
)
def test_separate_backward_gives_the_joint_gradients(make) -> None:
    grads = []
    for mode in ("joint", "separate"):
        model, losses = _two_task_problem()
        weighting = make()
        weighting.bind(nn.Sequential(model["shared"]))
        values = losses()
        total, _ = weighting(values)
        weighting.backward(total, values, BackwardContext(shared=list(model.parameters()), separate=mode == "separate"))
        grads.append([p.grad.clone() for p in [*model.parameters(), *weighting.parameters()]])
    for joint, separate in zip(*grads):
        assert torch.allclose(joint, separate, atol=1e-6)


def _upgrad(weights):
    from torchjd.aggregation import UPGrad

    return JacobianAggregation(weights, UPGrad())


@pytest.mark.parametrize(
    "make",
    [
        lambda w: Fixed(w),
        lambda w: Learnable(w),
        lambda w: Uncertainty(w),
        lambda w: GradNorm(w),
        lambda w: DWA(w, temperature=2.0),
        lambda w: Scheduled(w, {"b": {"kind": "linear", "epochs": 4}}),
        lambda w: Staged(w, [{"weights": {"a": 1.0}, "until": {"metric": "loss/a", "above": 0}}, {"weights": w}]),
        _upgrad,
    ],
    ids=["fixed", "learnable", "uncertainty", "gradnorm", "dwa", "scheduled", "staged", "upgrad"],
)
def test_the_weights_a_step_returns_are_not_changed_by_later_steps(make) -> None:
    """The loop keeps each step's weights, as returned, until it sums what it logs (`Stage.record`): no
    strategy may hand out a view of weights it later moves in place (GradNorm's parameter, an epochwise
    strategy's buffer) or a tensor that keeps the step's graph."""
    model, losses = _two_task_problem()
    weighting = make({"a": 1.0, "b": 0.5})
    weighting.bind(nn.Sequential(model["shared"]))
    optimizer = torch.optim.Adam([*model.parameters(), *weighting.parameters()], lr=0.05)
    kept, copies, history = [], [], []
    for step in range(12):
        values = losses()
        total, w = weighting(values)
        applied = w.clone()  # the weights this step applied, copied before anything else runs
        optimizer.zero_grad()
        decided = weighting.backward(total, values, BackwardContext(shared=list(model.parameters())))
        used, saved = (w, applied) if decided is None else (decided, decided.clone())
        optimizer.step()
        assert not used.requires_grad
        kept.append(used)
        copies.append(saved)
        history.append(saved)
        if step % 4 == 3:  # an epoch's end: the loop has summed every kept record before this call
            for earlier, saved in zip(kept, copies):
                assert torch.equal(earlier, saved)
            kept, copies = [], []
            weighting.on_epoch_end(step // 4, {"loss/a": 1.0 + step, "loss/b": 2.0, "val/acc": 50.0})
    moved = any(not torch.equal(history[0], w) for w in history)
    assert moved != isinstance(weighting, Fixed)  # every other strategy's weights did move: the check above bites
