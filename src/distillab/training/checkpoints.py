"""`checkpoints/last.pt` and `best.pt`: every module's and optimizer's state, the loop's progress and the RNG
states, written atomically by rank 0 (with every rank's own running sums under DDP), and restored exactly."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from distillab import distributed
from distillab.checkpoint import rng_state, save_atomic
from distillab.errors import ConfigError, first_line
from distillab.training.state import Progress

if TYPE_CHECKING:
    from distillab.training.group import Member
    from distillab.training.loop import Trainer


def state(member: Member) -> dict[str, Any]:
    exp, p = member.exp, member.p
    stage = member.stages[p.stage]
    assert member.scaler is not None
    return {
        "epoch": p.epoch if stage.main else 0,  # main-training epochs done
        "stage": p.stage,
        "step": p.step,
        "student": exp.student.state_dict(),
        "objective": exp.objective.state_dict(),
        "weighting": exp.weighting.state_dict(),
        "optim": exp.optim.state_dict(),
        "stage_optim": None if stage.main else stage.optim.state_dict(),
        "scaler": member.scaler.state_dict(),
        "progress": p.state_dict(),
        "rng": rng_state(),
    }


def save(trainer: Trainer, member: Member, path: Path) -> None:
    """Under DDP every rank holds the same modules and optimizer; rank 0 writes them, with every rank's own
    not-yet-flushed running sums (its share of the metrics since the last log)."""
    p = member.p
    sums = (
        distributed.gather_objects({"sums": p.sums.state_dict(), "norms": p.norms.state_dict()})
        if trainer.ddp
        else None
    )
    if distributed.is_main():
        save_atomic({**state(member), **({"rank_sums": sums} if sums else {})}, path)


def restore(trainer: Trainer, member: Member, checkpoint: Mapping[str, Any]) -> Progress:
    """Load a `state` checkpoint into the member's experiment and stages; the RNG states it holds are set when
    training starts (`Trainer.fit_group`), as they were when it was written."""
    exp, stages = member.exp, member.stages
    try:
        exp.student.load_state_dict(checkpoint["student"])
        exp.objective.load_state_dict(checkpoint["objective"])
        exp.weighting.load_state_dict(checkpoint["weighting"])
        exp.optim.load_state_dict(checkpoint["optim"])
        progress = Progress.from_state_dict(checkpoint["progress"], trainer.device)
        if progress.stage >= len(stages):
            raise ValueError(f"it was in stage {progress.stage + 1}, and this run has {len(stages)}")
        stage = stages[progress.stage]
        if not stage.main:
            stage.optim.load_state_dict(checkpoint["stage_optim"])
        if checkpoint.get("scaler") and member.scaler is not None:
            member.scaler.load_state_dict(checkpoint["scaler"])
        if progress.stage_steps:
            # The stage ran steps before the interruption (so its optimizer stepped, unless the NaN policy or the
            # GradScaler skipped every one), but PyTorch's check that `lr_scheduler.step()` follows
            # `optimizer.step()` sees only this process: resumed at an epoch's end, the epoch's scheduler step
            # comes first and would warn, wrongly. This is the flag the scheduler's wrapper of `step` sets.
            stage.optim.optimizer._opt_called = True  # type: ignore[attr-defined]
    except (KeyError, RuntimeError, ValueError, TypeError) as error:
        said = first_line(error)
        raise ConfigError(
            f"checkpoints/last.pt does not fit this run's config ({said}): resume with the config that wrote "
            "it, or start a new run directory."
        ) from error
    if trainer.ddp and "rank_sums" in checkpoint:
        if len(checkpoint["rank_sums"]) != distributed.world_size():
            raise ConfigError(
                f"checkpoints/last.pt was written by {len(checkpoint['rank_sums'])} processes: resume it with "
                f"--nproc_per_node={len(checkpoint['rank_sums'])}."
            )
        own = checkpoint["rank_sums"][distributed.rank()]
        progress.sums.load_state_dict(own["sums"], trainer.device)
        progress.norms.load_state_dict(own["norms"], trainer.device)
    return progress
