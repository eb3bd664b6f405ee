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
from distillab.losses import LossTerm
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
    for method, cfg in configs.items():
        own = 0.025 if method.startswith("mlkd") else lr  # MLKD's config trains at 0.025
        assert (cfg.optim.lr, cfg.teacher.optim.lr, cfg.trainer.max_epochs, cfg.data.batch_size) == (own, 0.05, 240, 64)
        assert list(cfg.optim.scheduler.milestones) == [150, 180, 210]
        assert cfg.data.augment._target_.endswith("WeakAndStrong" if method == "mlkd" else "CropFlip")

    terms = {m: {name: instantiate(node) for name, node in cfg.loss.terms.items()} for m, cfg in configs.items()}
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])

    def forward(method_terms: list) -> tuple[torch.nn.Module, Outputs]:
        """The pair's networks (seeded), bound to `method_terms` (SimKD rebuilds the student), tapped for them."""
        torch.manual_seed(0)
        student, teacher = instantiate(first.model.student).eval(), instantiate(first.model.teacher).eval()
        for term in method_terms:
            term.bind_models(student, [teacher])
        student_taps = FeatureTaps(student, sorted({p for t in method_terms for p in t.student_taps}))
        teacher_taps = FeatureTaps(teacher, sorted({p for t in method_terms for p in t.teacher_taps}))
        with torch.no_grad():
            teacher_out = ModelOutput(teacher(x), teacher_taps.pop())
        outputs = Outputs(x, y, ModelOutput(student(x), student_taps.pop()), [teacher_out], index=torch.arange(4))
        return student, outputs

    rebuilds = {
        m for m, ts in terms.items() if any(type(t).bind_models is not LossTerm.bind_models for t in ts.values())
    }
    shared = forward([t for m, ts in terms.items() if m not in rebuilds for t in ts.values()])  # one forward for most
    for method, method_terms in terms.items():
        student, outputs = forward(list(method_terms.values())) if method in rebuilds else shared
        first_conv = next(p for p in student.parameters() if p.dim() == 4)
        views = 2 if method == "mlkd" else 1  # MLKD's weak and strong halves of the batch
        training_set = SimpleNamespace(train_targets=torch.arange(100).repeat(2), views_per_sample=views)  # CRD: 200
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
