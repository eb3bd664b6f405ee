"""Pictures in TensorBoard's Images tab, of a few fixed validation samples (tags under `pictures/`, which
the Time Series tab lists after the training curves).

- Reconstruction tasks: a grid of the noisy input, the student's output and the target (one column per
  sample), `pictures/reconstruction`.
- Runs whose loss terms tap features: for each (student layer, teacher layer) pair a term reads, the
  attention maps (the channel mean of the squared activations, as attention transfer forms them) of the
  input, the student and the teacher (`pictures/<term>/attention/<student layer>~<teacher layer>`), and
  the first channels of both for the first sample (`.../channels/...`): whether the student has learnt to
  look where the teacher looks.

Drawn in eval mode without gradients, from the validation set's first batch (never shuffled): nothing the
training computes depends on them.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from distillab.experiment import Experiment, forward_pass
from distillab.losses.features import attention_map
from distillab.tasks import Reconstruction

SAMPLES = 8  # columns of each grid
CHANNELS = 8  # channels shown of one sample's feature maps
MIN_PIXELS = 48  # the least height a picture is shown at (nearest-neighbour upscaling)


def _unit(x: Tensor) -> Tensor:
    """Each image (first dim) scaled to [0, 1] on its own."""
    flat = x.flatten(1)
    low, high = flat.min(1).values, flat.max(1).values
    return ((flat - low[:, None]) / (high - low).clamp_min(1e-12)[:, None]).view_as(x)


def _as_images(x: Tensor, size: tuple[int, int]) -> Tensor:
    """(N, C, H, W) of any C as (N, 3, size) grey or colour images in [0, 1]."""
    x = x.float()
    if x.shape[1] not in (1, 3):
        x = x.mean(1, keepdim=True)
    if tuple(x.shape[-2:]) != size:
        x = F.interpolate(x, size=size, mode="nearest")
    return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x


def _grid(rows: list[Tensor], columns: int) -> Tensor:
    from torchvision.utils import make_grid

    return make_grid(torch.cat(rows), nrow=columns, padding=1, pad_value=1.0)


def attention(features: Tensor) -> Tensor:
    """(N, C, H, W) -> (N, 1, H, W): attention transfer's map (the channel mean of the squared activations),
    per sample in [0, 1]."""
    n, _, h, w = features.shape
    return _unit(attention_map(features.float()).view(n, 1, h, w))


def _channels(features: Tensor, size: tuple[int, int]) -> Tensor:
    """The first `CHANNELS` maps of one sample, each in [0, 1], as a row (white where there are fewer)."""
    maps = _as_images(_unit(features[:CHANNELS, None].float()), size)
    blank = torch.ones(CHANNELS - len(maps), *maps.shape[1:], device=maps.device)
    return torch.cat([maps, blank])


class Pictures:
    """Which pictures a run draws and the fixed samples it draws them from; `draw` logs them."""

    def __init__(self, exp: Experiment, device: torch.device, every: int) -> None:
        self.every = every
        batch = next(iter(exp.data.val))
        self.x = batch[0][:SAMPLES].to(device)
        self.y = batch[1][:SAMPLES].to(device)
        self.reconstruction = isinstance(exp.task, Reconstruction)
        self.pairs = [
            (name, s, t) for name, term in exp.objective.items() for s, t in zip(term.student_taps, term.teacher_taps)
        ]

    @classmethod
    def for_run(cls, exp: Experiment, device: torch.device, every: int | None) -> Pictures | None:
        """`trainer.image_every`: None draws every epoch for reconstruction tasks and nothing otherwise."""
        every = int(isinstance(exp.task, Reconstruction)) if every is None else every
        if not every:
            return None
        pictures = cls(exp, device, every)
        return pictures if pictures.reconstruction or pictures.pairs else None

    @torch.no_grad()
    def draw(self, exp: Experiment, logger: Any, step: int) -> None:
        was_training = exp.student.training
        exp.student.eval()
        try:
            out = forward_pass(exp.student, exp.student_taps, exp.teachers, exp.teacher_taps, self.x, self.y)
        finally:
            exp.student.train(was_training)
        # shown at least MIN_PIXELS high: digits' 8x8 images would be specks
        scale = -(-MIN_PIXELS // self.x.shape[-2]) if self.x.dim() == 4 else 1
        size = (self.x.shape[-2] * scale, self.x.shape[-1] * scale) if self.x.dim() == 4 else None
        if self.reconstruction and size is not None:
            # one scale per sample for its three images, so a faint output looks faint
            together = _unit(torch.stack([self.x.float(), out.student.out.float(), self.y.float()], 1))
            rows = [_as_images(together[:, i], size) for i in range(3)]
            logger.image("pictures/reconstruction", _grid(rows, len(self.x)), step)
        if not self.pairs or size is None:
            return
        teacher = out.teachers[0].features if out.teachers else {}
        inputs = _as_images(_unit(self.x), size)
        for name, s, t in self.pairs:
            fs, ft = out.student.features.get(s), teacher.get(t)
            if fs is None or ft is None or fs.dim() != 4 or ft.dim() != 4:
                continue  # embeddings (CRD, RKD, ...) are not pictures
            where = f"{s}~{t}"
            rows = [inputs, _as_images(attention(fs), size), _as_images(attention(ft), size)]
            logger.image(f"pictures/{name}/attention/{where}", _grid(rows, len(self.x)), step)
            shown = (max(fs.shape[-2], ft.shape[-2]), max(fs.shape[-1], ft.shape[-1]))
            shown = (shown[0] * -(-MIN_PIXELS // shown[0]), shown[1] * -(-MIN_PIXELS // shown[0]))
            channels = [_channels(f[0], shown) for f in (fs, ft)]
            logger.image(f"pictures/{name}/channels/{where}", _grid(channels, CHANNELS), step)
