"""SimKD (loss=simkd): the student rebuilt to predict through the teacher's classifier, its loss, its export."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from distillab.checkpoint import load_checkpoint
from distillab.errors import ConfigError
from distillab.losses import SimKD
from distillab.losses.simkd import reuse_teacher_classifier
from distillab.models import resnet
from distillab.teacher import freeze
from tests.conftest import fit_in_process


def test_the_rebuilt_student_predicts_as_the_authors_simkd_module_and_pools_a_larger_map_before_the_projector() -> None:
    """The authors' inference: `cls_t(avg_pool(transfer(source)))`, `source` the student's last map pooled to the
    teacher's size when larger. Here the student (resnet8 on 32x32: an 8x8 map) and a teacher whose map is 4x4
    (it sees 16x16 inputs): after the dry run's `setup`, the student pools to 4x4 in front of the projector."""
    torch.manual_seed(0)
    student, teacher = resnet(depth=8, num_classes=10), freeze(resnet(depth=14, num_classes=10))
    original = copy.deepcopy(student).eval()
    term = SimKD("layer3", factor=2)
    term.bind_models(student, [teacher])
    assert student.fc is teacher.fc and not student.fc.weight.requires_grad
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        feat_s = original.layer3(original.layer2(original.layer1(original.relu(original.bn1(original.conv1(x))))))
    student.eval()
    projector = student.avgpool[1]
    with torch.no_grad():
        assert torch.allclose(student(x), teacher.fc(projector(feat_s).mean((2, 3))), atol=1e-5)  # same 8x8 sizes
    from distillab.objective import ModelOutput, Outputs

    taps = {"avgpool.1": projector(feat_s)}
    teacher_map = torch.randn(2, 64, 4, 4)
    o = Outputs(
        inputs=x,
        targets=torch.zeros(2, dtype=torch.long),
        student=ModelOutput(student(x), taps),
        teachers=[ModelOutput(torch.zeros(2, 10), {"layer3": teacher_map})],
    )
    term.setup(o)
    with torch.no_grad():
        source = F.adaptive_avg_pool2d(feat_s, (4, 4))  # the authors': F.adaptive_avg_pool2d(feat_s, (t_H, t_H))
        trans = projector(source)
        assert torch.allclose(student(x), teacher.fc(trans.mean((2, 3))), atol=1e-5)
    assert term(Outputs(o.inputs, o.targets, ModelOutput(o.student.out, {"avgpool.1": trans}), o.teachers)).item() == (
        pytest.approx(F.mse_loss(trans, teacher_map).item(), rel=1e-6)
    )
    exported = resnet(depth=8, num_classes=10)  # the export recipe: the alignment travels in the state dict
    reuse_teacher_classifier(exported, "avgpool", "fc", torch.nn.Linear(64, 10))
    exported.load_state_dict(student.state_dict())
    exported.eval()
    with torch.no_grad():
        assert exported.avgpool[0].size == (4, 4) and torch.allclose(exported(x), student(x), atol=1e-6)


def test_a_simkd_run_trains_the_projector_keeps_the_teachers_classifier_and_exports(tmp_path: Path) -> None:
    """A short run: validation is through the teacher's classifier (the student's `fc` is the teacher's, unchanged);
    the projector moved; `checkpoints/best.pt` loads into a freshly built resnet8 after `reuse_teacher_classifier`
    (the export recipe in docs/methods.md) and predicts as the trained student does."""
    initial: dict[str, torch.Tensor] = {}
    exp, result, run_dir = fit_in_process(
        tmp_path,
        ["loss=simkd", "model/student=resnet8", "model/teacher=resnet14", "trainer.max_epochs=2"],
        before_fit=lambda e: initial.update(
            projector=e.student.avgpool[1][0].weight.detach().clone(), fc=e.teachers[0].fc.weight.detach().clone()
        ),
    )
    teacher_fc = exp.teachers[0].fc
    assert exp.student.fc is teacher_fc and result.steps > 0
    assert torch.equal(teacher_fc.weight, initial["fc"])  # the teacher's classifier, as the teacher had it
    assert not torch.allclose(exp.student.avgpool[1][0].weight, initial["projector"])  # the projector trained
    fresh = resnet(depth=8, num_classes=10, in_channels=1)
    reuse_teacher_classifier(fresh, "avgpool", "fc", torch.nn.Linear(teacher_fc.in_features, 10))
    state = load_checkpoint(run_dir / "checkpoints" / "best.pt")
    fresh.load_state_dict(state["student"])
    assert torch.equal(fresh.fc.weight, teacher_fc.weight)
    x = torch.randn(4, 1, 8, 8)
    exp.student.load_state_dict(state["student"])
    exp.student.eval(), fresh.eval()
    with torch.no_grad():
        assert torch.allclose(fresh(x), exp.student(x), atol=1e-6)


def test_simkd_names_a_teacher_classifier_it_cannot_reuse() -> None:
    student, teacher = resnet(depth=8, num_classes=10), resnet(depth=8, num_classes=10)
    with pytest.raises(
        ConfigError, match=r"teacher_classifier='layer3' is not valid: use .* teacher's nn.Linear .*: fc\)"
    ):
        SimKD("layer3", teacher_classifier="layer3").bind_models(student, [teacher])
    with pytest.raises(
        ConfigError, match=r"student_classifier='nope' is not valid: use the module path of the student's"
    ):
        SimKD("layer3", student_classifier="nope").bind_models(
            student, [teacher]
        )  # (no such module: no AttributeError)
    with pytest.raises(
        ConfigError, match=r"student_pool='pool' is not valid: use the module path of the student's global"
    ):
        SimKD("layer3", student_pool="pool").bind_models(resnet(depth=8, num_classes=10), [teacher])


def test_a_classifier_path_refused_after_the_build_is_named_by_its_config_key(tmp_path: Path) -> None:
    from tests.conftest import run_in

    with pytest.raises(
        ConfigError, match=r"^loss.terms.catkd.student_classifier='layer3' is not valid: use the module"
    ):
        run_in(
            tmp_path,
            "loss=catkd",
            "model/student=resnet8",
            "model/teacher=resnet14",
            "loss.terms.catkd.student_classifier=layer3",
        )
