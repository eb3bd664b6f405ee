"""The small interface every loss term implements beyond `nn.Module.forward(outputs) -> scalar`."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, ParamSpec, TypeVar

import torch
from torch import Tensor, nn

from distillab import checks
from distillab.errors import InvalidArgument
from distillab.objective import Outputs
from distillab.taps import submodule

if TYPE_CHECKING:
    from distillab.data import DataModule


P = ParamSpec("P")
R = TypeVar("R")


def in_float32(reduction: Callable[P, R]) -> Callable[P, R]:
    """Run a term's reduction in float32 (float64 stays float64) with autocast off. Under bf16-mixed, autocast
    runs matmuls in bf16 and leaves sums and norms in the inputs' bf16, whose 8-bit significand put PKT 24-47% and
    NST 1-2% off their float32 values; logit terms promote themselves the same way."""

    @functools.wraps(reduction)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        tensors = [a for a in args if isinstance(a, Tensor)]
        device = tensors[0].device.type if tensors else "cpu"
        promoted = [
            a.to(torch.promote_types(a.dtype, torch.float32)) if isinstance(a, Tensor) and a.is_floating_point() else a
            for a in args
        ]
        with torch.autocast(device, enabled=False):
            return reduction(*promoted, **kwargs)  # type: ignore[arg-type]

    return wrapper


class LossTerm(nn.Module):
    """Base class for loss terms; every term (task losses included) is one, so callers read these
    attributes and hooks directly.

    - `needs_teacher`: the run must configure a teacher (checked before training).
    - `reads_every_teacher`: the term reads `outputs.teachers`, all of them (MultiTeacherKD); a run that lists
      several teachers needs such a term, or it would train and evaluate teachers nobody reads.
    - `supports_ddp`: False where the term keeps state in one process (trainer.strategy=ddp refuses it).
    - `student_taps` / `teacher_taps`: dotted module paths whose outputs the term reads from
      `outputs.student.features` / `outputs.teacher.features` (the build installs the hooks).
    - `bind_data(data)`: called once, before `setup`, with the run's `DataModule`; terms that keep state
      per training sample (CRD's memory bank: one row per `data.train_targets`) size it here.
      Such terms read each batch's sample indices from `outputs.index`.
    - `bind_models(student, teachers)`: called once, before the taps are installed and before `setup`, with the
      networks; terms that read a network's own layers (CAT-KD's classifier weights) keep them here, unregistered
      (not as submodules: the networks' parameters stay theirs), and a term that changes the student's head
      (SimKD) does it here. Such a term says `fuses = False`: it runs alone in a fused sweep, whose students are
      stacked.
    - `setup(outputs)`: called once, before the optimizer exists, with the outputs of a dry run on one
      batch; build shape-dependent parts (projectors) here so their parameters are optimized.
    - An init stage (`init_epochs > 0`; FSP, AB, FT): before the main training, `init_modules(student)`
      alone are trained on `init_loss(outputs)` for `init_epochs` epochs, with the run's optimizer settings
      and `init_lr` if set (`distillab.training.stages`).
    - `set_epoch(epoch)`: called at the start of every epoch of the main training (0-based; again on resume), for
      terms whose behaviour follows a curriculum (CTKD's reversal strength).
    - `scalars()`: named scalar tensors of the term's own state (CTKD's temperature), logged at each log point
      as `<name>/<term>` next to the weights.

    A term checks its own arguments in `__init__` (`distillab.checks`), and refuses one in `bind_data`,
    `bind_models` or `setup` the same way (`InvalidArgument`, naming the argument, never a config key): the build
    prefixes the term's config key, so a bad one is one sentence naming the key before anything trains.
    """

    needs_teacher: bool = False
    reads_every_teacher: bool = False
    supports_ddp: bool = True
    fuses: bool = (
        True  # False: reads or changes the networks' own layers (`bind_models`), so it runs alone in a fused sweep
    )
    init_epochs: int = 0
    init_lr: float | None = None

    def __init__(self) -> None:
        super().__init__()
        self.student_taps: list[str] = []
        self.teacher_taps: list[str] = []

    def set_init_stage(self, init_epochs: int, init_lr: float | None) -> None:
        self.init_epochs = checks.integer("init_epochs", init_epochs, at_least=0)
        self.init_lr = None if init_lr is None else checks.number("init_lr", init_lr, above=0)

    def bind_data(self, data: DataModule) -> None:
        """Nothing to size by default."""

    def bind_models(self, student: nn.Module, teachers: Sequence[nn.Module]) -> None:
        """Reads no network's layers by default."""

    def setup(self, outputs: Outputs) -> None:
        """Nothing to set up by default."""

    def set_epoch(self, epoch: int) -> None:
        """No curriculum by default."""

    def scalars(self) -> dict[str, Tensor]:
        """No state of its own to log by default."""
        return {}

    def init_modules(self, student: nn.Module) -> list[nn.Module]:
        """What the init stage trains (only called when `init_epochs > 0`)."""
        raise NotImplementedError

    def init_loss(self, outputs: Outputs) -> Tensor:
        """The init stage's loss (only called when `init_epochs > 0`)."""
        raise NotImplementedError

    def forward(self, outputs: Outputs) -> Tensor:
        raise NotImplementedError


def linear_classifier(network: nn.Module, path: str, argument: str, role: str) -> nn.Linear:
    """The `nn.Linear` at `path` in `network` (a term that reads or reuses a network's classifier: CAT-KD, SimKD);
    anything else is refused naming `argument` (prefixed with the term's config key by the build)."""
    role_path = f"the module path of the {role}'s nn.Linear classifier that follows its global pooling"
    module = submodule(network, path, argument, role_path)
    if not isinstance(module, nn.Linear):
        linears = [name for name, m in network.named_modules() if isinstance(m, nn.Linear)]
        raise InvalidArgument(
            argument,
            path,
            f"{role_path} ({type(network).__name__}'s linear layers: {', '.join(linears) or 'none'})",
        )
    return module
