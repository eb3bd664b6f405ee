"""The CRD benchmark on CIFAR-100: models against published parameter counts, losses (DKD, DIST, SP, PKT,
RKD, NST, VID, CC) against independent computations of their papers' formulas, reproduction configs against the
recipe."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from distillab.config import compose, config_dir
from distillab.instantiate import instantiate
from distillab.losses import CC, VID
from distillab.losses.features import neuron_selectivity_transfer
from distillab.losses.logits import dist_loss, dkd
from distillab.losses.relational import (
    correlation_congruence,
    probabilistic_transfer,
    relational_kd,
    similarity_preserving,
)
from distillab.objective import ModelOutput, Outputs
from distillab.taps import FeatureTaps

CONF = config_dir()

MODELS = [
    "resnet8",
    "resnet14",
    "resnet20",
    "resnet32",
    "resnet44",
    "resnet56",
    "resnet110",
    "resnet8x4",
    "resnet32x4",
    "resnet50",
    "wrn_16_2",
    "wrn_40_1",
    "wrn_40_2",
    "vgg8",
    "vgg13",
    "mobilenetv2",
    "shufflenetv1",
    "shufflenetv2",
]
# Parameter counts (millions, 100 classes) as published in the CRD paper's model table.
PUBLISHED_M = {
    "resnet20": 0.28,
    "resnet32": 0.47,
    "resnet56": 0.86,
    "resnet110": 1.73,
    "resnet8x4": 1.23,
    "resnet32x4": 7.43,
    "resnet50": 23.71,
    "wrn_16_2": 0.70,
    "wrn_40_1": 0.57,
    "wrn_40_2": 2.26,
    "vgg8": 3.96,
    "vgg13": 9.46,
    "mobilenetv2": 0.81,
    "shufflenetv1": 0.95,
    "shufflenetv2": 1.35,
}
# Stage outputs (the YAML files name them) and their sizes for a 32x32 input; the longest matching prefix wins.
STAGES = {
    "resnet": (["layer1", "layer2", "layer3"], [32, 16, 8]),
    "resnet50": (["layer1", "layer2", "layer3", "layer4"], [32, 16, 8, 4]),
    "wrn": (["block1", "block2", "block3"], [32, 16, 8]),
    "vgg": ([f"block{i}" for i in range(5)], [32, 16, 8, 4, 4]),
    "mobilenetv2": (["blocks.1", "blocks.2", "blocks.4", "blocks.6"], [16, 8, 4, 2]),
    "shufflenetv1": (["layer1", "layer2", "layer3"], [16, 8, 4]),
    "shufflenetv2": (["layer1", "layer2", "layer3"], [16, 8, 4]),
}


@pytest.mark.parametrize("name", MODELS)
def test_model_parameter_count_output_and_stage_taps(name: str) -> None:
    cfg = compose(["data=synthetic", "data.num_classes=100", f"model/student={name}"])
    model = instantiate(cfg.model.student)
    if name in PUBLISHED_M:  # published to 2 decimals
        assert sum(p.numel() for p in model.parameters()) / 1e6 == pytest.approx(PUBLISHED_M[name], abs=0.01)
    stages, sizes = STAGES[max((k for k in STAGES if name.startswith(k)), key=len)]
    assert all(path in (CONF / "model" / f"{name}.yaml").read_text() for path in stages)
    taps = FeatureTaps(model, [*stages, "avgpool"])
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 100)
    features = taps.pop()
    assert [features[s].shape[-1] for s in stages] == sizes
    classifier = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1]
    assert features["avgpool"].flatten(1).shape == (2, classifier.in_features)  # the embedding the classifier reads


@pytest.mark.parametrize("name", ["resnet8x4", "resnet32x4"])
def test_resnet_preact_taps_give_the_stage_output_before_its_last_relu(name: str) -> None:
    cfg = compose(["data=synthetic", "data.num_classes=100", f"model/student={name}"])
    model = instantiate(cfg.model.student).eval()
    stages = ["layer1", "layer2", "layer3"]
    preacts = [f"{stage}.{len(getattr(model, stage)) - 1}.preact" for stage in stages]  # the last block of each stage
    assert all(path in (CONF / "model" / f"{name}.yaml").read_text() for path in preacts)
    taps = FeatureTaps(model, [*stages, *preacts])
    with torch.no_grad():
        model(torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)))
    features = taps.pop()
    for stage, preact in zip(stages, preacts):
        assert (features[preact] < 0).any()  # really before the ReLU (and not overwritten by an in-place one)
        assert torch.equal(torch.relu(features[preact]), features[stage])


def test_wrn_preact_taps_are_the_next_batchnorm_before_its_relu_as_repdistillers_features() -> None:
    """RepDistiller's WRN with preact=True: block2.layer[0].bn1(f1), block3.layer[0].bn1(f2), bn1(f3)."""
    model = instantiate(
        compose(["data=synthetic", "data.num_classes=100", "model/student=wrn_16_2"]).model.student
    ).eval()
    paths = ["block1", "block2", "block3", "block2.0.preact", "block3.0.preact", "preact"]
    assert all(p in (CONF / "model" / "wrn_16_2.yaml").read_text() for p in paths[3:])
    taps = FeatureTaps(model, paths)
    with torch.no_grad():
        model(torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)))
        f = taps.pop()
        expected = [model.block2[0].bn1(f["block1"]), model.block3[0].bn1(f["block2"]), model.bn1(f["block3"])]
    for path, value in zip(paths[3:], expected):
        assert (f[path] < 0).any() and torch.equal(f[path], value), path  # not overwritten by an in-place ReLU


@pytest.mark.parametrize("name", ["vgg8", "vgg13"])
def test_vgg_preact_taps_are_each_block_before_its_last_relu(name: str) -> None:
    model = instantiate(
        compose(["data=synthetic", "data.num_classes=100", f"model/student={name}"]).model.student
    ).eval()
    blocks = [f"block{i}" for i in range(5)]
    taps = FeatureTaps(model, [*blocks, *(f"{b}.preact" for b in blocks)])
    with torch.no_grad():
        model(torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)))
    f = taps.pop()
    for b in blocks:
        assert (f[f"{b}.preact"] < 0).any() and torch.equal(torch.relu(f[f"{b}.preact"]), f[b]), b


def dkd_by_hand(s: np.ndarray, t: np.ndarray, y: np.ndarray, alpha: float, beta: float, T: float) -> float:
    """The paper's definitions, sample by sample: binary (target vs rest) KL and KL over the other classes."""

    def softmax(z):
        e = np.exp(z - z.max())
        return e / e.sum()

    total = 0.0
    for si, ti, yi in zip(s, t, y):
        ps, pt = softmax(si / T), softmax(ti / T)
        bs, bt = np.array([ps[yi], 1 - ps[yi]]), np.array([pt[yi], 1 - pt[yi]])
        others = np.arange(len(si)) != yi
        qs, qt = ps[others] / ps[others].sum(), pt[others] / pt[others].sum()
        total += alpha * np.sum(bt * np.log(bt / bs)) + beta * np.sum(qt * np.log(qt / qs))
    return total / len(s) * T**2


def test_dkd_matches_its_definition_and_vanishes_when_student_equals_teacher() -> None:
    g = torch.Generator().manual_seed(0)
    s, t, y = (
        torch.randn(6, 5, generator=g, dtype=torch.float64),
        2 * torch.randn(6, 5, generator=g, dtype=torch.float64),
        torch.tensor([0, 1, 2, 3, 4, 0]),
    )
    for alpha, beta, T in ((1.0, 8.0, 4.0), (0.5, 2.0, 1.0)):
        expected = dkd_by_hand(s.numpy(), t.numpy(), y.numpy(), alpha, beta, T)
        assert dkd(s, t, y, alpha, beta, T).item() == pytest.approx(expected, rel=1e-9)
    assert dkd(t, t, y, 1.0, 8.0, 4.0).item() == pytest.approx(0.0, abs=1e-12)
    # gradient: central differences of the definition
    s.requires_grad_(True)
    (grad,) = torch.autograd.grad(dkd(s, t, y, 1.0, 8.0, 4.0), s)
    i, j, h = 2, 3, 1e-6
    bumped = [s.detach().numpy().copy() for _ in range(2)]
    bumped[0][i, j] += h
    bumped[1][i, j] -= h
    numeric = (
        dkd_by_hand(bumped[0], t.numpy(), y.numpy(), 1.0, 8.0, 4.0)
        - dkd_by_hand(bumped[1], t.numpy(), y.numpy(), 1.0, 8.0, 4.0)
    ) / (2 * h)
    assert grad[i, j].item() == pytest.approx(numeric, rel=1e-5)


@pytest.mark.parametrize("lead", [130.0, 500.0])
def test_dkd_is_exact_when_the_students_target_logit_leads_by_far(lead: float) -> None:
    """At T=4 with 100 classes a lead of ~130 drives 1 - p_target below 1e-12: a clamp there saturates
    (value ~0.23 of the true one at 500, gradient 0 on the target logit). In log space it stays exact."""
    from distillab.losses import DKD
    from distillab.objective import ModelOutput, Outputs
    from tests.loss_references import reference

    g = torch.Generator().manual_seed(int(lead))
    y = torch.tensor([3, 41, 99])
    s, t = torch.randn(3, 100, generator=g), 2 * torch.randn(3, 100, generator=g)
    s[torch.arange(3), y] = s.max() + lead

    def outputs(student: torch.Tensor, teacher: torch.Tensor) -> Outputs:
        return Outputs(inputs=student, targets=y, student=ModelOutput(student), teachers=[ModelOutput(teacher)])

    term = DKD(alpha=1.0, beta=8.0, temperature=4.0)
    s32, s64 = s.clone().requires_grad_(True), s.double().requires_grad_(True)
    value, exact = term(outputs(s32, t)), reference(term, outputs(s64, t.double()))
    assert value.item() == pytest.approx(exact.item(), rel=1e-5)
    (grad,), (exact_grad,) = torch.autograd.grad(value, s32), torch.autograd.grad(exact, s64)
    target_grad = grad[torch.arange(3), y]
    assert (target_grad.abs() > 1e-3).all()  # the target logit is pushed back towards the teacher
    torch.testing.assert_close(target_grad.double(), exact_grad[torch.arange(3), y], rtol=1e-4, atol=1e-6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        half = term(outputs(s.bfloat16(), t.bfloat16()))
    assert torch.isfinite(half) and half.item() == pytest.approx(exact.item(), rel=0.05)


def test_dist_matches_pearson_correlations_from_numpy() -> None:
    g = torch.Generator().manual_seed(1)
    s, t = torch.randn(8, 6, generator=g, dtype=torch.float64), torch.randn(8, 6, generator=g, dtype=torch.float64)
    T, beta, gamma = 4.0, 2.0, 3.0
    ps, pt = torch.softmax(s / T, 1).numpy(), torch.softmax(t / T, 1).numpy()
    inter = np.mean([np.corrcoef(ps[i], pt[i])[0, 1] for i in range(8)])  # per sample, over classes
    intra = np.mean([np.corrcoef(ps[:, c], pt[:, c])[0, 1] for c in range(6)])  # per class, over the batch
    expected = T**2 * (beta * (1 - inter) + gamma * (1 - intra))
    assert dist_loss(s, t, beta, gamma, T).item() == pytest.approx(expected, rel=1e-6)
    assert dist_loss(t, t, 1.0, 1.0, 1.0).item() == pytest.approx(0.0, abs=1e-6)
    # Pearson is invariant to shifting logits per sample (softmax is): the loss is too
    assert dist_loss(s + 3.0, t, beta, gamma, T).item() == pytest.approx(expected, rel=1e-6)


def smooth_l1(a: np.ndarray, b: np.ndarray) -> float:
    d = np.abs(a - b)
    return float(np.mean(np.where(d < 1, 0.5 * d**2, d - 0.5)))


def test_sp_pkt_and_rkd_match_their_definitions_sample_by_sample() -> None:
    g = torch.Generator().manual_seed(2)
    fs, ft = (
        torch.randn(5, 4, 2, 2, generator=g, dtype=torch.float64),
        torch.randn(5, 7, generator=g, dtype=torch.float64),
    )
    s, t, B = fs.reshape(5, -1).numpy(), ft.numpy(), 5

    def rownorm(m):
        return m / np.linalg.norm(m, axis=1, keepdims=True)

    sp = np.sum((rownorm(t @ t.T) - rownorm(s @ s.T)) ** 2) / B**2
    assert similarity_preserving(fs, ft).item() == pytest.approx(sp, rel=1e-9)

    def conditional(f):
        f = f / (np.linalg.norm(f, axis=1, keepdims=True) + 1e-7)
        k = (f @ f.T + 1) / 2
        return k / k.sum(1, keepdims=True)

    ps, pt = conditional(s), conditional(t)
    pkt = np.mean(pt * np.log((pt + 1e-7) / (ps + 1e-7)))
    assert probabilistic_transfer(fs, ft).item() == pytest.approx(pkt, rel=1e-9)

    def distances(f):
        d = np.array([[np.linalg.norm(f[i] - f[j]) for j in range(B)] for i in range(B)])
        return d / d[~np.eye(B, dtype=bool)].mean()

    def angles(f):
        out = np.zeros((B, B, B))
        for i in range(B):
            for j in range(B):
                for k in range(B):
                    if i not in (j, k):
                        u, v = f[j] - f[i], f[k] - f[i]
                        out[i, j, k] = u @ v / (np.linalg.norm(u) * np.linalg.norm(v))
        return out

    rkd = 25 * smooth_l1(distances(s), distances(t)) + 50 * smooth_l1(angles(s), angles(t))
    assert relational_kd(fs, ft, 25.0, 50.0).item() == pytest.approx(rkd, rel=1e-7)
    # relations do not change when the whole embedding is scaled (distances are mean-normalised)
    assert relational_kd(3 * fs, ft, 25.0, 50.0).item() == pytest.approx(rkd, rel=1e-7)
    assert relational_kd(ft, ft, 25.0, 50.0).item() == pytest.approx(0.0, abs=1e-12)


# Each method's published weights (CRD's RepDistiller runs; DKD's and ReviewKD's first epoch is 1/20 of their warm-up).
PUBLISHED_WEIGHTS = {
    "ce": {"ce": 1.0},
    "kd": {"ce": 0.1, "kd": 0.9},
    "fitnet": {"ce": 1.0, "fitnet": 100.0},
    "at": {"ce": 1.0, "at": 1000.0},
    "sp": {"ce": 1.0, "sp": 3000.0},
    "pkt": {"ce": 1.0, "pkt": 30000.0},
    "rkd": {"ce": 1.0, "rkd": 1.0},
    "dkd": {"ce": 1.0, "dkd": 1.0 / 20},
    "dist": {"ce": 1.0, "dist": 2.0},
    "nst": {"ce": 1.0, "nst": 50.0},
    "vid": {"ce": 1.0, "vid": 1.0},
    "cc": {"ce": 1.0, "cc": 0.02},
    "crd": {"ce": 1.0, "crd": 0.8},
    "fsp": {"ce": 1.0, "fsp": 0.0},
    "ab": {"ce": 1.0, "ab": 0.0},
    "ft": {"ce": 1.0, "ft": 200.0},
    "reviewkd": {"ce": 1.0, "reviewkd": 5.0 / 20},  # ReviewKD's weight 5 for this pair, first epoch of its warm-up
    "kd_ls": {"ce": 0.1, "kd": 9.0},  # logit standardization's CE 0.1 + KD 9
    "dkd_ls": {"ce": 1.0, "dkd": 1.0 / 20},  # (alpha 9 and beta 81 are inside the term)
    "nkd": {"ce": 1.0, "nkd": 1.0},
    "ctkd": {"ce": 0.1, "ctkd": 0.9},
    "ttm": {"ce": 1.0, "ttm": 45.0},
    "wttm": {"ce": 1.0, "wttm": 45.0},
    "catkd": {"ce": 1.0, "catkd": 15.0},
    "dot": {"ce": 0.1, "kd": 0.9},  # (the momenta are the weighting's)
    "simkd": {"simkd": 1.0},
    "mlkd": {"ce": 0.2, "mlkd": 0.9},  # CE 0.1 on each view: 0.2 on their mean
    "mlkd_weak": {"ce": 0.2, "mlkd": 0.9},
}
INIT_STAGED = {"fsp", "ab", "ft"}  # their 30-epoch init stage is cut to one epoch here


def test_every_method_of_the_pair_has_a_reproduction_config() -> None:
    folder = CONF / "experiment" / "cifar100" / "resnet32x4_resnet8x4"
    assert sorted(p.stem for p in folder.glob("*.yaml")) == sorted(PUBLISHED_WEIGHTS)


@pytest.mark.parametrize("method", sorted(PUBLISHED_WEIGHTS))
def test_reproduction_config_runs_on_synthetic_cifar_with_the_published_recipe(method: str, tiny_run) -> None:
    metrics, _ = tiny_run(
        f"experiment=cifar100/resnet32x4_resnet8x4/{method}",
        "data=synthetic",
        "data.num_train=64",
        "data.num_val=32",
        "data.batch_size=32",
        "trainer.max_epochs=1",
        *(["loss.init_epochs=1"] if method in INIT_STAGED else []),
    )
    assert metrics["status"] == "completed" and metrics["steps"] == 2
    assert metrics["final_weights"] == pytest.approx(PUBLISHED_WEIGHTS[method])
    recipe = compose([f"experiment=cifar100/resnet32x4_resnet8x4/{method}"])
    keeper = recipe.weighting if method == "dot" else recipe.optim  # DOT keeps the momenta and the decay itself
    assert (
        recipe.optim.lr,
        keeper.momentum,
        keeper.weight_decay,
        recipe.data.batch_size,
        recipe.trainer.max_epochs,
    ) == (0.025 if method.startswith("mlkd") else 0.05, 0.9, 5e-4, 64, 240)  # MLKD's own lr
    assert (
        list(recipe.optim.scheduler.milestones) == [150, 180, 210]
        and recipe.data.augment.padding == 4
        and recipe.loss.get("temperature", 4.0) == {"kd_ls": 2.0, "nkd": 3.0}.get(method, 4.0)  # their own Ts
    )
    assert recipe.teacher.optim.lr == 0.05 and list(recipe.teacher.optim.scheduler.milestones) == [150, 180, 210]


def test_nst_is_the_polynomial_kernel_mmd_between_normalised_channel_maps() -> None:
    g = torch.Generator().manual_seed(3)
    fs, ft = (
        torch.randn(2, 3, 4, 4, generator=g, dtype=torch.float64),
        torch.randn(2, 5, 8, 8, generator=g, dtype=torch.float64),
    )
    pooled_t = ft.reshape(2, 5, 4, 2, 4, 2).mean((3, 5))  # 8x8 -> 4x4 by 2x2 means
    s = fs.reshape(2, 3, 16).numpy()
    t = pooled_t.reshape(2, 5, 16).numpy()
    s, t = s / np.linalg.norm(s, axis=2, keepdims=True), t / np.linalg.norm(t, axis=2, keepdims=True)

    def k(a, b):  # mean over samples and channel pairs of (a_i . b_j)^2
        return np.mean(
            [[(a[n, i] @ b[n, j]) ** 2 for i in range(a.shape[1]) for j in range(b.shape[1])] for n in range(2)]
        )

    expected = k(t, t) + k(s, s) - 2 * k(s, t)
    assert neuron_selectivity_transfer(fs, ft).item() == pytest.approx(expected, rel=1e-9)
    assert neuron_selectivity_transfer(ft, ft).item() == pytest.approx(0.0, abs=1e-12)


def _outputs(fs: torch.Tensor, ft: torch.Tensor, layer: str = "f") -> Outputs:
    return Outputs(
        inputs=fs,
        targets=torch.zeros(len(fs), dtype=torch.long),
        student=ModelOutput(fs, {layer: fs}),
        teachers=[ModelOutput(ft, {layer: ft})],
    )


def test_vid_starts_as_the_gaussian_nll_with_the_initial_variance_and_learns_it() -> None:
    g = torch.Generator().manual_seed(4)
    fs, ft = torch.randn(3, 2, 4, 4, generator=g, requires_grad=True), torch.randn(3, 6, 4, 4, generator=g)
    vid = VID(["f"], ["f"], init_variance=5.0)
    vid.setup(_outputs(fs, ft))
    torch.nn.init.zeros_(vid.regressors[0][-1].weight)  # predicted mean 0: the loss is 0.5 (t^2 / v + log v)
    loss = vid(_outputs(fs, ft))
    assert loss.item() == pytest.approx(0.5 * (ft.pow(2).mean().item() / 5.0 + np.log(5.0)), rel=1e-5)
    loss.backward()
    assert vid.log_scales[0].grad is not None and vid.log_scales[0].grad.abs().sum() > 0
    assert vid.regressors[0][-1].weight.grad.abs().sum() > 0


def test_cc_trains_both_embeddings_and_matches_its_formula() -> None:
    g = torch.Generator().manual_seed(5)
    fs, ft = torch.randn(4, 6, generator=g, dtype=torch.float64), torch.randn(4, 9, generator=g, dtype=torch.float64)
    for normalize in (False, True):  # RepDistiller's plain linear embeddings (the default), or unit rows
        cc = CC("f", "f", embedding_dim=3, normalize=normalize)
        cc.setup(_outputs(fs, ft))
        cc.double()
        loss = cc(_outputs(fs, ft))
        e_s = cc.embed_student(fs).detach().numpy()
        e_t = cc.embed_teacher(ft).detach().numpy()
        if normalize:
            e_s = e_s / np.linalg.norm(e_s, axis=1, keepdims=True)
            e_t = e_t / np.linalg.norm(e_t, axis=1, keepdims=True)
        d = np.abs(e_s - e_t)
        assert loss.item() == pytest.approx(np.mean([d[i] @ d[i + 1] for i in range(3)]), rel=1e-9)
        loss.backward()
        assert cc.embed_student.weight.grad.abs().sum() > 0 and cc.embed_teacher.weight.grad.abs().sum() > 0
    assert correlation_congruence(torch.ones(2, 3), torch.ones(2, 3)).item() == 0.0
