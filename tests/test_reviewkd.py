"""ReviewKD: the hierarchical context loss against an independent numpy computation, the ABF fusion
(order, shapes, where the gradients go), and end-to-end runs on the tutorial pair and on CIFAR ResNets."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from distillab.errors import ConfigError
from distillab.losses import ReviewKD
from distillab.losses.review import hcl_loss
from distillab.objective import ModelOutput, Outputs
from tests.conftest import run_in


def _adaptive_avg_pool(x: np.ndarray, size: int) -> np.ndarray:
    """PyTorch's adaptive average pooling: output cell i covers [floor(i H / size), ceil((i + 1) H / size))."""
    h, w = x.shape[2:]
    out = np.empty((*x.shape[:2], size, size))
    for i in range(size):
        for j in range(size):
            rows = slice(i * h // size, math.ceil((i + 1) * h / size))
            cols = slice(j * w // size, math.ceil((j + 1) * w / size))
            out[:, :, i, j] = x[:, :, rows, cols].mean(axis=(2, 3))
    return out


def _reference_hcl(pairs: list[tuple[np.ndarray, np.ndarray]]) -> float:
    """Per pair: (mse + sum of weight_k * mse of the maps pooled to the k-th applicable size of 4, 2, 1)
    / (1 + sum of weight_k), the weights 1/2, 1/4, 1/8 in order of application; summed over pairs."""
    total = 0.0
    for fs, ft in pairs:
        sizes = [s for s in (4, 2, 1) if s < fs.shape[2]]
        weights = [0.5 ** (k + 1) for k in range(len(sizes))]
        terms = [np.mean((fs - ft) ** 2)] + [
            w * np.mean((_adaptive_avg_pool(fs, s) - _adaptive_avg_pool(ft, s)) ** 2) for s, w in zip(sizes, weights)
        ]
        total += sum(terms) / (1 + sum(weights))
    return total


@pytest.mark.parametrize("size", [8, 6, 4, 2, 1])
def test_hcl_loss_is_the_pyramid_weighted_mse_of_the_reference(size: int) -> None:
    rng = np.random.default_rng(size)
    fs, ft = rng.normal(size=(3, 5, size, size)), rng.normal(size=(3, 5, size, size))
    got = hcl_loss([torch.from_numpy(fs)], [torch.from_numpy(ft)])
    assert got.item() == pytest.approx(_reference_hcl([(fs, ft)]), rel=1e-12)


def test_hcl_loss_sums_over_levels_and_weights_the_pyramid_as_published() -> None:
    rng = np.random.default_rng(0)
    pairs = [(rng.normal(size=(2, c, s, s)), rng.normal(size=(2, c, s, s))) for c, s in [(4, 8), (6, 2), (3, 1)]]
    got = hcl_loss([torch.from_numpy(fs) for fs, _ in pairs], [torch.from_numpy(ft) for _, ft in pairs])
    assert got.item() == pytest.approx(_reference_hcl(pairs), rel=1e-12)
    # the weights spelled out: 8x8 -> full, 4, 2, 1 at 1, 1/2, 1/4, 1/8 (sum 1.875); 2x2 -> full, 1 (1.5);
    # 1x1 -> full only
    fs, ft = pairs[0]
    pooled = [np.mean((_adaptive_avg_pool(fs, s) - _adaptive_avg_pool(ft, s)) ** 2) for s in (4, 2, 1)]
    level8 = (np.mean((fs - ft) ** 2) + pooled[0] / 2 + pooled[1] / 4 + pooled[2] / 8) / 1.875
    fs, ft = pairs[1]
    level2 = (np.mean((fs - ft) ** 2) + np.mean((fs.mean((2, 3)) - ft.mean((2, 3))) ** 2) / 2) / 1.5
    level1 = np.mean((pairs[2][0] - pairs[2][1]) ** 2)
    assert got.item() == pytest.approx(level8 + level2 + level1, rel=1e-12)


# A tiny fixed configuration, shallow to deep: the student's maps at 8x8 and 4x4 and a pooled (B, C) vector;
# the teacher's at 16x16 (larger than the student's: ABF must resize), 4x4 and a pooled (B, C, 1, 1) map.
STUDENT = [(4, 8, 8), (6, 4, 4), (8,)]
TEACHER = [(5, 16, 16), (7, 4, 4), (9, 1, 1)]
B = 3


def _setup(max_mid_channel: int = 512) -> tuple[ReviewKD, list[torch.Tensor], list[torch.Tensor], Outputs]:
    torch.manual_seed(0)
    student = [torch.randn(B, *shape, dtype=torch.float64, requires_grad=True) for shape in STUDENT]
    teacher = [torch.randn(B, *shape, dtype=torch.float64) for shape in TEACHER]
    term = ReviewKD(["s1", "s2", "s3"], ["t1", "t2", "t3"], max_mid_channel=max_mid_channel)
    outputs = Outputs(
        inputs=student[0],
        targets=torch.zeros(B, dtype=torch.long),
        student=ModelOutput(student[-1], dict(zip(term.student_taps, student))),
        teachers=[ModelOutput(teacher[-1], dict(zip(term.teacher_taps, teacher)))],
    )
    term.setup(outputs)
    term.double()
    return term, student, teacher, outputs


def test_setup_reads_channels_and_sizes_deep_to_shallow() -> None:
    term, *_ = _setup()
    assert term.shapes == [(1, 1), (4, 4), (8, 8)]
    assert term.out_shapes == [(1, 1), (4, 4), (16, 16)]
    mid = 8  # min(512, channels of the deepest student feature)
    assert [abf.conv1[0].in_channels for abf in term.abfs] == [8, 6, 4]
    assert [abf.conv1[0].out_channels for abf in term.abfs] == [mid] * 3
    assert [abf.conv2[0].out_channels for abf in term.abfs] == [9, 7, 5]
    assert term.abfs[0].att_conv is None and all(abf.att_conv[0].in_channels == 2 * mid for abf in term.abfs[1:])
    small, *_ = _setup(max_mid_channel=3)
    assert [abf.conv1[0].out_channels for abf in small.abfs] == [3] * 3


def test_abf_outputs_have_the_teacher_shapes_and_fuse_deep_into_shallow() -> None:
    term, student, teacher, _ = _setup()
    results = term.fuse([f if f.dim() == 4 else f[:, :, None, None] for f in student])
    assert [r.shape for r in results] == [t.shape for t in teacher]
    # deep to shallow: the output at a level depends on the student features at that level and deeper only
    for level, out in enumerate(results):
        grads = torch.autograd.grad(out.sum(), student, allow_unused=True, retain_graph=True)
        reached = [g is not None and g.abs().sum().item() > 0 for g in grads]
        assert reached == [j >= level for j in range(len(student))], level


def test_loss_gradients_reach_every_student_feature_and_every_abf_parameter() -> None:
    term, student, teacher, outputs = _setup()
    loss = term(outputs)
    assert loss.dim() == 0 and loss.item() > 0
    loss.backward()
    assert all(f.grad is not None and f.grad.abs().sum() > 0 for f in student)
    for name, p in term.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    # equals hcl_loss of the fused features against the teacher's
    with torch.no_grad():
        again = hcl_loss(term.fuse([student[0], student[1], student[2][:, :, None, None]]), teacher)
    assert loss.item() == pytest.approx(again.item(), rel=1e-12)


def test_layer_lists_must_pair_up() -> None:
    with pytest.raises(ConfigError, match=r"^teacher_layers=\['c'\] is not valid \(it pairs 2 student layers with 1"):
        ReviewKD(["a", "b"], ["c"])


def test_reviewkd_trains_the_tutorial_pair(tmp_path: Path) -> None:
    metrics, _ = run_in(tmp_path, "loss=reviewkd", "trainer.max_epochs=1")
    assert metrics["status"] == "completed"


def test_reviewkd_trains_cifar_resnets_on_preactivation_teacher_features(tmp_path: Path) -> None:
    metrics, _ = run_in(
        tmp_path,
        "loss=reviewkd",
        "model/student=resnet8",
        "model/teacher=resnet20",
        "data=synthetic",
        "data.num_train=64",
        "data.num_val=32",
        "data.image_size=16",
        "data.batch_size=32",
        "trainer.max_epochs=1",
        "teacher.max_epochs=1",
        "loss.student_layers=[layer1,layer2,layer3,avgpool]",
        "loss.teacher_layers=[layer1.2.preact,layer2.2.preact,layer3.2.preact,avgpool]",
    )
    assert metrics["status"] == "completed"
