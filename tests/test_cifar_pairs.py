"""Every teacher/student pair of the CIFAR-100 benchmark: each method config of the pair composes with the
pair's recipe, and its loss terms set up and evaluate on the two real networks' tapped features (so every
module path a config names exists, and every projector, connector and fusion fits the pair's shapes).
The resnet32x4 -> resnet8x4 configs also train for a few steps (test_cifar_benchmark_parts.py)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from distillab.config import compose, config_dir
from distillab.instantiate import instantiate
from distillab.objective import ModelOutput, Outputs
from distillab.taps import FeatureTaps

CONF = config_dir()
PAIRS = sorted(p.stem for p in (CONF / "recipe" / "cifar100").glob("*.yaml"))
SMALL_LR_STUDENTS = {"mobilenetv2", "shufflenetv1", "shufflenetv2"}  # RepDistiller and mdistiller train them at lr 0.01
EVERY_PAIR_HAS = {"ce", "kd", "fitnet", "at", "sp", "cc", "vid", "rkd", "pkt", "nst", "crd", "ft", "dkd", "dist"}


def test_the_thirteen_pairs_of_the_crd_benchmark_are_there() -> None:
    assert len(PAIRS) == 13 and "resnet32x4_resnet8x4" in PAIRS and "resnet50_mobilenetv2" in PAIRS


@pytest.mark.parametrize("pair", PAIRS)
def test_every_method_of_the_pair_sets_up_on_the_real_networks_features(pair: str, tmp_path) -> None:
    methods = sorted(p.stem for p in (CONF / "experiment" / "cifar100" / pair).glob("*.yaml"))
    assert set(methods) >= EVERY_PAIR_HAS
    configs = {m: compose([f"experiment=cifar100/{pair}/{m}", f"paths.root={tmp_path}"]) for m in methods}
    first = configs["ce"]
    lr = 0.01 if any(pair.endswith(s) for s in SMALL_LR_STUDENTS) else 0.05
    for cfg in configs.values():
        assert (cfg.optim.lr, cfg.teacher.optim.lr, cfg.trainer.max_epochs, cfg.data.batch_size) == (lr, 0.05, 240, 64)
        assert list(cfg.optim.scheduler.milestones) == [150, 180, 210] and cfg.data.augment

    torch.manual_seed(0)
    student, teacher = instantiate(first.model.student).eval(), instantiate(first.model.teacher).eval()
    terms = {m: {name: instantiate(node) for name, node in cfg.loss.terms.items()} for m, cfg in configs.items()}
    every = [t for method in terms.values() for t in method.values()]
    student_taps = FeatureTaps(student, sorted({p for t in every for p in getattr(t, "student_taps", [])}))
    teacher_taps = FeatureTaps(teacher, sorted({p for t in every for p in getattr(t, "teacher_taps", [])}))
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    with torch.no_grad():
        teacher_out = ModelOutput(teacher(x), teacher_taps.pop())
    outputs = Outputs(
        inputs=x,
        targets=y,
        student=ModelOutput(student(x), student_taps.pop()),
        teachers=[teacher_out],
        index=torch.arange(4),
    )
    training_set = SimpleNamespace(train_targets=torch.arange(100).repeat(2))  # CRD's memory bank: 200 samples
    first_conv = next(p for p in student.parameters() if p.dim() == 4)
    for method, method_terms in terms.items():
        total = 0.0
        for name, term in method_terms.items():
            if hasattr(term, "bind_data"):
                term.bind_data(training_set)
            if hasattr(term, "setup"):
                term.setup(outputs)
            value = term(outputs)
            assert value.dim() == 0 and torch.isfinite(value), f"{pair}/{method}: term {name}"
            total = total + value
        first_conv.grad = None
        total.backward(retain_graph=True)  # the student learns from every method's loss; so do the terms' own parts
        assert first_conv.grad is not None and first_conv.grad.abs().sum() > 0, f"{pair}/{method}"
        for name, term in method_terms.items():
            paraphraser = [m for m in (getattr(term, "encoder", None), getattr(term, "decoder", None)) if m is not None]
            frozen = {id(p) for m in paraphraser for p in m.parameters()}  # FT's: trained in its init stage only
            assert all(p.grad is not None for p in term.parameters() if id(p) not in frozen), (
                f"{pair}/{method}: term {name}"
            )


@pytest.mark.parametrize("pair", [p for p in PAIRS if p != "resnet32x4_resnet8x4"])  # that pair trains every method
def test_each_pair_trains_its_teacher_and_distils_for_a_few_steps(pair: str, tiny_run) -> None:
    metrics, _ = tiny_run(
        f"experiment=cifar100/{pair}/kd",
        "data=synthetic",
        "data.num_train=16",
        "data.num_val=8",
        "data.batch_size=8",
        "trainer.max_epochs=1",
    )
    assert (
        metrics["status"] == "completed"
        and metrics["steps"] == 2
        and metrics["final_weights"] == pytest.approx({"ce": 0.1, "kd": 0.9})
    )
    assert metrics["teacher_val_acc"] is not None
