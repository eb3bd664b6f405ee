"""CRD: the NCE objective against an independent numpy computation of RepDistiller's ContrastMemory and
ContrastLoss, the memory bank's momentum update, negatives from other classes, and an exact resume."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from distillab.checkpoint import load_checkpoint
from distillab.errors import ConfigError, Interrupted
from distillab.losses import CRD
from distillab.objective import ModelOutput, Outputs
from distillab.runner import run
from tests.conftest import TIMING, compose_in, interrupt_after_step, run_in

N, K, DIM, T = 12, 5, 4, 0.07
TARGETS = torch.tensor([0, 1, 2] * 4)


def _crd(negatives: int = K) -> CRD:
    crd = CRD("f", "f", feat_dim=DIM, negatives=negatives, temperature=T, momentum=0.5)
    crd.bind_data(SimpleNamespace(train_targets=TARGETS))
    return crd


def _outputs(fs: torch.Tensor, ft: torch.Tensor, index: torch.Tensor) -> Outputs:
    return Outputs(
        inputs=fs,
        targets=TARGETS[index],
        student=ModelOutput(fs, {"f": fs}),
        teachers=[ModelOutput(ft, {"f": ft})],
        index=index,
    )


def _normalise(e: np.ndarray) -> np.ndarray:
    return e / np.linalg.norm(e, axis=1, keepdims=True)


def _reference_direction(
    anchor: np.ndarray, memory: np.ndarray, rows: np.ndarray, z: float | None
) -> tuple[float, float]:
    """RepDistiller: out = exp(memory[idx] . v / T) / Z (Z = mean(out) * N on the first batch); ContrastLoss."""
    out = np.exp(np.einsum("bkd,bd->bk", memory[rows], anchor) / T)
    z = out.mean() * N if z is None else z
    p = out / z
    m, pn, eps = rows.shape[1] - 1, 1 / N, 1e-7
    log_d1 = np.log(p[:, 0] / (p[:, 0] + m * pn + eps))
    log_d0 = np.log((m * pn) / (p[:, 1:] + m * pn + eps))
    return -(log_d1.sum() + log_d0.sum()) / len(anchor), z


def test_crd_is_repdistillers_nce_on_both_memories_and_updates_them_with_momentum(monkeypatch) -> None:
    g = torch.Generator().manual_seed(0)
    crd = _crd()
    index = torch.tensor([0, 4, 8])  # one class each
    fs = torch.randn(3, 6, generator=g, dtype=torch.float64, requires_grad=True)
    ft = torch.randn(3, 9, generator=g, dtype=torch.float64)
    crd.setup(_outputs(fs, ft, index))
    crd.double()
    negatives = torch.tensor([[1, 2, 4, 5, 7], [0, 2, 3, 5, 6], [0, 1, 3, 4, 6]])
    assert (TARGETS[negatives] != TARGETS[index][:, None]).all()
    monkeypatch.setattr(crd, "draw_negatives", lambda labels: negatives)
    memory_s, memory_t = crd.memory_student.numpy().copy(), crd.memory_teacher.numpy().copy()

    loss = crd(_outputs(fs, ft, index))

    e_s = _normalise(crd.embed_student(fs).detach().numpy())
    e_t = _normalise(crd.embed_teacher(ft).detach().numpy())
    rows = np.concatenate([index.numpy()[:, None], negatives.numpy()], axis=1)
    loss_s, z_s = _reference_direction(e_s, memory_t, rows, None)  # student anchor, teacher memory
    loss_t, z_t = _reference_direction(e_t, memory_s, rows, None)
    assert loss.item() == pytest.approx(loss_s + loss_t, rel=1e-9)
    assert crd.z.tolist() == pytest.approx([z_s, z_t], rel=1e-9)
    # memory rows of the batch: normalise(0.5 * old + 0.5 * embedding); every other row untouched
    expected_s, expected_t = memory_s.copy(), memory_t.copy()
    expected_s[index] = _normalise(0.5 * memory_s[index] + 0.5 * e_s)
    expected_t[index] = _normalise(0.5 * memory_t[index] + 0.5 * e_t)
    np.testing.assert_allclose(crd.memory_student.numpy(), expected_s, rtol=1e-12)
    np.testing.assert_allclose(crd.memory_teacher.numpy(), expected_t, rtol=1e-12)
    # gradients reach the student's features and both embeddings (the teacher is frozen)
    loss.backward()
    assert fs.grad.abs().sum() > 0
    assert crd.embed_student.weight.grad.abs().sum() > 0 and crd.embed_teacher.weight.grad.abs().sum() > 0

    # the second batch uses the updated memories and keeps Z from the first
    again = crd(_outputs(fs, ft, index))
    e_s = _normalise(crd.embed_student(fs).detach().numpy())
    e_t = _normalise(crd.embed_teacher(ft).detach().numpy())
    assert again.item() == pytest.approx(
        _reference_direction(e_s, expected_t, rows, z_s)[0] + _reference_direction(e_t, expected_s, rows, z_t)[0],
        rel=1e-9,
    )
    assert crd.z.tolist() == pytest.approx([z_s, z_t], rel=1e-9)


def test_negatives_are_other_classes_without_repeats_and_with_replacement_only_when_too_few() -> None:
    torch.manual_seed(0)
    labels = TARGETS[[0, 1, 2, 3]]
    drawn = _crd(negatives=8).draw_negatives(labels)  # 8 samples of other classes exist for each
    assert drawn.shape == (4, 8)
    assert (TARGETS[drawn] != labels[:, None]).all()
    assert all(len(set(row.tolist())) == 8 for row in drawn)  # each sample's 8 others, each once
    many = _crd(negatives=50).draw_negatives(labels)
    assert many.shape == (4, 50) and (TARGETS[many] != labels[:, None]).all()


def test_crd_refuses_batches_without_sample_indices_and_single_class_data() -> None:
    crd = _crd()
    f = torch.randn(3, 6)
    with pytest.raises(ConfigError, match="sample indices"):
        crd.setup(
            Outputs(
                inputs=f, targets=TARGETS[:3], student=ModelOutput(f, {"f": f}), teachers=[ModelOutput(f, {"f": f})]
            )
        )
    with pytest.raises(ConfigError, match="needs class labels as targets"):  # e.g. images, as in denoising
        CRD("f", "f").bind_data(SimpleNamespace(train_targets=torch.zeros(5, 1, 8, 8)))
    with pytest.raises(ConfigError, match="only one class"):
        CRD("f", "f").bind_data(SimpleNamespace(train_targets=torch.zeros(5, dtype=torch.long)))


CRD_RUN = [
    "loss=crd",
    "loss.negatives=16",
    "loss.student_layer=avgpool",
    "loss.teacher_layer=avgpool",
    "trainer.max_epochs=2",
    "trainer.log_every=1",
    "model/student=resnet8",
    "model/teacher=resnet8",
    "data=synthetic",
    "data.num_train=64",
    "data.num_val=32",
    "data.image_size=16",
    "data.batch_size=16",
    "teacher.max_epochs=1",
]


def test_crd_run_interrupted_mid_epoch_resumes_bit_identical_memory_bank_included(tmp_path: Path, monkeypatch) -> None:
    whole, whole_dir = run_in(tmp_path / "whole", *CRD_RUN)
    cfg = compose_in(tmp_path / "parts", *CRD_RUN)
    run_dir = Path(cfg.paths.output_dir)
    interrupt_after_step(monkeypatch, 6)  # epoch 2 (4 steps per epoch)
    with pytest.raises(Interrupted):
        run(cfg)
    monkeypatch.undo()
    resumed, _ = run_in(tmp_path / "parts", *CRD_RUN, f"paths.output_dir={run_dir}", "trainer.resume=true")
    assert {k: v for k, v in resumed.items() if k not in TIMING} == {k: v for k, v in whole.items() if k not in TIMING}
    a, b = (load_checkpoint(d / "checkpoints" / "last.pt")["objective"] for d in (whole_dir, run_dir))
    assert {k for k in a if "memory" in k} == {"terms.crd.memory_student", "terms.crd.memory_teacher"}
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert (a["terms.crd.z"] > 0).all()
