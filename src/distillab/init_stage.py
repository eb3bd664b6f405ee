"""Init stages: before the main training, loss terms with `init_epochs > 0` (FSP, AB, FT) train their
`init_modules` alone on their `init_loss`, as RepDistiller's `helper/pretrain.py` does.

Per term: a fresh optimizer of the run's kind and settings (learning rate: the term's `init_lr`, else the
run's), no schedule, `init_epochs` epochs over the training data in the run's batch order; the student
is in train mode only when the stage trains it, the teachers stay frozen. The mean loss of each epoch is
logged as `init/<term>` (step = epoch); `optim.grad_clip_norm` applies, and a non-finite epoch mean stops
the run (unless `trainer.nan_policy=off`). A resumed run (a `last.pt` exists) has its init stages behind it.
"""

from __future__ import annotations

import logging
import math
import signal
from typing import TYPE_CHECKING

import torch

from distillab.errors import Interrupted, NonFiniteLoss
from distillab.trainer import StopSignals, set_epoch

if TYPE_CHECKING:
    from distillab.build import Experiment
    from distillab.logging import RunLogger
    from distillab.losses import LossTerm
    from distillab.trainer import Trainer

log = logging.getLogger(__name__)


def has_init_stage(term: torch.nn.Module) -> bool:
    return getattr(term, "init_epochs", 0) > 0


def run_init_stages(exp: Experiment, trainer: Trainer, logger: RunLogger) -> None:
    staged = {name: term for name, term in exp.objective.terms.items() if has_init_stage(term)}
    if staged:
        trainer.prepare(exp)  # channels_last and compile as in the main training
    for name, term in staged.items():
        run_init_stage(name, term, exp, trainer, logger)  # type: ignore[arg-type]


def run_init_stage(name: str, term: LossTerm, exp: Experiment, trainer: Trainer, logger: RunLogger) -> None:
    modules = term.init_modules(exp.student)
    params = list({id(p): p for m in modules for p in m.parameters() if p.requires_grad}.values())
    main = exp.optim.optimizer
    settings = {**main.defaults, "lr": term.init_lr if term.init_lr is not None else main.defaults["lr"]}
    # as one parameter group: `defaults` may hold keys the constructor does not take (AdamW's decoupled_weight_decay)
    optimizer = type(main)([{**settings, "params": params}], lr=settings["lr"])
    scaler = trainer.new_scaler()
    trains_student = any(m is exp.student for m in modules)
    log.info("init stage of loss term %s: %d epochs, %d parameters, lr %g", name, term.init_epochs, sum(p.numel() for p in params), settings["lr"])
    with StopSignals() as signals:
        for epoch in range(term.init_epochs):
            set_epoch(exp.data.train, epoch)
            exp.student.train(trains_student)
            for module in modules:
                module.train()
            total, steps = torch.zeros((), device=trainer.device), 0
            for batch in exp.data.train:
                x, y, index = trainer.to_device(batch)
                with trainer.autocast():
                    with torch.set_grad_enabled(trains_student):  # the student's graph only when it learns here
                        outputs = exp.forward(x, y, index)
                    loss = term.init_loss(outputs)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                if exp.optim.grad_clip_norm is not None:  # optim.grad_clip_norm applies here too
                    scaler.unscale_(optimizer)
                    torch.nn.utils.clip_grad_norm_(params, exp.optim.grad_clip_norm)
                scaler.step(optimizer)
                scaler.update()
                total, steps = total + loss.detach(), steps + 1
                if signals.signum:
                    raise Interrupted(
                        f"Interrupted by {signal.Signals(signals.signum).name} during the init stage of loss term {name} "
                        f"(epoch {epoch + 1} of {term.init_epochs}); nothing is saved before the main training starts, "
                        "so a resume runs the init stage again",
                        signals.signum,
                    )
            mean = float(total) / max(steps, 1)  # one read per epoch
            if not math.isfinite(mean) and trainer.nan_policy != "off":
                raise NonFiniteLoss(
                    f"The init stage of loss term {name} became non-finite in epoch {epoch + 1}; nothing is saved before the main "
                    "training starts (lower loss.init_lr or set optim.grad_clip_norm)."
                )
            logger.scalars({f"init/{name}": mean}, epoch + 1)
            log.info("init stage %s: epoch %d/%d  init/%s=%.4g", name, epoch + 1, term.init_epochs, name, mean)
