"""FSP, AB and FT against independent computations of RepDistiller's formulas, and the init stage that trains
their parts before the main training (what it trains, what it leaves alone, logging, resume)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from distillab.checkpoint import load_checkpoint
from distillab.config import compose
from distillab.errors import ConfigError, Interrupted, NonFiniteLoss
from distillab.losses import FSP, ActivationBoundaries, FactorTransfer
from distillab.objective import ModelOutput, Outputs
from distillab.projectors import Conv1x1
from distillab.runner import run
from tests.conftest import TIMING, compose_in, interrupt_after_step, run_in, scalars
from tests.test_distributed import free_port


def _outputs(student: dict[str, torch.Tensor], teacher: dict[str, torch.Tensor]) -> Outputs:
    first = next(iter(student.values()))
    return Outputs(
        inputs=first,
        targets=torch.zeros(len(first), dtype=torch.long),
        student=ModelOutput(first, student),
        teachers=[ModelOutput(first, teacher)],
    )


def _maps(g: torch.Generator, shapes: list[tuple[int, ...]]) -> dict[str, torch.Tensor]:
    return {f"l{i}": torch.randn(*s, generator=g, dtype=torch.float64) for i, s in enumerate(shapes)}


def test_fsp_is_the_mean_squared_difference_of_gram_matrices_between_consecutive_layers() -> None:
    g = torch.Generator().manual_seed(0)
    shapes = [(2, 3, 4, 4), (2, 5, 4, 4), (2, 6, 2, 2)]  # the last halves the resolution: the one before is pooled
    fs, ft = _maps(g, shapes), _maps(g, shapes)
    fsp = FSP(list(fs), list(ft))
    fsp.setup(_outputs(fs, ft))

    def gram(bottom: np.ndarray, top: np.ndarray) -> np.ndarray:  # (B, C_top, C_bottom), spatial mean
        if bottom.shape[2] > top.shape[2]:
            k = bottom.shape[2] // top.shape[2]
            bottom = bottom.reshape(*bottom.shape[:2], top.shape[2], k, top.shape[3], k).mean((3, 5))
        return np.array(
            [
                [[np.mean(top[b, t] * bottom[b, c]) for c in range(bottom.shape[1])] for t in range(top.shape[1])]
                for b in range(len(top))
            ]
        )

    def matrices(f: dict[str, torch.Tensor]) -> list[np.ndarray]:
        a = [v.numpy() for v in f.values()]
        return [gram(a[0], a[1]), gram(a[1], a[2])]

    expected = sum(np.mean((s - t) ** 2) for s, t in zip(matrices(fs), matrices(ft)))
    assert fsp(_outputs(fs, ft)).item() == pytest.approx(expected, rel=1e-10)
    assert fsp(_outputs(fs, fs)).item() == 0.0
    with pytest.raises(
        ConfigError,
        match=r"^teacher_layers\[1\]='l1' is not valid \(FSP compares matrices of equal size, and it has 4 channels\): "
        "use a teacher layer with student layer l1's 5 channels",
    ):
        FSP(list(fs), list(fs)).setup(_outputs(fs, {**fs, "l1": torch.randn(2, 4, 4, 4)}))


def test_ab_penalises_pre_activations_on_the_wrong_side_of_the_margin_deepest_pair_weighted_most() -> None:
    g = torch.Generator().manual_seed(1)
    fs, ft = _maps(g, [(3, 2, 4, 4), (3, 4, 2, 2)]), _maps(g, [(3, 2, 4, 4), (3, 4, 2, 2)])
    ab = ActivationBoundaries(list(fs), list(ft), projector=Conv1x1, margin=1.0)
    ab.setup(_outputs(fs, ft))
    assert all(isinstance(c, nn.Identity) for c in ab.connectors)  # equal shapes: RepDistiller's Connector is empty

    def alternative_l2(s: np.ndarray, t: np.ndarray) -> float:
        total = 0.0
        for sv, tv in zip(s.ravel(), t.ravel()):
            if tv <= 0 and sv > -1:
                total += (sv + 1) ** 2  # teacher off: the student must be below -margin
            elif tv > 0 and sv <= 1:
                total += (sv - 1) ** 2  # teacher on: above +margin
        return total

    weights = [0.5, 1.0]  # 2^(i - n + 1)
    expected = sum(
        w * alternative_l2(s.numpy(), t.numpy()) / 3 * 3 / 1000 for w, s, t in zip(weights, fs.values(), ft.values())
    )
    assert ab(_outputs(fs, ft)).item() == pytest.approx(expected, rel=1e-10)
    clear = {k: torch.where(v > 0, 2.0, -2.0).double() for k, v in ft.items()}  # beyond the margin on the right side
    assert ab(_outputs(clear, ft)).item() == 0.0

    narrow = {"l0": fs["l0"][:, :1]}  # one channel for the teacher's two: a connector maps it
    ab2 = ActivationBoundaries(["l0"], ["l0"], projector=lambda s, t: Conv1x1(s, t, batch_norm=True))
    ab2.setup(_outputs(narrow, {"l0": ft["l0"]}))
    assert isinstance(ab2.connectors[0], Conv1x1)


def test_ft_matches_normalised_factor_maps_and_only_the_init_stage_trains_the_paraphraser() -> None:
    torch.manual_seed(2)
    fs = torch.randn(2, 3, 4, 4, requires_grad=True)
    ft = torch.randn(2, 8, 2, 2)
    ft_loss = FactorTransfer("s", "t", rate=0.5)
    outputs = _outputs({"s": fs}, {"t": ft})
    ft_loss.setup(outputs)
    last_conv = [[m for m in part if isinstance(m, nn.Conv2d)][-1] for part in (ft_loss.encoder, ft_loss.translator)]
    assert [conv.out_channels for conv in last_conv] == [4, 4]  # rate 0.5 of the teacher's 8

    def factor(f: np.ndarray) -> np.ndarray:
        a = (f**2).mean(1).reshape(len(f), -1)
        return a / np.linalg.norm(a, axis=1, keepdims=True)

    loss = ft_loss(outputs)
    translated = ft_loss.translator(fs).detach().numpy()
    translated = translated.reshape(2, 4, 2, 2, 2, 2).mean((3, 5))  # 4x4 pooled to the teacher factor's 2x2
    expected = np.abs(factor(translated) - factor(ft_loss.encoder(ft).detach().numpy())).mean()
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    loss.backward()
    assert all(p.grad is None for p in ft_loss.encoder.parameters())  # frozen in the main stage
    assert fs.grad.abs().sum() > 0 and last_conv[1].weight.grad.abs().sum() > 0

    # the init stage: reconstruct the teacher feature with the paraphraser, nothing else
    assert ft_loss.init_modules(nn.Linear(1, 1)) == [ft_loss.encoder, ft_loss.decoder]
    reconstruction = ft_loss.init_loss(outputs)
    assert reconstruction.item() == pytest.approx(torch.mean((ft_loss.decoder(ft_loss.encoder(ft)) - ft) ** 2).item())


# Small CIFAR ResNets on small synthetic images: the init stages' taps exist and a run takes seconds.
SMALL = [
    "model/student=resnet8",
    "model/teacher=resnet8",
    "data=synthetic",
    "data.num_train=64",
    "data.num_val=32",
    "data.image_size=16",
    "data.batch_size=32",
    "teacher.max_epochs=1",
]


def test_fsp_ab_and_ft_gradients_are_those_of_their_checked_values() -> None:
    """Autograd against finite differences of the values the tests above check against numpy."""
    g = torch.Generator().manual_seed(3)
    shapes = [(2, 2, 4, 4), (2, 3, 2, 2)]
    fs = {k: v.requires_grad_() for k, v in _maps(g, shapes).items()}
    ft = _maps(g, shapes)
    fsp = FSP(list(fs), list(ft))
    fsp.setup(_outputs(fs, ft))
    assert torch.autograd.gradcheck(lambda a, b: fsp(_outputs({"l0": a, "l1": b}, ft)), tuple(fs.values()))
    ab = ActivationBoundaries(list(fs), list(ft), projector=Conv1x1, margin=1.0)
    ab.setup(_outputs(fs, ft))
    assert torch.autograd.gradcheck(lambda a, b: ab(_outputs({"l0": a, "l1": b}, ft)), tuple(fs.values()))
    ft_loss = FactorTransfer("s", "t")
    student, teacher = (
        torch.randn(2, 3, 4, 4, dtype=torch.float64, generator=g, requires_grad=True),
        torch.randn(2, 4, 4, 4, dtype=torch.float64, generator=g),
    )
    ft_loss.setup(_outputs({"s": student}, {"t": teacher}))
    ft_loss.double().eval()  # BatchNorm in the translator: running statistics, so the map is a fixed function
    assert torch.autograd.gradcheck(lambda a: ft_loss(_outputs({"s": a}, {"t": teacher})), (student,))


def _parameters(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


@pytest.mark.parametrize("method", ["fsp", "ab", "ft"])
def test_the_init_stage_trains_only_its_modules_logs_through_the_loop_and_then_the_main_training_runs(
    method: str, tmp_path: Path, monkeypatch
) -> None:
    from distillab.training import Trainer

    seen: dict[str, dict[str, torch.Tensor]] = {}
    original = Trainer._run_stage

    def spy(self, members, index, *args):
        (member,) = members
        stage, exp = member.stages[index], member.exp
        if stage.main:
            return original(self, members, index, *args)
        term = exp.objective.terms[stage.name.removeprefix("init/")]
        seen["student"], seen["term"], seen["teacher"] = (
            _parameters(exp.student),
            _parameters(term),
            _parameters(exp.teachers[0]),
        )
        original(self, members, index, *args)
        seen["student_after"], seen["term_after"], seen["teacher_after"] = (
            _parameters(exp.student),
            _parameters(term),
            _parameters(exp.teachers[0]),
        )

    monkeypatch.setattr(Trainer, "_run_stage", spy)
    layers = {  # AB: a 4x wider teacher, so the connectors are learnable ConvRegs; with AdamW, whose settings
        # include a key its constructor does not take
        "fsp": ["optim=sgd", "optim.lr=0.01"],
        "ab": [
            "model/teacher=resnet8x4",
            "projector=convreg",
            "projector.relu=false",
            "optim=adamw",
            "optim.lr=0.01",
            "loss.student_layers=[layer1.0.preact,layer2.0.preact]",
            "loss.teacher_layers=[layer1.0.preact,layer2.0.preact]",
        ],
        "ft": ["optim=sgd", "optim.lr=0.01", "loss.student_layer=layer3", "loss.teacher_layer=layer3"],
    }[method]
    metrics, run_dir = run_in(tmp_path, f"loss={method}", "loss.init_epochs=3", "trainer.max_epochs=1", *SMALL, *layers)

    assert metrics["status"] == "completed" and metrics["steps"] == 2  # the main training's steps
    assert metrics["stages"] == {f"init/{method}": {"epochs": 3, "steps": 6}}
    values = scalars(run_dir)[f"init/{method}"]
    assert len(values) == 3 and values[-1] < values[0]  # a point every trainer.log_every=2 steps, and it learns
    changed = {k for k in seen["student"] if not torch.equal(seen["student"][k], seen["student_after"][k])}
    term_changed = any(not torch.equal(seen["term"][k], seen["term_after"][k]) for k in seen["term"])
    assert all(torch.equal(seen["teacher"][k], seen["teacher_after"][k]) for k in seen["teacher"])  # frozen
    if method == "ab":
        assert term_changed  # the connectors learn with the student
    if method == "ft":  # the paraphraser alone; the student is untouched, BatchNorm statistics included
        assert not changed and term_changed
    else:  # the student's feature layers; the classifier gets no gradient and is skipped by SGD
        assert any(k.startswith("layer1.") and k.endswith("weight") for k in changed)
        assert "fc.weight" not in changed and "fc.bias" not in changed


FT_RUN = [
    "loss=ft",
    "trainer.max_epochs=2",
    "trainer.log_every=1",
    *SMALL,
    "data.batch_size=16",
    "loss.student_layer=layer3",
    "loss.teacher_layer=layer3",
]


@pytest.mark.parametrize("stop_after", [3, 6, 11])  # inside the init stage, at its end, inside the main training
def test_a_run_interrupted_anywhere_resumes_there_and_ends_bit_identical(
    stop_after: int, tmp_path: Path, monkeypatch
) -> None:
    """Init stage: 2 epochs of 4 steps (steps 1-8), then the main training: 2 epochs of 4 (steps 9-16)."""
    overrides = [*FT_RUN, "loss.init_epochs=2"]
    whole, whole_dir = run_in(
        tmp_path / "whole", *overrides
    )  # first: it trains the teacher, which the interrupt below must not hit
    cfg = compose_in(tmp_path, *overrides)
    run_dir = Path(cfg.paths.output_dir)
    interrupt_after_step(monkeypatch, stop_after)
    with pytest.raises(
        Interrupted, match="init stage of loss term ft" if stop_after < 8 else r"after step \d+ \(epoch"
    ):
        run(cfg)
    monkeypatch.undo()
    checkpoint = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    assert checkpoint["step"] == stop_after and checkpoint["stage"] == (0 if stop_after < 8 else 1)
    metrics, _ = run_in(tmp_path, *overrides, f"paths.output_dir={run_dir}", "trainer.resume=true")
    assert metrics["status"] == "completed"
    assert {k: v for k, v in metrics.items() if k not in TIMING} == {k: v for k, v in whole.items() if k not in TIMING}
    a, b = (load_checkpoint(d / "checkpoints" / "last.pt") for d in (whole_dir, run_dir))
    for part in ("student", "objective", "optim"):  # the paraphraser, the translator, the main optimizer's state
        flat_a, flat_b = _flatten(a[part]), _flatten(b[part])
        assert flat_a.keys() == flat_b.keys() and all(torch.equal(flat_a[k], flat_b[k]) for k in flat_a), part
    assert scalars(run_dir)["init/ft"] == scalars(whole_dir)["init/ft"]  # each step's point once, as in one go


def _flatten(state, prefix: str = "") -> dict[str, torch.Tensor]:
    if isinstance(state, torch.Tensor):
        return {prefix: state}
    items = state.items() if isinstance(state, dict) else enumerate(state) if isinstance(state, (list, tuple)) else []
    out: dict[str, torch.Tensor] = {}
    for key, value in items:
        out.update(_flatten(value, f"{prefix}.{key}"))
    return out


@pytest.mark.parametrize("loss", ["ft", "crd"])  # an init stage; CRD's memory bank
def test_init_stages_and_crd_are_refused_under_ddp_before_anything_trains(loss: str, tmp_path: Path) -> None:
    torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
    try:
        cfg = compose_in(tmp_path, f"loss={loss}", "trainer.strategy=ddp")
        with pytest.raises(ConfigError, match=f"loss.terms.{loss} does not run under trainer.strategy=ddp yet"):
            run(cfg)
    finally:
        torch.distributed.destroy_process_group()
    assert not (Path(cfg.paths.output_dir) / "checkpoints").exists()


def test_each_init_staged_method_config_names_its_published_settings() -> None:
    ft = compose(["experiment=cifar100/resnet32x4_resnet8x4/ft"])
    assert ft.loss.init_epochs == 30 and ft.loss.init_lr == 0.01 and ft.loss.weights.ft == 200
    for method in ("fsp", "ab"):
        cfg = compose([f"experiment=cifar100/resnet32x4_resnet8x4/{method}"])
        assert cfg.loss.init_epochs == 30 and cfg.loss.init_lr is None and cfg.loss.weights[method] == 0.0


def test_a_non_finite_init_stage_stops_the_run_at_that_step_before_the_main_training(tmp_path: Path) -> None:
    cfg = compose_in(
        tmp_path,
        "loss=ft",
        "loss.init_epochs=2",
        "loss.init_lr=1e30",
        *SMALL,
        "loss.student_layer=layer3",
        "loss.teacher_layer=layer3",
    )
    with pytest.raises(
        NonFiniteLoss,
        match=r"non-finite at step \d+ \(epoch 1 of the init stage of loss term ft\): loss terms init/ft were "
        r"non-finite",
    ):
        run(cfg)
    assert not (Path(cfg.paths.output_dir) / "checkpoints").exists()
