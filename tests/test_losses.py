from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torchmetrics.functional.image import structural_similarity_index_measure

from distillab.build import build_objective
from distillab.config import compose
from distillab.losses import L1, MSE, SSIM, CrossEntropy
from distillab.objective import ModelOutput, Outputs


def outputs(out: torch.Tensor, targets: torch.Tensor) -> Outputs:
    return Outputs(inputs=out, targets=targets, student=ModelOutput(out))


def test_cross_entropy_matches_the_formula_with_label_smoothing() -> None:
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 3.0]])
    labels = torch.tensor([0, 2])
    eps, k = 0.1, 3
    log_p = logits - logits.logsumexp(1, keepdim=True)
    soft = torch.full_like(log_p, eps / k)
    soft[torch.arange(2), labels] += 1 - eps
    expected = -(soft * log_p).sum(1).mean()
    assert torch.allclose(CrossEntropy(label_smoothing=eps)(outputs(logits, labels)), expected)


def test_reconstruction_terms_match_their_definitions() -> None:
    torch.manual_seed(0)
    pred, clean = torch.rand(4, 1, 8, 8), torch.rand(4, 1, 8, 8)
    o = outputs(pred, clean)
    assert torch.allclose(L1()(o), (pred - clean).abs().mean())
    assert torch.allclose(MSE()(o), ((pred - clean) ** 2).mean())
    ssim = structural_similarity_index_measure(pred, clean, data_range=1.0, sigma=0.5)
    assert torch.allclose(SSIM(sigma=0.5)(o), 1 - ssim)
    assert SSIM(sigma=0.5)(outputs(clean, clean)).abs() < 1e-5  # a perfect reconstruction costs nothing


def test_ssim_window_follows_sigma_and_matches_the_written_out_formula() -> None:
    """torchmetrics' Gaussian SSIM ignores `kernel_size` (its window is 2 * int(3.5 sigma + 0.5) + 1): the
    window is set through sigma, and the denoising experiment's 8x8 digits use a 5-pixel one."""
    from tests.loss_references import reference

    torch.manual_seed(0)
    pred, clean = torch.rand(3, 1, 8, 8), torch.rand(3, 1, 8, 8)
    values = {sigma: SSIM(sigma=sigma)(outputs(pred, clean)).item() for sigma in (0.5, 1.0, 1.5)}
    assert len({round(v, 6) for v in values.values()}) == 3  # each sigma is another window
    for sigma, value in values.items():
        expected = reference(SSIM(sigma=sigma), outputs(pred.double(), clean.double()))
        assert value == pytest.approx(expected.item(), rel=1e-5)
    assert compose(["experiment=denoise"]).loss.terms.ssim.sigma == 0.5


@pytest.mark.parametrize("ssim_weight", [0.5, 2.0])
def test_combined_loss_is_the_configured_weighted_sum(ssim_weight: float, tmp_path: Path) -> None:
    cfg = compose(
        [
            "experiment=denoise",
            f"loss.weights.ssim={ssim_weight}",
            "loss.weights.l1=0.25",
            f"paths.output_dir={tmp_path}",
        ]
    )
    objective, weighting = build_objective(cfg)
    torch.manual_seed(1)
    pred, clean = torch.rand(4, 1, 8, 8), torch.rand(4, 1, 8, 8)
    o = outputs(pred, clean)
    losses = {n: objective[n](o) for n in weighting.names}
    total, weights = weighting(torch.stack([losses[n] for n in weighting.names]))

    l1 = (pred - clean).abs().mean()
    mse = ((pred - clean) ** 2).mean()
    one_minus_ssim = 1 - structural_similarity_index_measure(pred, clean, data_range=1.0, sigma=0.5)
    expected = 0.25 * l1 + 1.0 * mse + ssim_weight * one_minus_ssim
    assert math.isclose(total.item(), expected.item(), rel_tol=1e-6)
    assert dict(zip(weighting.names, weights.tolist())) == {"l1": 0.25, "mse": 1.0, "ssim": ssim_weight}


def test_focal_loss_matches_its_definition_reduces_to_cross_entropy_and_checks_alpha() -> None:
    from distillab.errors import ConfigError
    from distillab.losses import Focal
    from tests.loss_references import reference

    torch.manual_seed(3)
    logits, labels = 3 * torch.randn(6, 4), torch.tensor([0, 1, 2, 3, 0, 1])
    for gamma, alpha in ((2.0, None), (0.5, [0.25, 1.0, 2.0, 0.5])):
        term = Focal(gamma=gamma, alpha=alpha)
        term.setup(outputs(logits, labels))
        expected = reference(term, outputs(logits.double(), labels))
        assert term(outputs(logits, labels)).item() == pytest.approx(expected.item(), rel=1e-6)
    # by hand for one sample: p_y = softmax(z)_y, loss = -(1 - p_y)^2 log p_y
    z = torch.tensor([[2.0, 0.0, -1.0]])
    p = torch.softmax(z, 1)[0, 0].item()
    assert Focal(gamma=2.0)(outputs(z, torch.tensor([0]))).item() == pytest.approx(
        -((1 - p) ** 2) * math.log(p), rel=1e-6
    )
    assert torch.allclose(Focal(gamma=0.0)(outputs(logits, labels)), CrossEntropy()(outputs(logits, labels)), atol=1e-6)
    easy = 5 * torch.nn.functional.one_hot(labels, 4).float()  # confident and right: focal down-weights them
    assert Focal(gamma=2.0)(outputs(easy, labels)) < 1e-3 * CrossEntropy()(outputs(easy, labels))
    with pytest.raises(ConfigError, match=r"alpha=\[1\.0, 1\.0\] is not valid: use a list of 4 weights, one per class"):
        Focal(alpha=[1.0, 1.0]).setup(outputs(logits, labels))
    with pytest.raises(ConfigError, match=r"gamma=-1 is not valid"):
        Focal(gamma=-1)


@pytest.mark.parametrize("gamma", [0.0, 0.25, 0.5, 0.99, 1.0, 2.0])
def test_focal_loss_gradient_is_finite_and_exact_for_every_gamma_and_logit_lead(gamma: float) -> None:
    """0 < gamma < 1: `(1 - p)^gamma` has an infinite slope at p = 1, where float32's `1 - exp(log p)` rounds to 0
    at a logit lead of about 17; the value and gradient must stay finite and match float64 for every lead."""
    from distillab.losses import Focal

    labels = torch.tensor([0, 1])
    for lead in (0.0, 5.0, 17.0, 19.0, 21.0, 30.0, 120.0, 500.0):
        logits = torch.tensor([[lead, 0.0, -1.0], [0.5, lead, 0.0]], requires_grad=True)
        value = Focal(gamma=gamma)(outputs(logits, labels))
        (grad,) = torch.autograd.grad(value, logits)
        assert torch.isfinite(value) and torch.isfinite(grad).all(), (gamma, lead, grad)
        exact = logits.detach().double().requires_grad_(True)
        # float64, written out: log p_t = -log1p(sum_(j != t) exp(z_j - z_t)) (log_softmax's z_t - logsumexp(z)
        # would lose a 1e-13 log p_t to float64's spacing at 30); the ones with a lead of 500 underflow to 0 here too
        others = (exact - exact.gather(1, labels[:, None])).exp() * (1 - torch.nn.functional.one_hot(labels, 3))
        log_pt = -torch.log1p(others.sum(1))
        reference = (-((-torch.expm1(log_pt)) ** gamma) * log_pt).mean()
        (exact_grad,) = torch.autograd.grad(reference, exact)
        assert value.item() == pytest.approx(reference.item(), rel=1e-5, abs=1e-30), (gamma, lead)
        torch.testing.assert_close(grad.double(), torch.nan_to_num(exact_grad), rtol=1e-4, atol=1e-6)


def test_a_linear_projector_too_large_to_be_meant_is_refused_before_it_is_allocated() -> None:
    """65 x 192 tokens to 197 x 384 (a small ViT to a larger one) would be a layer of (65 * 192 + 1) * 197 * 384
    parameters: one sentence naming the size and max_parameters (the term names it projector.max_parameters); at
    the limit it is built."""
    import functools

    from distillab.errors import InvalidArgument
    from distillab.losses.features import build_projector
    from distillab.projectors import Linear

    with pytest.raises(
        InvalidArgument,
        match=r"^max_parameters=50000000 is not valid \(.* would have 944,162,688 parameters\): use a limit of at "
        "least 944,162,688",
    ):
        Linear((65, 192), (197, 384))
    assert sum(p.numel() for p in Linear((4, 3), (2, 5), max_parameters=130).parameters()) == (12 + 1) * 10
    with pytest.raises(InvalidArgument, match=r"^projector\.max_parameters=129 is not valid \(.* 130 parameters\)"):
        build_projector(functools.partial(Linear, max_parameters=129), (4, 3), (2, 5))


def test_per_class_and_per_teacher_weights_move_with_their_term_and_stay_out_of_checkpoints() -> None:
    """Focal's `alpha` and multi-teacher KD's `teacher_weights` are buffers: `.to(device)` of the objective puts
    them on the run's device once (a step copying them from the host would sync, and break `trainer.cuda_graph`),
    and state_dicts stay as they were (checkpoints written before load)."""
    from distillab.losses.logits import MultiTeacherKD
    from distillab.losses.task import Focal

    for term, name in (
        (Focal(alpha=[1.0, 2.0]), "alpha"),
        (MultiTeacherKD(teacher_weights=[1.0, 3.0]), "teacher_weights"),
    ):
        assert getattr(term.to("meta"), name).device.type == "meta", name
        assert name not in term.state_dict()
