"""Each distillation loss against an independent computation on fixed tensors: value and gradient."""

from __future__ import annotations

import copy
import functools
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from distillab.errors import InvalidArgument
from distillab.losses import KD, AttentionTransfer, Cosine, FeatureMSE, MultiTeacherKD, SelfDistillation
from distillab.losses.features import build_projector
from distillab.objective import ModelOutput, Outputs
from distillab.projectors import Conv1x1, Conv3x3, Identity

torch.manual_seed(0)
STUDENT_LOGITS = torch.randn(6, 10)
TEACHER_LOGITS = 3 * torch.randn(6, 10)
UNDERFLOWING_TEACHER = torch.tensor([[400.0, 0.0, -400.0]])  # softmax(./4) has an exact 0


def outputs(student: torch.Tensor, teachers: list[torch.Tensor] = (), s_feats=None, t_feats=None) -> Outputs:
    teacher_outs = [ModelOutput(t, dict(t_feats or {}) if i == 0 else {}) for i, t in enumerate(teachers)]
    return Outputs(
        inputs=student,
        targets=torch.zeros(len(student), dtype=torch.long),
        student=ModelOutput(student, dict(s_feats or {})),
        teachers=teacher_outs,
    )


def value_and_grad(fn, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x = x.clone().requires_grad_(True)
    value = fn(x)
    (grad,) = torch.autograd.grad(value, x)
    return value.detach(), grad


@pytest.mark.parametrize("T", [1.0, 2.0, 4.0])
def test_kd_is_batchmean_kl_times_t_squared(T: float) -> None:
    def by_hand(s: torch.Tensor) -> torch.Tensor:
        p_t = torch.exp(TEACHER_LOGITS / T) / torch.exp(TEACHER_LOGITS / T).sum(1, keepdim=True)
        log_p_s = s / T - torch.log(torch.exp(s / T).sum(1, keepdim=True))
        return (p_t * (torch.log(p_t) - log_p_s)).sum() / s.shape[0] * T * T

    term = KD(temperature=T)
    value, grad = value_and_grad(lambda s: term(outputs(s, [TEACHER_LOGITS])), STUDENT_LOGITS)
    expected, expected_grad = value_and_grad(by_hand, STUDENT_LOGITS)
    assert torch.allclose(value, expected, atol=1e-6) and torch.allclose(grad, expected_grad, atol=1e-6)
    assert term(outputs(TEACHER_LOGITS, [TEACHER_LOGITS])).abs() < 1e-6  # same distribution: no loss


@pytest.mark.parametrize(
    "teacher, student",
    [
        (UNDERFLOWING_TEACHER, torch.tensor([[0.0, 1.0, 2.0]])),  # a batch of 1
        (3 * torch.randn(5, 7), 30 * torch.randn(5, 7)),  # a student far from its teacher
    ],
    ids=["underflowing-teacher-batch-of-1", "distant-student"],
)
def test_kd_equals_repdistillers_kl_div_of_probabilities_on_awkward_logits(
    teacher: torch.Tensor, student: torch.Tensor
) -> None:
    T = 4.0

    def repdistiller(s: torch.Tensor) -> torch.Tensor:  # DistillKL: kl_div(log p_s, p_t, size_average=False) T^2 / B
        return F.kl_div(F.log_softmax(s / T, 1), F.softmax(teacher / T, 1), reduction="sum") * T**2 / len(s)

    value, grad = value_and_grad(lambda s: KD(temperature=T)(outputs(s, [teacher])), student)
    expected, expected_grad = value_and_grad(repdistiller, student)
    assert torch.isfinite(value) and torch.isfinite(grad).all()  # p_t * log p_t written out would be NaN at p_t = 0
    assert torch.allclose(value, expected, rtol=1e-5) and torch.allclose(grad, expected_grad, atol=1e-6)
    low = KD(temperature=T)(outputs(student.bfloat16(), [teacher.bfloat16()]))  # float32 math on bf16 logits
    assert low.dtype == torch.float32
    assert torch.allclose(low, KD(temperature=T)(outputs(student.bfloat16().float(), [teacher.bfloat16().float()])))


def test_the_awkward_kd_case_has_a_teacher_probability_of_exactly_zero() -> None:
    assert (F.softmax(UNDERFLOWING_TEACHER / 4.0, 1) == 0).any()


def test_soft_ce_form_is_the_tutorials_code_and_has_the_kl_gradient() -> None:
    T = 2.0

    def tutorial(student_logits: torch.Tensor) -> torch.Tensor:  # PyTorch KD tutorial, verbatim in substance
        soft_targets = nn.functional.softmax(TEACHER_LOGITS / T, dim=-1)
        soft_prob = nn.functional.log_softmax(student_logits / T, dim=-1)
        return -torch.sum(soft_targets * soft_prob) / soft_prob.size()[0] * (T**2)

    soft_ce = KD(temperature=T, form="soft_ce")
    value, grad = value_and_grad(lambda s: soft_ce(outputs(s, [TEACHER_LOGITS])), STUDENT_LOGITS)
    expected, expected_grad = value_and_grad(tutorial, STUDENT_LOGITS)
    assert torch.allclose(value, expected, atol=1e-6) and torch.allclose(grad, expected_grad, atol=1e-6)
    kl_value, kl_grad = value_and_grad(lambda s: KD(temperature=T)(outputs(s, [TEACHER_LOGITS])), STUDENT_LOGITS)
    assert torch.allclose(grad, kl_grad, atol=1e-6)
    entropy = -(F.softmax(TEACHER_LOGITS / T, 1) * F.log_softmax(TEACHER_LOGITS / T, 1)).sum(1).mean() * T**2
    assert torch.allclose(value - kl_value, entropy, atol=1e-5)  # they differ by the teacher's entropy


def test_multi_teacher_kd_distils_the_weighted_mean_of_the_teachers_logits() -> None:
    other = torch.randn(6, 10)
    plain = MultiTeacherKD(temperature=2.0)(outputs(STUDENT_LOGITS, [TEACHER_LOGITS, other]))
    expected = KD(temperature=2.0)(outputs(STUDENT_LOGITS, [(TEACHER_LOGITS + other) / 2]))
    assert torch.allclose(plain, expected)
    weighted = MultiTeacherKD(temperature=2.0, teacher_weights=[3, 1])
    value = weighted(outputs(STUDENT_LOGITS, [TEACHER_LOGITS, other]))
    expected = KD(temperature=2.0)(outputs(STUDENT_LOGITS, [(3 * TEACHER_LOGITS + other) / 4]))
    assert torch.allclose(value, expected)


def test_cosine_matches_the_tutorials_pooled_cosine_embedding_loss() -> None:
    student_map, teacher_map = torch.randn(4, 16, 8, 8), torch.randn(4, 32, 8, 8)

    def tutorial(s: torch.Tensor) -> torch.Tensor:
        teacher_hidden = F.avg_pool1d(torch.flatten(teacher_map, 1), 2)  # ModifiedDeepNNCosine: 2048 -> 1024
        student_hidden = torch.flatten(s, 1)
        return nn.CosineEmbeddingLoss()(student_hidden, teacher_hidden, target=torch.ones(s.size(0)))

    term = Cosine(student_layer="features", teacher_layer="features")
    make = lambda s: outputs(torch.zeros(4, 10), [torch.zeros(4, 10)], {"features": s}, {"features": teacher_map})
    term.setup(make(student_map))
    assert term.pool_teacher == 2
    value, grad = value_and_grad(lambda s: term(make(s)), student_map)
    expected, expected_grad = value_and_grad(tutorial, student_map)
    assert torch.allclose(value, expected, atol=1e-6) and torch.allclose(grad, expected_grad, atol=1e-6)


def test_fitnet_with_conv3x3_is_the_tutorials_regressor_loss() -> None:
    student_map, teacher_map = torch.randn(4, 16, 8, 8), torch.randn(4, 32, 8, 8)
    term = FeatureMSE("features", "features", projector=Conv3x3)
    make = lambda s: outputs(torch.zeros(4, 10), [torch.zeros(4, 10)], {"features": s}, {"features": teacher_map})
    term.setup(make(student_map))
    (regressor,) = term.projectors
    conv = regressor.body
    assert (conv.in_channels, conv.out_channels, conv.kernel_size, conv.padding) == (16, 32, (3, 3), (1, 1))

    value, grad = value_and_grad(lambda s: term(make(s)), student_map)
    expected, expected_grad = value_and_grad(lambda s: nn.MSELoss()(conv(s), teacher_map), student_map)
    assert torch.allclose(value, expected) and torch.allclose(grad, expected_grad)


@pytest.mark.parametrize("sizes", [((8, 8), (8, 8)), ((8, 8), (4, 4)), ((8, 2), (4, 4)), ((3, 5), (6, 4))])
def test_attention_transfer_pools_the_features_to_the_smaller_size_per_dimension_then_forms_the_maps(sizes) -> None:
    """RepDistiller's and mdistiller's `at`: the larger *feature map* is pooled (per dimension: 8x2 and 4x4
    meet at 4x2), then squared, channel-averaged and normalised."""
    fs, ft = torch.randn(3, 16, *sizes[0]), torch.randn(3, 32, *sizes[1])
    common = tuple(min(a, b) for a, b in zip(sizes[0], sizes[1]))

    def at(f: torch.Tensor) -> torch.Tensor:
        a = F.adaptive_avg_pool2d(f, common).pow(2).mean(1).view(f.size(0), -1)
        return a / a.norm(p=2, dim=1, keepdim=True)

    def by_hand(s: torch.Tensor) -> torch.Tensor:
        return (at(s) - at(ft)).pow(2).mean()

    term = AttentionTransfer(["a"], ["b"])
    value, grad = value_and_grad(
        lambda s: term(outputs(torch.zeros(3, 10), [torch.zeros(3, 10)], {"a": s}, {"b": ft})), fs
    )
    expected, expected_grad = value_and_grad(by_hand, fs)
    assert torch.allclose(value, expected, atol=1e-7) and torch.allclose(grad, expected_grad, atol=1e-6)
    if sizes[0] != sizes[1]:  # pooling the attention maps instead gives another number

        def pooled_maps(f: torch.Tensor) -> torch.Tensor:
            return F.normalize(F.adaptive_avg_pool2d(f.pow(2).mean(1, keepdim=True), common).flatten(1), dim=1)

        other = (pooled_maps(fs) - pooled_maps(ft)).pow(2).mean()
        assert abs(other.item() - value.item()) > 0.05 * value.item()


def test_common_size_is_the_smaller_size_per_dimension() -> None:
    from distillab.losses.features import common_size, pool_to_common

    assert common_size((8, 2), (4, 4)) == (4, 2)  # not min() of the tuples, which would pick (4, 4)
    fs, ft = pool_to_common(torch.randn(2, 3, 8, 2), torch.randn(2, 5, 4, 4))
    assert fs.shape[2:] == ft.shape[2:] == (4, 2)
    same = torch.randn(2, 3, 4, 2)
    assert pool_to_common(same, torch.randn(2, 5, 6, 4))[0] is same  # a map already at the common size is not touched


def test_self_distillation_pulls_shallow_features_towards_a_detached_deep_one() -> None:
    shallow, deep = torch.randn(2, 8, 4, 4, requires_grad=True), torch.randn(2, 8, 2, 2, requires_grad=True)
    term = SelfDistillation(["s"], "d", projector=Conv1x1)
    o = outputs(torch.zeros(2, 10), s_feats={"s": shallow, "d": deep})
    term.setup(o)
    loss = term(o)
    expected = F.mse_loss(term.projectors[0].body(F.adaptive_avg_pool2d(shallow, (2, 2))), deep)
    assert torch.allclose(loss, expected)
    loss.backward()
    assert shallow.grad is not None and shallow.grad.abs().sum() > 0
    assert deep.grad is None  # the target is detached
    assert not term.needs_teacher


def test_identity_projector_refuses_shapes_it_cannot_bridge() -> None:

    with pytest.raises(
        InvalidArgument,
        match=r"^in_shape=\(16, 8, 8\) is not valid \(Identity cannot map .* \(16, 8, 8\) .* \(32, 8, 8\)\): use a "
        "learnable projector",
    ):
        Identity((16, 8, 8), (32, 8, 8))
    with pytest.raises(  # the term that calls it refuses its own `projector`: the shapes are its layers'
        InvalidArgument, match=r"^projector='Identity' is not valid \(Identity cannot map"
    ):
        build_projector(functools.partial(Identity), (16, 8, 8), (32, 8, 8))


def test_logit_standardization_makes_kd_and_dkd_blind_to_each_rows_scale_and_shift() -> None:
    """The z-score (Sun et al. 2024) removes each row's mean and range: a student whose logits are the teacher's
    times 3 plus 5 matches it exactly (loss 0) with the option, and not without it."""
    from distillab.losses import DKD, KD
    from distillab.objective import ModelOutput, Outputs

    g = torch.Generator().manual_seed(0)
    teacher = torch.randn(4, 10, generator=g, dtype=torch.float64)
    student = (teacher * 3 + 5).requires_grad_()
    targets = torch.tensor([1, 2, 3, 4])
    o = Outputs(inputs=teacher, targets=targets, student=ModelOutput(student, {}), teachers=[ModelOutput(teacher, {})])
    for term in (KD(2.0), DKD(9.0, 81.0, 4.0)):
        assert term(o) > 1e-3
    for term in (KD(2.0, logit_standardization=True), DKD(9.0, 81.0, 4.0, logit_standardization=True)):
        value = term(o)
        assert abs(value.item()) < 1e-10  # (the 1e-7 beside the std: not exactly 0)
        (grad,) = torch.autograd.grad(value, student)
        assert torch.isfinite(grad).all() and grad.abs().max() < 1e-6  # at the optimum: no pull
    one = Outputs(
        inputs=teacher[:1],
        targets=targets[:1],
        student=ModelOutput(student[:1], {}),
        teachers=[ModelOutput(teacher[:1] + 1, {})],
    )
    assert abs(KD(2.0, logit_standardization=True)(one).item()) < 1e-10  # a batch of one: a row's own statistics


@pytest.mark.parametrize("gap", [0.0, 30.0, 500.0])
def test_nkd_value_and_gradient_match_the_authors_loss_written_out_in_float64(gap: float) -> None:
    """NKD (Yang et al. 2023) against `tests/loss_references.py`'s row-by-row float64 NKDLoss: the same value and the
    same gradient on the student's logits, also when the label leads by 500 (the target column is removed, not
    masked with -1000)."""
    from distillab.losses import NKD
    from tests.loss_references import reference

    g = torch.Generator().manual_seed(int(gap))
    targets = torch.tensor([0, 3, 7])
    student = torch.randn(3, 10, generator=g, dtype=torch.float64)
    student[torch.arange(3), targets] += gap
    student.requires_grad_()
    teacher = torch.randn(3, 10, generator=g, dtype=torch.float64) * 3
    o = Outputs(inputs=teacher, targets=targets, student=ModelOutput(student, {}), teachers=[ModelOutput(teacher, {})])
    term = NKD(temperature=3.0, gamma=3.5)
    value, expected = term(o), reference(term, o)
    assert value.item() == pytest.approx(expected.item(), rel=1e-10)
    (grad,) = torch.autograd.grad(value, student)
    (expected_grad,) = torch.autograd.grad(expected, student)
    assert torch.isfinite(grad).all() and torch.allclose(grad, expected_grad, rtol=1e-9, atol=1e-12)


def awkward_logits(gap: float, batch: int = 3) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """float64 (student, teacher, targets): the label leads the student's other logits by `gap`."""
    g = torch.Generator().manual_seed(int(gap))
    targets = torch.tensor([0, 3, 7])[:batch]
    student = torch.randn(batch, 10, generator=g, dtype=torch.float64)
    student[torch.arange(batch), targets] += gap
    teacher = torch.randn(batch, 10, generator=g, dtype=torch.float64) * 3
    teacher[torch.arange(batch), targets] += gap
    return student.requires_grad_(), teacher, targets


@pytest.mark.parametrize("gap", [0.0, 30.0, 500.0])
@pytest.mark.parametrize("name", ["TTM", "WTTM"])
def test_ttm_and_wttm_value_and_gradient_match_the_authors_loss_in_float64(name: str, gap: float) -> None:
    """TTM/WTTM (Zheng & Yang 2024) against `tests/loss_references.py`'s float64 `pow(softmax(t), l)` form, with the
    teacher's label ahead by 0, 30 and 500 (at 500 a float32 softmax would underflow; float64 does not)."""
    import distillab.losses
    from tests.loss_references import reference

    student, teacher, targets = awkward_logits(gap)
    o = Outputs(inputs=teacher, targets=targets, student=ModelOutput(student, {}), teachers=[ModelOutput(teacher, {})])
    term = getattr(distillab.losses, name)(exponent=0.2)
    value, expected = term(o), reference(term, o)
    assert value.item() == pytest.approx(expected.item(), rel=1e-9, abs=1e-12)
    (grad,) = torch.autograd.grad(value, student)
    (expected_grad,) = torch.autograd.grad(expected, student)
    assert torch.isfinite(grad).all() and torch.allclose(grad, expected_grad, rtol=1e-8, atol=1e-12)


def test_ttm_at_exponent_one_is_kd_at_temperature_one_and_wttm_weighs_by_the_power_sum() -> None:
    """gamma = 1 leaves the teacher as it is: TTM is then Hinton KD at T 1. WTTM on a batch whose rows share one
    teacher is TTM times that row's power sum sum_i p_i^gamma, written out here."""
    from distillab.losses import TTM, WTTM

    assert TTM(exponent=1.0)(outputs(STUDENT_LOGITS, [TEACHER_LOGITS])).item() == pytest.approx(
        KD(temperature=1.0)(outputs(STUDENT_LOGITS, [TEACHER_LOGITS])).item(), rel=1e-5
    )
    teacher = TEACHER_LOGITS[:1].expand(6, -1)
    power_sum = (torch.softmax(teacher[0].double(), 0) ** 0.3).sum().item()
    ttm, wttm = TTM(0.3)(outputs(STUDENT_LOGITS, [teacher])), WTTM(0.3)(outputs(STUDENT_LOGITS, [teacher]))
    assert wttm.item() == pytest.approx(power_sum * ttm.item(), rel=1e-5) and power_sum > 1


@pytest.mark.parametrize("gap", [0.0, 30.0, 500.0])
def test_ctkd_is_kd_at_its_learned_temperature_and_reverses_the_temperatures_gradient(gap: float) -> None:
    """CTKD (Li et al. 2023): the value is the authors' DistillKL at T = 1 + 20 sigmoid(theta) (float64 reference);
    the student's gradient is KD's; theta's gradient is -strength times the gradient of the same loss without the
    reversal layer (written here as KD of a temperature computed from theta directly)."""
    from distillab.losses import CTKD
    from distillab.losses.logits import hinton_kd
    from tests.loss_references import reference

    student, teacher, targets = awkward_logits(gap, batch=2)
    o = Outputs(inputs=teacher, targets=targets, student=ModelOutput(student, {}), teachers=[ModelOutput(teacher, {})])
    term = CTKD().double()
    term.set_epoch(3)
    value, expected = term(o), reference(term, o)
    assert value.item() == pytest.approx(expected.item(), rel=1e-9)
    grad_s, grad_theta = torch.autograd.grad(value, [student, term.theta])
    (expected_s,) = torch.autograd.grad(expected, student)
    assert torch.allclose(grad_s, expected_s, rtol=1e-8, atol=1e-12)
    theta = term.theta.detach().clone().requires_grad_()
    (plain,) = torch.autograd.grad(hinton_kd(student.detach(), teacher, 1 + 20 * torch.sigmoid(theta)), theta)
    assert term.strength == pytest.approx((1 - math.cos(math.pi * 4 / 10)) / 2)
    assert grad_theta.item() == pytest.approx(-term.strength * plain.item(), rel=1e-9, abs=1e-15)
    assert gap > 0 or plain.abs().item() > 1e-6  # the reversal is seen acting (where the loss depends on T)


def test_ctkd_curriculum_is_the_authors_cosine_decay_read_from_epoch_one() -> None:
    """zhengli97/CTKD's CosineDecay(max 0, min -1, loops 10).get_value(i), i = 1, 2, ... the epoch counted from 1,
    written out; distillab's strength is minus that value (its backward multiplies by -strength)."""
    from distillab.losses import CTKD

    def authors(i: int, loops: int = 10) -> float:
        i = min(max(i, 0), loops)
        return (math.cos(i * math.pi / loops) + 1.0) * 0.5 * (0 - (-1)) + (-1)

    term = CTKD()
    for epoch in range(14):
        term.set_epoch(epoch)
        assert term.strength == pytest.approx(-authors(epoch + 1), abs=1e-12)
    assert CTKD().strength == pytest.approx(-authors(1))  # before the first set_epoch (the dry run)


def test_ctkd_trains_its_temperature_through_the_run_and_logs_it(tmp_path) -> None:
    """In a run, the loop sets the curriculum each epoch (the term ends at the last epoch's strength), the run's
    optimizer moves theta (it is a parameter of the objective), and TensorBoard gets temperature/ctkd at every
    log point, starting near the authors' initial 1 + 20 sigmoid(1)."""
    from distillab.losses.logits import ctkd_strength
    from tests.conftest import fit_in_process, scalars

    exp, result, run_dir = fit_in_process(tmp_path, ["loss=ctkd", "trainer.max_epochs=3", "trainer.log_every=1"])
    term = exp.objective["ctkd"]
    assert term.strength == ctkd_strength(2, 10, 1.0) and term.theta.item() != 1.0
    temps = scalars(run_dir)["temperature/ctkd"]
    assert len(temps) == result.steps and abs(temps[0] - (1 + 20 * torch.sigmoid(torch.tensor(1.0)).item())) < 0.05
    assert temps[-1] == pytest.approx(term.temperature().item(), rel=1e-6)


def cifar_pair() -> tuple[nn.Module, nn.Module, torch.Tensor]:
    from distillab.models import resnet
    from distillab.teacher import freeze

    torch.manual_seed(0)
    return resnet(depth=8, num_classes=10), freeze(resnet(depth=14, num_classes=10)), torch.randn(3, 3, 32, 32)


def test_catkd_compares_the_class_activation_maps_the_authors_networks_compute() -> None:
    """CAT-KD on two CIFAR ResNets: the value is the MSE of 2x2-pooled CAMs, each computed here as the authors'
    `_test` networks do (the classifier's weight as a bias-free 1x1 conv over the full 8x8 map, then pooling);
    the student's classifier and its layers learn from it, the frozen teacher does not; a student equal to its
    teacher has no loss."""
    from distillab.experiment import forward_pass
    from distillab.losses import ClassAttentionTransfer
    from distillab.taps import FeatureTaps

    student, teacher, x = cifar_pair()
    term = ClassAttentionTransfer("layer3", "layer3", resolution=2)
    term.bind_models(student, [teacher])
    s_taps, t_taps = FeatureTaps(student, ["layer3"]), FeatureTaps(teacher, ["layer3"])
    o = forward_pass(student, s_taps, [teacher], [t_taps], x, torch.zeros(3, dtype=torch.long))
    term.setup(o)
    value = term(o)

    def authors_cams(net: nn.Module, feature: torch.Tensor) -> torch.Tensor:
        full = F.conv2d(feature, net.fc.weight[:, :, None, None])  # (B, 10, 8, 8): ResNet_test's conv_test
        return F.adaptive_avg_pool2d(full, (2, 2))

    expected = F.mse_loss(
        authors_cams(student, o.student.features["layer3"]), authors_cams(teacher, o.teacher.features["layer3"])
    )
    assert o.student.features["layer3"].shape[2:] == (8, 8)
    assert value.item() == pytest.approx(expected.item(), rel=1e-5) and value.item() > 0
    value.backward()
    assert student.fc.weight.grad.abs().sum() > 0 and student.conv1.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in teacher.parameters())
    twin = copy.deepcopy(teacher)
    same = ClassAttentionTransfer("layer3", "layer3")
    same.bind_models(twin, [teacher])
    tw_taps = FeatureTaps(twin, ["layer3"])
    o2 = forward_pass(twin, tw_taps, [teacher], [t_taps], x, torch.zeros(3, dtype=torch.long))
    assert same(o2).item() < 1e-10


def test_catkd_names_a_classifier_it_cannot_use_and_a_map_that_does_not_feed_it() -> None:
    from distillab.errors import ConfigError
    from distillab.experiment import forward_pass
    from distillab.losses import ClassAttentionTransfer
    from distillab.taps import FeatureTaps

    student, teacher, x = cifar_pair()
    with pytest.raises(ConfigError, match=r"student_classifier='layer3' is not valid: use the module path of the "):
        ClassAttentionTransfer("layer3", "layer3", student_classifier="layer3").bind_models(student, [teacher])
    term = ClassAttentionTransfer("layer2", "layer3")  # layer2 has 32 channels, the classifier takes 64
    term.bind_models(student, [teacher])
    o = forward_pass(
        student, FeatureTaps(student, ["layer2"]), [teacher], [FeatureTaps(teacher, ["layer3"])], x, torch.zeros(3)
    )
    with pytest.raises(
        ConfigError,
        match=r"student_layer='layer2' is not valid: use the \(C, H, W\) map .*C = 64; this one gives \(32, 16, 16\)",
    ):
        term.setup(o)
