"""Every loss choice under stress: float32 and bf16 autocast, channels_last, square, non-square and unequal
feature maps, logit gaps of 0, 30 and 500, batches of 1, 2 and 3.

For each combination every term of the loss config gives a finite value; in float32 it is within 1e-5
(relative) of the independent float64 computation in `tests/loss_references.py`; gradients are finite,
reach the student's outputs (and the term's own projectors), and never the frozen teacher.
"""

from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass
from types import SimpleNamespace

import pytest
import torch
from omegaconf import DictConfig
from torch import Tensor, nn

from distillab.config import compose, config_dir
from distillab.instantiate import instantiate
from distillab.objective import ModelOutput, Outputs
from distillab.teacher import freeze
from tests.loss_references import reference

LOSSES = sorted(p.stem for p in (config_dir() / "loss").glob("*.yaml"))
NUM_CLASSES = 10
TRAIN_TARGETS = torch.arange(12) % 3  # CRD's memory bank: 12 training samples of 3 classes
GAPS = (0.0, 30.0, 500.0)
BATCHES = (1, 2, 3)


@dataclass(frozen=True)
class Case:
    precision: str  # "32" or "bf16"
    channels_last: bool
    maps: str  # "square", "non-square" or "unequal"
    gap: float
    batch: int

    def __str__(self) -> str:
        layout = "channels_last " if self.channels_last else ""
        return f"{self.precision} {layout}{self.maps} maps, gap {self.gap:g}, batch {self.batch}"


CASES = [
    Case(*c)
    for c in itertools.product(("32", "bf16"), (False, True), ("square", "non-square", "unequal"), GAPS, BATCHES)
]

# Terms whose student feature goes through a conv projector (which pools, never enlarges): in "unequal",
# the student's map is larger in both dimensions; every other term gets 8x2 against the teacher's 4x4.
THROUGH_PROJECTOR = {"FeatureMSE", "ActivationBoundaries", "SelfDistillation"}
# BatchNorm in the term's own modules needs more than one value per channel in train mode.
NEEDS_TWO_VALUES = {"ReviewKD"}
# Relations between the samples of a batch: a batch of one has none, and these terms are 0 there.
BATCH_RELATIONS = {"RKD", "CC"}


def sizes(term: nn.Module, maps: str) -> tuple[tuple[int, int], tuple[int, int]]:
    """(student, teacher) spatial size of the first tapped pair."""
    if maps == "square":
        return (4, 4), (4, 4)
    if maps == "non-square":
        return (6, 4), (6, 4)
    return ((8, 6) if type(term).__name__ in THROUGH_PROJECTOR else (8, 2)), (4, 4)


def halved(size: tuple[int, int], times: int) -> tuple[int, int]:
    return tuple(max(1, s // 2**times) for s in size)  # type: ignore[return-value]


def feature_shapes(term: nn.Module, maps: str) -> tuple[dict[str, tuple[int, ...]], dict[str, tuple[int, ...]]]:
    """Per tapped path, the (C, H, W) shape this case gives it: deeper taps of a list are smaller."""
    name = type(term).__name__
    s_size, t_size = sizes(term, maps)
    student: dict[str, tuple[int, ...]] = {}
    teacher: dict[str, tuple[int, ...]] = {}
    s_taps, t_taps = list(getattr(term, "student_taps", [])), list(getattr(term, "teacher_taps", []))
    if name == "SelfDistillation":
        s_taps = [*term.shallow, term.deep]
    for i, path in enumerate(s_taps):
        if name == "FSP":  # consecutive layers: equal channels per pair, the size halves every second layer
            student[path] = (2 + i, *halved(s_size, i // 2))
        elif name == "SelfDistillation" and path == term.deep:
            student[path] = (5, *halved(s_size, 1))
        elif name == "Cosine":
            student[path] = (2, *s_size)  # half the teacher's width: pooled 2:1
        elif name == "SimKD":
            student[path] = (5, *s_size)  # the projector's output: the teacher's channels
        else:
            student[path] = (3 + i, *halved(s_size, i if name in ("ReviewKD",) else 0))
    for i, path in enumerate(t_taps):
        if name == "FSP":
            teacher[path] = (2 + i, *halved(t_size, i // 2))
        elif name == "Cosine":
            c = 4 * (s_size[0] * s_size[1]) // (t_size[0] * t_size[1])
            teacher[path] = (c, *t_size)
        else:
            teacher[path] = (5 + i, *halved(t_size, i if name == "ReviewKD" else 0))
    return student, teacher


def logits(batch: int, gap: float, targets: Tensor, generator: torch.Generator) -> Tensor:
    """Random logits whose target entry leads every other by `gap`."""
    z = torch.randn(batch, NUM_CLASSES, generator=generator)
    others = z.scatter(1, targets[:, None], -torch.inf).max(1).values
    return z.scatter(1, targets[:, None], (others + gap)[:, None])


class FrozenTeacher(nn.Module):
    """Stands for the teacher network: its outputs are a frozen parameter times fixed inputs, made under
    no_grad as the trainer makes them, so a gradient that reached the teacher would show on `scale`."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, x: Tensor) -> Tensor:
        return self.scale * x


@dataclass
class Batch:
    """One case's tensors in float32; `view` gives them in a dtype and layout, the student's as leaves that
    require grad, the teacher's through the frozen teacher under no_grad."""

    out: Tensor
    targets: Tensor
    student: dict[str, Tensor]
    teachers: list[tuple[Tensor, dict[str, Tensor]]]
    index: Tensor

    def view(self, dtype: torch.dtype, channels_last: bool, teacher: FrozenTeacher) -> tuple[Outputs, list[Tensor]]:
        layout = torch.channels_last if channels_last else torch.contiguous_format

        def cast(x: Tensor) -> Tensor:
            x = x.to(dtype)
            return x.contiguous(memory_format=layout) if x.dim() == 4 else x

        leaves: list[Tensor] = []

        def leaf(x: Tensor) -> Tensor:
            x = cast(x).detach().requires_grad_(True)
            leaves.append(x)
            return x

        out = leaf(self.out)
        features = {path: leaf(f) for path, f in self.student.items()}
        targets = cast(self.targets) if self.targets.is_floating_point() else self.targets
        with torch.no_grad():
            teachers = [
                ModelOutput(teacher(cast(o)), {p: teacher(cast(f)) for p, f in feats.items()})
                for o, feats in self.teachers
            ]
        return Outputs(
            inputs=out, targets=targets, student=ModelOutput(out, features), teachers=teachers, index=self.index
        ), leaves

    def rounded_to_bf16(self) -> Batch:
        """The same tensors rounded to bfloat16 (and kept in float32): what a bf16 case's terms see."""

        def rounded(x: Tensor) -> Tensor:
            return x.bfloat16().float() if x.is_floating_point() else x

        return dataclasses.replace(
            self,
            out=rounded(self.out),
            targets=rounded(self.targets),
            student={k: rounded(v) for k, v in self.student.items()},
            teachers=[(rounded(o), {k: rounded(f) for k, f in fs.items()}) for o, fs in self.teachers],
        )


def make_batch(terms: dict[str, nn.Module], case: Case, n_teachers: int, image_task: bool) -> Batch:
    g = torch.Generator().manual_seed(int(case.gap) * 7 + case.batch)
    index = torch.arange(case.batch)
    targets = TRAIN_TARGETS[index]
    s_shapes: dict[str, tuple[int, ...]] = {}
    t_shapes: dict[str, tuple[int, ...]] = {}
    for term in terms.values():
        s, t = feature_shapes(term, case.maps)
        s_shapes.update(s)
        t_shapes.update(t)

    def randn(shape: tuple[int, ...], scale: float = 1.0) -> Tensor:
        return scale * torch.randn(case.batch, *shape, generator=g)

    if image_task:  # reconstruction: the student's output is an image, the targets are images in [0, 1]
        image = (6, 8) if case.maps == "non-square" else (8, 8)
        out, targets = torch.rand(case.batch, 1, *image, generator=g), torch.rand(case.batch, 1, *image, generator=g)
    else:
        out = logits(case.batch, case.gap, targets, g)
    student = {path: randn(shape) for path, shape in s_shapes.items()}
    teachers = [
        (randn((NUM_CLASSES,), 3.0), {p: randn(shape) for p, shape in t_shapes.items()} if i == 0 else {})
        for i in range(n_teachers)
    ]
    return Batch(out, targets, student, teachers, index)


def fixed_negatives(term: nn.Module) -> None:
    """CRD draws random negatives; the float32 run and the reference must use the same ones."""
    k = term.negatives

    def draw(labels: Tensor) -> Tensor:
        return torch.stack([torch.nonzero(label != TRAIN_TARGETS).flatten()[:k] for label in labels.tolist()])

    term.draw_negatives = draw


def classified(batch: Batch) -> tuple[nn.Module, list[nn.Module]]:
    """Stand-ins for the networks, for terms that read their classifier (CAT-KD, SimKD): an `avgpool` and an `fc`
    sized to each network's last tapped map, seeded (the teacher's frozen)."""

    def network(features: dict[str, Tensor], seed: int) -> nn.Module:
        net = nn.Module()
        torch.manual_seed(seed)
        net.avgpool = nn.AdaptiveAvgPool2d(1)  # SimKD puts its projector in front of it
        net.fc = nn.Linear(list(features.values())[-1].shape[1] if features else 1, NUM_CLASSES)
        return net

    return network(batch.student, 1), [freeze(network(batch.teachers[0][1], 2))]


def build_terms(cfg: DictConfig) -> dict[str, nn.Module]:
    return {name: instantiate(node) for name, node in cfg.loss.terms.items()}


def bf16_tolerance(term: nn.Module) -> float:
    """Under bf16 autocast every term reduces in float32 (`losses.base.in_float32`, or the logit terms' own
    promotion): on the same bf16-rounded inputs, a term without layers of its own agrees with float64 to
    float32's accuracy (measured: at most 5e-7 relative; 1e-5 relative or 1e-7 absolute allowed, as in float32).
    A term whose own layers run under autocast (projectors, FSP/FT/AB's parts, SSIM's window convolution)
    computes them in bf16 by design: each rounding is up to 2^-8 (0.4%) relative; measured at most 0.9%, and
    2e-2 allowed."""
    has_layers = any(True for _ in term.parameters()) or type(term).__name__ in ("SSIM", "FSP")
    return 2e-2 if has_layers else 1e-5


def applies(term: nn.Module, case: Case) -> bool:
    name = type(term).__name__
    # ReviewKD's ABF BatchNorms see one value per channel on the 1x1 level at batch 1: undefined, as in the reference
    return not (case.batch == 1 and name in NEEDS_TWO_VALUES)


@pytest.mark.parametrize("loss", LOSSES)
def test_every_term_is_finite_matches_float64_and_trains_only_the_student(loss: str) -> None:
    cfg = compose([f"loss={loss}", *(["loss.negatives=4"] if loss == "crd" else [])])
    n_teachers, image_task = len(cfg.teachers) if cfg.get("teachers") else 1, loss == "combined"
    checked = 0
    for case in CASES:
        terms = build_terms(cfg)
        if not all(applies(t, case) for t in terms.values()):
            continue
        torch.manual_seed(0)
        batch = make_batch(terms, case, n_teachers, image_task)
        teacher = freeze(FrozenTeacher())
        dtype = torch.bfloat16 if case.precision == "bf16" else torch.float32
        outputs, leaves = batch.view(dtype, case.channels_last, teacher)
        for term in terms.values():
            if hasattr(term, "bind_data"):
                term.bind_data(SimpleNamespace(train_targets=TRAIN_TARGETS, views_per_sample=1))
            term.bind_models(*classified(batch))
            if type(term).__name__ == "CRD":
                fixed_negatives(term)
            if hasattr(term, "setup"):
                term.setup(batch.view(torch.float32, False, teacher)[0])  # the trainer's dry run: float32
        where = f"{loss}, {case}"
        # before the terms run: CRD's memory and Z change when it does. Under bf16 the reference sees the same
        # bf16-rounded inputs, in float64: what is compared is the term's computation, not the inputs' rounding.
        exact, exact_leaves = (batch if case.precision == "32" else batch.rounded_to_bf16()).view(
            torch.float64, False, teacher
        )
        expected = {name: reference(term, exact) for name, term in terms.items()}
        if case.precision == "32":
            expected_grads = torch.autograd.grad(sum(expected.values()), exact_leaves, allow_unused=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=case.precision == "bf16"):
            values = {name: term(outputs) for name, term in terms.items()}
        for name, value in values.items():
            assert value.dim() == 0 and torch.isfinite(value), f"{where}: {name}={value}"
            if case.precision == "32":
                assert value.dtype == torch.float32, where
                assert value.item() == pytest.approx(expected[name].item(), rel=1e-5, abs=1e-7), f"{where}: {name}"
            else:
                rel = bf16_tolerance(terms[name])
                assert value.item() == pytest.approx(expected[name].item(), rel=rel, abs=1e-7), f"{where}: {name}"
        sum(values.values()).backward()
        assert any(leaf.grad is not None for leaf in leaves), f"{where}: no gradient reached the student"
        assert all(torch.isfinite(leaf.grad).all() for leaf in leaves if leaf.grad is not None), (
            f"{where}: non-finite student gradient"
        )
        if case.precision == "32":  # which student outputs get a gradient, and its value
            largest = max((g.abs().max().item() for g in expected_grads if g is not None), default=0.0)
            atol = max(1e-4 * largest, 1e-8)  # relative to the largest entry of any output; e^-30 is 0 in float32
            for leaf, exact_grad in zip(leaves, expected_grads):
                grad = torch.zeros_like(leaf) if leaf.grad is None else leaf.grad
                exact_grad = torch.zeros_like(grad, dtype=torch.float64) if exact_grad is None else exact_grad
                torch.testing.assert_close(
                    grad.double(), exact_grad, rtol=1e-4, atol=atol, msg=lambda m: f"{where}: {m}"
                )
        own = [p for term in terms.values() for p in term.parameters()]
        assert all(p.grad is None or torch.isfinite(p.grad).all() for p in own), (
            f"{where}: non-finite gradient of the term's own parts"
        )
        if own and not (case.batch == 1 and any(type(t).__name__ in BATCH_RELATIONS for t in terms.values())):
            assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in own), (
                f"{where}: the term's own parts got no gradient"
            )
        assert teacher.scale.grad is None, f"{where}: a gradient reached the teacher"
        checked += 1
    assert checked >= len(CASES) * 2 // 3  # most combinations apply to every loss
