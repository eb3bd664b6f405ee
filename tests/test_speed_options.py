"""trainer.precision, trainer.channels_last and trainer.compile: what each changes, and what it must not."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from distillab.checkpoint import load_checkpoint
from distillab.errors import ConfigError
from distillab.experiment import Experiment
from distillab.instantiate import instantiate
from tests.conftest import fit_in_process

# CIFAR-shaped images (channels_last needs 4-d inputs), a feature loss (taps must survive compilation).
RECIPE = [
    "experiment=tutorial_cifar10",
    "data=synthetic",
    "data.num_train=128",
    "data.num_val=64",
    "data.batch_size=32",
    "loss=fitnet",
    "trainer.max_epochs=1",
    "trainer.device=cpu",
    "teacher.cache_outputs=false",
]
# Two steps on 16x16 images, for the half precisions: their convolutions are slow on a CPU without bf16/fp16 units.
TWO_STEPS = [*RECIPE, "data.num_train=64", "data.num_val=32", "data.image_size=16"]


def student_output_dtypes(exp: Experiment, seen: list[torch.dtype]) -> None:
    exp.student.register_forward_hook(lambda module, args, out: seen.append(out.dtype) if module.training else None)


def test_bf16_mixed_runs_the_forward_in_bfloat16_and_keeps_float32_weights(tmp_path: Path) -> None:
    seen: list[torch.dtype] = []
    # Adam's first step is lr * sign(g), the same for both precisions wherever the signs agree: the rounding
    # shows from the second.
    exp, result, _ = fit_in_process(
        tmp_path, [*TWO_STEPS, "trainer.precision=bf16-mixed"], lambda e: student_output_dtypes(e, seen)
    )
    assert len(seen) == 2 and set(seen) == {torch.bfloat16}  # both training forwards ran under autocast
    assert all(p.dtype == torch.float32 for p in exp.student.parameters())
    assert all(torch.isfinite(torch.tensor(v)) for v in result.final.values())
    reference, _, _ = fit_in_process(tmp_path / "fp32", TWO_STEPS)
    first = next(iter(exp.student.state_dict()))
    assert not torch.equal(
        exp.student.state_dict()[first], reference.student.state_dict()[first]
    )  # bf16 rounding shows


def test_16_mixed_scales_the_loss_and_skips_overflowing_steps_with_a_checkpointed_scaler(tmp_path: Path) -> None:
    exp, result, run_dir = fit_in_process(tmp_path, [*TWO_STEPS, "trainer.precision=16-mixed"])
    scaler = load_checkpoint(run_dir / "checkpoints" / "last.pt")["scaler"]
    # GradScaler starts at 2^16 and halves on each step whose fp16 gradients overflowed, skipping that
    # optimizer step.
    overflows = round(math.log2(2.0**16 / scaler["scale"]))
    optimizer_steps = int(exp.optim.optimizer.state_dict()["state"][0]["step"])
    assert result.steps == 2 and optimizer_steps + overflows == result.steps
    assert optimizer_steps >= 1 and scaler["scale"] <= 2.0**16
    _, _, plain_dir = fit_in_process(tmp_path / "fp32", TWO_STEPS)
    assert load_checkpoint(plain_dir / "checkpoints" / "last.pt")["scaler"] == {}  # no scaler at 32 bits


def test_channels_last_changes_the_memory_format_not_the_result(tmp_path: Path) -> None:
    # SGD: Adam divides by the gradient's running RMS, so on a weight whose gradient is ~0 a rounding-level
    # difference between the two convolution layouts becomes a whole learning-rate step.
    exp, _, _ = fit_in_process(tmp_path, [*RECIPE, "optim=sgd", "trainer.channels_last=true"])
    reference, _, _ = fit_in_process(tmp_path / "plain", [*RECIPE, "optim=sgd"])
    conv = exp.student.features[0].weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    for (name, value), expected in zip(exp.student.state_dict().items(), reference.student.state_dict().values()):
        torch.testing.assert_close(value, expected, rtol=1e-4, atol=1e-5, msg=name)


def test_compile_keeps_taps_state_dict_keys_and_results(tmp_path: Path) -> None:
    # aot_eager: dynamo capture and AOTAutograd without generating C++ (inductor's CPU code needs a compiler)
    exp, _, _ = fit_in_process(tmp_path, [*RECIPE, "trainer.compile=aot_eager"])
    reference, _, _ = fit_in_process(tmp_path / "eager", RECIPE)
    assert exp.student._compiled_call_impl is not None  # the student really ran compiled
    assert list(exp.student.state_dict()) == list(reference.student.state_dict())  # no _orig_mod. prefix
    for part in ("student", "objective"):  # the FitNets projector trained on the compiled student's tapped features
        for (name, value), expected in zip(
            getattr(exp, part).state_dict().items(), getattr(reference, part).state_dict().values()
        ):
            torch.testing.assert_close(value, expected, rtol=1e-4, atol=1e-5, msg=f"{part}.{name}")


@pytest.mark.parametrize("option", ["precision=8", "precision=fp16"])
def test_unknown_precision_is_refused_in_one_sentence(option: str) -> None:
    key, value = option.split("=")
    with pytest.raises(ConfigError, match="use 32, bf16-mixed or 16-mixed"):
        instantiate({"_target_": "distillab.training.Trainer", key: value})


def test_an_unknown_compile_backend_is_refused_when_the_trainer_is_built() -> None:
    """trainer.compile=<name> is checked against torch.compile's own list of backends when the trainer is built
    (before a teacher stage compiles anything), debug backends such as aot_eager included."""
    with pytest.raises(ConfigError, match=r"compile='bogus' is not valid: use true, false or a torch.compile backend"):
        instantiate({"_target_": "distillab.training.Trainer", "compile": "bogus"})
    trainer = instantiate({"_target_": "distillab.training.Trainer", "compile": "aot_eager"})
    assert trainer.compile == "aot_eager"
    assert not instantiate({"_target_": "distillab.training.Trainer", "compile": None}).compile  # null: off
