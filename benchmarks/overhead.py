"""Framework overhead: distillab's KD training step against the PyTorch KD tutorial's hand-written loop.

Same models (the tutorial's DeepNN teacher and LightNN student, same initial weights), same batches
(3x32x32, 10 classes, batch 128, the tutorial's shape), same device, same recipe (Adam 1e-3, T=2,
distillation weight 0.25, CE 0.75). The two are timed alternately, one step each (A B A B ...), after a
warm-up, and the median step times are compared. The distillab side is `Trainer.train_batch`: everything
its loop does per batch (device copy, forward with taps, loss terms, weighting, NaN guard, backward,
optimizer and scheduler step, running sums, TensorBoard every `log_every` steps). The teacher runs on
every step on both sides (teacher.cache_outputs=false): this measures the framework, not the cache.

    python benchmarks/overhead.py [--steps 300] [--device cpu]

Last line: overhead_ratio=<trainer median / hand median>.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from distillab.build import build_experiment
from distillab.config import compose, instantiate
from distillab.logging import RunLogger
from distillab.teacher import build_teachers
from distillab.trainer import Progress, Trainer


def tutorial_kd_step(teacher, student, optimizer, ce_loss, inputs, labels, T, soft_target_loss_weight, ce_loss_weight, device):
    """The inner loop of the tutorial's `train_knowledge_distillation`, as published."""
    inputs, labels = inputs.to(device), labels.to(device)
    optimizer.zero_grad()
    with torch.no_grad():
        teacher_logits = teacher(inputs)
    student_logits = student(inputs)
    soft_targets = nn.functional.softmax(teacher_logits / T, dim=-1)
    soft_prob = nn.functional.log_softmax(student_logits / T, dim=-1)
    soft_targets_loss = torch.sum(soft_targets * (soft_targets.log() - soft_prob)) / soft_prob.size()[0] * (T**2)
    label_loss = ce_loss(student_logits, labels)
    loss = soft_target_loss_weight * soft_targets_loss + ce_loss_weight * label_loss
    loss.backward()
    optimizer.step()
    return loss.item()  # the tutorial's `running_loss += loss.item()`


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300, help="timed steps per side")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--batches", type=int, default=8, help="distinct batches, cycled")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    out = Path(tempfile.mkdtemp(prefix="distillab-overhead-"))
    cfg = compose([
        "experiment=tutorial_cifar10", "data=synthetic", f"data.num_train={128 * args.batches}", "data.num_val=128",
        "data.batch_size=128", "loss=kd", "teacher.cache_outputs=false", f"trainer.device={args.device}",
        f"paths.root={out}", f"paths.output_dir={out}",
    ])
    device = torch.device(args.device)
    torch.manual_seed(0)
    teachers = build_teachers(cfg, device)  # random weights: the cost of a step does not depend on them
    exp = build_experiment(cfg, device, teachers)
    trainer: Trainer = instantiate(cfg.trainer)
    for module in (exp.student, exp.objective, exp.weighting):
        module.train()
    progress, logger = Progress(), RunLogger(out)

    teacher = teachers[0]
    student = type(exp.student)(num_classes=10, in_channels=3, image_size=32).to(device)
    student.load_state_dict(exp.student.state_dict())
    student.train()
    optimizer = torch.optim.Adam(student.parameters(), lr=cfg.optim.lr)
    ce_loss = nn.CrossEntropyLoss()
    T, alpha = cfg.loss.temperature, cfg.loss.alpha

    def tick() -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()  # both sides end with their queued GPU work done
        return time.perf_counter()

    batches = list(exp.data.train)
    trainer_times, hand_times = [], []
    for i in range(args.warmup + args.steps):
        batch = batches[i % len(batches)]
        start = tick()
        trainer.train_batch(exp, batch, progress, logger)
        middle = tick()
        tutorial_kd_step(teacher, student, optimizer, ce_loss, batch[0], batch[1], T, alpha, 1 - alpha, device)
        end = tick()
        if i >= args.warmup:
            trainer_times.append(middle - start)
            hand_times.append(end - middle)
    logger.close()

    trainer_ms, hand_ms = statistics.median(trainer_times) * 1e3, statistics.median(hand_times) * 1e3
    spread = statistics.quantiles([a / b for a, b in zip(trainer_times, hand_times)], n=4)
    print(f"device={device} torch={torch.__version__} threads={torch.get_num_threads()} steps={args.steps} batch=128x3x32x32")
    print(f"trainer step median {trainer_ms:.2f} ms, hand-written tutorial step median {hand_ms:.2f} ms")
    print(f"per-step ratio quartiles {spread[0]:.4f} / {spread[1]:.4f} / {spread[2]:.4f}")
    print(f"overhead_ratio={trainer_ms / hand_ms:.4f}")


if __name__ == "__main__":
    main()
