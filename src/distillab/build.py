"""Instantiate everything a run needs from the composed config: the one place that knows its shape.

Every check that needs the built objects runs here, before a teacher is trained or a step is taken:
module paths (through `FeatureTaps`), "needs a teacher", the weights naming the terms, DDP support,
the metric a staged weighting follows, and every shape a projector has to bridge (the dry run).
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator
from typing import Any, NamedTuple

import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn

from distillab import distributed
from distillab.data import DataModule
from distillab.errors import ConfigError, InvalidArgument, RunStopped, config_key, first_line
from distillab.experiment import Experiment, forward_pass
from distillab.instantiate import instantiate, locate
from distillab.losses import LossTerm
from distillab.objective import Objective, Outputs
from distillab.optim import build_optimization
from distillab.run_logger import WEIGHT
from distillab.taps import FeatureTaps
from distillab.tasks import Classification, Task
from distillab.weighting import Weighting


def term_key(name: str) -> str:
    """The config key of loss term `name`, as the user set it (`teacher.loss.terms.ce` in a teacher's run)."""
    return config_key(f"loss.terms.{name}")


def student_key() -> str:
    """The config key of the network being trained, as the user set it (`model.teacher` in a teacher's run)."""
    return config_key("model.student")


def needs_teacher(cfg: DictConfig) -> bool:
    """Whether any configured loss term reads a teacher (decided from the classes, nothing is built)."""
    terms = OmegaConf.select(cfg, "loss.terms", default=None)
    if not isinstance(terms, DictConfig) or not terms:
        raise ConfigError(
            f"{config_key('loss.terms')} is empty or not a mapping: a loss config names its terms, e.g. loss=kd (see "
            "conf/loss/)."
        )
    classes = []
    for key, node in terms.items():
        name = str(key)
        target = node.get("_target_") if isinstance(node, DictConfig) else None
        if not isinstance(target, str):
            raise ConfigError(f"{term_key(name)} has no _target_: a term names its class, e.g. distillab.losses.KD.")
        cls = locate(target, f"loss.terms.{name}")
        if not (isinstance(cls, type) and issubclass(cls, LossTerm)):
            raise ConfigError(
                f"{term_key(name)}._target_={target!r} is not a distillab.losses.LossTerm: a loss term subclasses it."
            )
        classes.append(cls)
    return any(cls.needs_teacher for cls in classes)


def build_objective(cfg: DictConfig) -> tuple[Objective, Weighting]:
    terms: dict[str, LossTerm] = {
        name: instantiate(node, key=f"loss.terms.{name}") for name, node in cfg.loss.terms.items()
    }
    weighting: Weighting = instantiate(cfg.weighting, key="weighting")
    if set(weighting.names) != set(terms):
        raise ConfigError(
            f"{config_key('loss.weights')} has entries for {sorted(weighting.names)} but {config_key('loss.terms')} "
            f"defines {sorted(terms)}: give every term exactly one weight."
        )
    return Objective(terms), weighting


def check_terms(objective: Objective, weighting: Weighting, teachers: list[nn.Module], ddp: bool) -> None:
    """What a term or weighting needs of the run: a teacher; one process (trainer.strategy=single)."""
    for name, term in objective.items():
        if term.needs_teacher and not teachers:
            raise ConfigError(
                f"{term_key(name)} needs a teacher but none is configured: choose one, e.g. model/teacher=deep_nn, "
                "or a loss without a teacher such as loss=ce or loss=self_distill."
            )
    if len(teachers) > 1 and not any(term.reads_every_teacher for term in objective.values()):
        raise ConfigError(
            f"teachers lists {len(teachers)} teachers, but no term of this loss reads more than the first "
            "(outputs.teacher): use a loss that reads them all, such as loss=multi_teacher, or list one teacher (a "
            "term of your own that reads outputs.teachers says reads_every_teacher = True)."
        )
    if not ddp:
        return
    for name, term in objective.items():
        if term.init_epochs > 0 or not term.supports_ddp:
            raise ConfigError(
                f"{term_key(name)} does not run under trainer.strategy=ddp yet (an init stage, or per-sample state "
                "in one process): use trainer.strategy=single."
            )
    if not weighting.supports_ddp:
        raise ConfigError(
            f"weighting {type(weighting).__name__} decides its update in one process, so it does not run under "
            "trainer.strategy=ddp: use trainer.strategy=single."
        )


def layer_key(cfg: DictConfig | None, name: str, path: str, side: str) -> str:
    """The config key a user sets for loss term `name`'s layer `path`: the term's argument that lists it, or the key
    that argument copies (`loss.shallow_layers`); else the term and the `side` (student or teacher) it taps."""
    from omegaconf import ListConfig

    from distillab.validate import set_at

    node = OmegaConf.select(cfg, f"loss.terms.{name}", default=None) if cfg is not None else None
    if cfg is None or not isinstance(node, DictConfig):
        return f"{term_key(name)} {side} layer"
    other = "teacher" if side == "student" else "student"
    for argument in map(str, node):  # (fitnet's student_layer and teacher_layer may name the same path)
        value = OmegaConf.select(node, argument, default=None, throw_on_resolution_failure=False)
        listed = path == value or (isinstance(value, ListConfig) and path in list(value))
        if listed and other not in argument and (side in argument or side == "student"):
            return set_at(cfg, f"loss.terms.{name}.{argument}")
    return f"{term_key(name)} {side} layer"


def install_taps(
    objective: Objective, student: nn.Module, teachers: list[nn.Module], cfg: DictConfig | None = None
) -> tuple[FeatureTaps, list[FeatureTaps]]:
    """Hooks on every module path a loss term reads, on the student and on the first teacher (the one
    feature terms read as `outputs.teacher`). A wrong path fails here, naming the key that set it (`cfg`'s, where
    given: `layer_key`) and valid paths."""
    student_paths: dict[str, str] = {}
    teacher_paths: dict[str, str] = {}
    for name, term in objective.items():
        student_paths.update({p: layer_key(cfg, name, p, "student") for p in term.student_taps})
        teacher_paths.update({p: layer_key(cfg, name, p, "teacher") for p in term.teacher_taps})
    teacher_taps = [FeatureTaps(t, teacher_paths if i == 0 else {}) for i, t in enumerate(teachers)]
    return FeatureTaps(student, student_paths), teacher_taps


@contextlib.contextmanager
def naming(key: str) -> Iterator[None]:
    """An argument an object refuses after it was built (a term's `bind_data`, `bind_models`, `setup`; a
    weighting's `check_metrics`, `bind`, `check_training`), named under the object's config key."""
    try:
        yield
    except InvalidArgument as error:
        raise error.named(key) from error


def naming_term(name: str) -> contextlib.AbstractContextManager[None]:
    """`naming` for the loss term `name` (`loss.terms.<name>`)."""
    return naming(f"loss.terms.{name}")


def setup_terms(exp: Parts) -> Any:
    """Each term's `bind_data` sees the training set; then a dry run on one batch (eval mode: no BatchNorm
    statistics move), and each term's `setup` sees the real feature shapes and builds its projectors before
    the optimizer exists. Returns the dry run's outputs, with the student's graph (`check_first_step` runs the
    terms on them)."""
    for name, term in exp.objective.items():
        with naming_term(name):  # state a term sizes from the training set (CRD's memory bank)
            term.bind_data(exp.data)
    batch = next(iter(exp.data.train))
    first = next(exp.student.parameters(), None)
    if first is None:
        raise ConfigError(
            f"{student_key()} ({type(exp.student).__name__}) has no parameters: there is nothing to train; give it "
            "trainable layers."
        )
    device = first.device
    index = batch[2].to(device) if len(batch) > 2 else None
    exp.student.eval()
    try:
        with torch.enable_grad():
            outputs = forward_pass(
                exp.student,
                exp.student_taps,
                exp.teachers,
                exp.teacher_taps,
                batch[0].to(device),
                batch[1].to(device),
                index=index,
            )
    except ConfigError:  # a tap that reads what it cannot use says so itself
        raise
    except (RuntimeError, ValueError, IndexError) as error:
        detail = first_line(error)
        raise ConfigError(
            f"the networks cannot take this data's inputs of shape {tuple(batch[0].shape[1:])} ({detail}): check "
            f"{student_key()}{' and model.teacher' if exp.teachers else ''} (in_channels, image_size) against the "
            f"data's in_channels="
            f"{exp.data.in_channels} and image_size={exp.data.image_size}."
        ) from error
    exp.student.train()
    teacher_keys = (
        ["model.teacher"] if len(outputs.teachers) == 1 else [f"teachers.{i}" for i in range(len(outputs.teachers))]
    )
    named = [(student_key(), outputs.student.out), *zip(teacher_keys, (t.out for t in outputs.teachers))]
    for key, out in named:
        if not isinstance(out, Tensor):
            raise ConfigError(
                f"{key} returns a {type(out).__name__}, not a tensor: a network returns its logits (or output image) "
                "as one tensor; read other outputs through loss taps (student_layer=..., teacher_layer=...)."
            )
    if isinstance(exp.task, Classification):
        for key, out in named:
            if out.dim() != 2 or out.shape[1] != exp.data.num_classes:
                raise ConfigError(
                    f"{key} gives outputs of shape {tuple(out.shape[1:])} per sample, but the data has "
                    f"{exp.data.num_classes} classes: set its num_classes to {exp.data.num_classes} (or leave it at "
                    "${data.num_classes})."
                )
    for name, term in exp.objective.items():
        with naming_term(name):  # parts a term builds from the shapes (its projectors)
            term.setup(outputs)
    return outputs


def check_labels(targets: Tensor, num_classes: int, where: str) -> None:
    """Class indices: integers from 0 to num_classes - 1 (cross-entropy's contract, checked before it crashes)."""
    if targets.is_floating_point() or targets.is_complex() or targets.dtype == torch.bool:
        raise ConfigError(
            f"{where} has labels of dtype {targets.dtype}: a classification batch holds integer class indices "
            f"(torch.long) from 0 to {num_classes - 1}; convert them (labels.long())."
        )
    if targets.numel() == 0:
        return
    low, high = int(targets.min()), int(targets.max())
    if low < 0 or high >= num_classes:
        bad = low if low < 0 else high
        raise ConfigError(
            f"{where} has the label {bad}, outside 0 to {num_classes - 1} (data.num_classes={num_classes}): fix the "
            "labels, or set data.num_classes to the number of classes."
        )


def check_first_step(exp: Parts, outputs: Outputs, device: torch.device, weighting: Weighting) -> None:
    """What the first training step and the first validation will meet, checked now (before a teacher trains):
    the labels; a validation batch through the student; every term's forward on the dry run's `outputs`,
    returning a finite scalar that depends on the student; the weighting's forward on those values. The terms'
    and the weighting's state (a memory bank, GradNorm's weights) and the random generators are put back
    afterwards: the run trains as if the check had not happened."""
    from distillab.checkpoint import rng_state, set_rng_state

    if isinstance(exp.task, Classification):
        try:
            targets = exp.data.train_targets
        except ConfigError:  # a loader that does not expose them: the first batch's
            targets = outputs.targets
        check_labels(targets, exp.data.num_classes, "the training data")
    if outputs.inputs.is_floating_point() and not bool(torch.isfinite(outputs.inputs).all()):
        raise ConfigError("the training data's first batch holds NaN or Inf inputs: clean the data (or its transform).")
    check_validation_batch(exp, device)
    saved, rng = copy.deepcopy(exp.objective.state_dict()), rng_state()
    weighting_state = copy.deepcopy(weighting.state_dict())
    values: dict[str, Tensor] = {}
    try:
        with torch.enable_grad():
            for name, term in exp.objective.items():
                try:
                    value = term(outputs)
                except (ConfigError, RunStopped):
                    raise
                except Exception as error:
                    tapped = [outputs.student, *outputs.teachers[:1]]
                    tokens = [p for out in tapped for p, f in out.features.items() if f.dim() == 3]
                    hint = f" ({', '.join(tokens)} give tokens: tap them as maps, {tokens[0]}:map)" if tokens else ""
                    raise ConfigError(
                        f"{term_key(name)} fails on the first batch ({type(error).__name__}: {first_line(error)}): "
                        f"check its layers and arguments against these networks{hint}."
                    ) from error
                check_term_value(name, value)
                values[name] = value
            check_weighting_output(weighting, torch.stack([values[n] for n in weighting.names]))
    finally:
        exp.objective.load_state_dict(saved)
        weighting.load_state_dict(weighting_state)
        set_rng_state(rng)


def check_weighting_output(weighting: Weighting, losses: Tensor) -> None:
    """A weighting returns `(total, weights)`: a scalar tensor, and one detached weight per term in `names` order
    (what the loop logs as `loss_weight/<term>`; a wrong length would land in other tags), which its next call
    leaves as they were (the loop sums several steps' weights at once: `RunningSums`)."""
    names = weighting.names
    returned = weighting(losses)
    total, weights = returned if isinstance(returned, tuple) and len(returned) == 2 else (None, None)
    as_returned = None
    if isinstance(weights, Tensor):
        as_returned = weights.clone()
        weighting(losses)  # the caller restores the weighting's state
    if not isinstance(total, Tensor) or total.numel() != 1:
        problem = "does not return (total, weights) with a scalar total"
    elif not isinstance(weights, Tensor) or tuple(weights.shape) != (len(names),):
        shape = tuple(weights.shape) if isinstance(weights, Tensor) else type(weights).__name__
        problem = f"returns weights of shape {shape} for {len(names)} terms"
    elif weights.requires_grad:
        problem = "returns weights that require grad"
    elif as_returned is not None and not torch.equal(weights, as_returned):
        problem = (
            "changes the weights it returned at its next call (a tensor it updates in place; the logged weights "
            "would be a later step's): return a copy, e.g. .detach().clone()"
        )
    else:
        return
    raise ConfigError(
        f"weighting ({type(weighting).__name__}) {problem}: a weighting's forward returns the weighted total and "
        f"one detached weight per term, in the order {', '.join(names)}."
    )


def check_term_value(name: str, value: object) -> None:
    """A loss term returns a finite scalar tensor with a gradient (the contract of `LossTerm.forward`)."""
    key = term_key(name)
    if not isinstance(value, Tensor):
        problem = f"returns a {type(value).__name__}, not a tensor"
    elif value.numel() != 1:
        problem = f"returns a tensor of shape {tuple(value.shape)}, not a scalar (reduce it, e.g. with .mean())"
    elif not value.is_floating_point():
        problem = f"returns a {value.dtype} tensor, not a floating-point one"
    elif not value.requires_grad:
        problem = "returns a tensor without a gradient (detached, or computed under no_grad)"
    elif not bool(torch.isfinite(value.detach()).all()):
        problem = f"gives {value.item()} on the first batch"
    else:
        return
    raise ConfigError(
        f"{key} {problem}: a loss term returns a finite scalar tensor computed from the outputs, so that training can "
        "take its gradient."
    )


def check_validation_batch(exp: Parts, device: torch.device) -> None:
    """A validation batch goes through the student as validation will take it (eval mode, no gradients)."""
    try:
        batch = next(iter(exp.data.val))
    except StopIteration:
        raise ConfigError("the validation set is empty: give data a validation split with samples.") from None
    x, y = batch[0].to(device), batch[1].to(device)
    exp.student.eval()
    try:
        with torch.no_grad():
            out = exp.student(x)
            exp.student_taps.pop()
    except (RuntimeError, ValueError, IndexError) as error:
        raise ConfigError(
            f"{student_key()} cannot take the validation inputs of shape {tuple(x.shape[1:])} ({first_line(error)}): "
            "give the validation split the training inputs' shape (the same transforms, image size and channels)."
        ) from error
    finally:
        exp.student.train()
    if isinstance(exp.task, Classification):
        check_labels(y, exp.data.num_classes, "the validation data")
        if out.dim() != 2 or out.shape[1] != exp.data.num_classes:
            raise ConfigError(
                f"{student_key()} gives outputs of shape {tuple(out.shape[1:])} on the validation inputs: give the "
                "validation split the training inputs' shape (the same transforms, image size and channels)."
            )


def param_groups(student: nn.Module, objective: Objective, weighting: Weighting) -> list[dict]:
    """The student and every term's own parameters (projectors) train together; a weighting's
    parameters get a group of their own (their learning rate, no weight decay)."""
    groups: list[dict[str, Any]] = [{"name": "model", "params": [*student.parameters(), *objective.parameters()]}]
    weighting_params = list(weighting.parameters())
    if weighting_params:
        group = {"name": "weighting", "params": weighting_params, "weight_decay": 0.0}
        if weighting.lr is not None:
            group["lr"] = weighting.lr
        groups.append(group)
    return groups


def build_data(cfg: DictConfig) -> DataModule:
    """The run's data; under `trainer.strategy=ddp` this rank's shard."""
    ddp = OmegaConf.select(cfg, "trainer.strategy", default="single") == "ddp"
    with distributed.main_rank_first() if ddp else contextlib.nullcontext():  # rank 0 downloads, the others then read
        data: DataModule = instantiate(cfg.data, key="data")
    return data.shard(distributed.rank(), distributed.world_size()) if ddp else data


def build_experiment(
    cfg: DictConfig, device: torch.device, teachers: list[nn.Module] | None = None, data: DataModule | None = None
) -> Experiment:
    """`teachers` are built and frozen (`teacher.build_teachers`); their weights may be loaded later. `data`: the
    run's (`build_data`), built here when not given. Under `trainer.strategy=ddp` the data is this rank's shard."""
    teachers = teachers or []
    ddp = OmegaConf.select(cfg, "trainer.strategy", default="single") == "ddp"
    data = build_data(cfg) if data is None else data
    task: Task = instantiate(cfg.task, key="task")
    student: nn.Module = instantiate(cfg.model.student, key="model.student").to(device)
    objective, weighting = build_objective(cfg)
    check_terms(objective, weighting, teachers, ddp)
    validation = [f"val/{m}" for m in task.metrics]
    check_monitor("task.monitor", task.monitor, validation)
    with naming("weighting"):
        weighting.check_metrics(
            [*validation, *(f"loss/{n}" for n in weighting.names), *(f"{WEIGHT}{n}" for n in weighting.names)]
        )
    for name, term in objective.items():  # before the taps: a term may rebuild the student's head (SimKD)
        with naming_term(name):
            term.bind_models(student, teachers)
    student_taps, teacher_taps = install_taps(objective, student, teachers, cfg)
    parts = Parts(data, task, student, objective, student_taps, teachers, teacher_taps)
    outputs = setup_terms(parts)
    objective, weighting = objective.to(device), weighting.to(device)
    check_first_step(parts, outputs, device, weighting)
    with naming("weighting"):
        weighting.bind(student)
    optim = build_optimization(
        cfg.optim, param_groups(student, objective, weighting), len(data.train), epochs=cfg.trainer.max_epochs
    )
    with naming("weighting"):
        weighting.check_training(optim.optimizer, cfg.trainer)
    if cfg.trainer.get("cuda_graph") and weighting.decides_in_backward():
        raise ConfigError(
            f"trainer.cuda_graph=true cannot capture the step of weighting {type(weighting).__name__}, which decides "
            "in its own backward pass (reading values on the host): use trainer.cuda_graph=false, or a weighting on "
            "loss values such as fixed, learnable or uncertainty."
        )
    if optim.monitor is not None:
        check_monitor("optim.scheduler.monitor", optim.monitor, validation)
    return Experiment(data, task, student, objective, weighting, optim, student_taps, teachers, teacher_taps)


class Parts(NamedTuple):
    """An experiment's parts before its optimizer exists, which is built from the projectors these size: what the
    dry run (`setup_terms`) and the checks before training read, under the names `Experiment` gives them."""

    data: DataModule
    task: Task
    student: nn.Module
    objective: Objective
    student_taps: FeatureTaps
    teachers: list[nn.Module]
    teacher_taps: list[FeatureTaps]


def check_monitor(key: str, value: str, available: list[str]) -> None:
    """A metric followed after each epoch must be one the task reports (checked before the first epoch)."""
    if value not in available:
        raise ConfigError(
            f"{config_key(key)}={value!r} is not a metric of this task: use one of {', '.join(available)}."
        )
