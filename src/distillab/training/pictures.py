"""Pictures in TensorBoard's Images tab, of a few fixed validation samples (tags under `pictures/`, which
the Time Series tab lists after the training curves).

- Reconstruction tasks: a grid of the noisy input, the student's output and the target (one column per
  sample), `pictures/reconstruction`.
- Runs whose loss terms tap features: for each (student layer, teacher layer) pair a term reads, the
  attention maps (the channel mean of the squared activations, as attention transfer forms them) of the
  input, the student and the teacher (`pictures/<term>/attention/<student layer>~<teacher layer>`), and
  the first channels of both for the first sample (`.../channels/...`): whether the student has learnt to
  look where the teacher looks.

Each grid names its rows in a white column at its left (input, output, target; input, student, teacher;
student, teacher). Drawn in eval mode without gradients, from the validation set's first batch (never
shuffled): nothing the training computes depends on them.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from distillab.experiment import Experiment
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


def _labelled(grid: Tensor, labels: list[str]) -> Tensor:
    """`grid` (make_grid's rows: equal height, 1 px apart) with a white column at its left naming each row."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default()
    height, row = grid.shape[-2], (grid.shape[-2] - 1) / len(labels)
    canvas = ImageDraw.Draw(Image.new("L", (1, 1)))
    boxes = [canvas.textbbox((0, 0), label, font=font) for label in labels]
    strip = Image.new("L", (max(int(b[2]) for b in boxes) + 8, height), 255)
    draw = ImageDraw.Draw(strip)
    for i, (label, (_, top, _, bottom)) in enumerate(zip(labels, boxes)):
        draw.text((4, 1 + row * (i + 0.5) - (top + bottom) / 2), label, fill=0, font=font)
    pixels = torch.from_numpy(np.array(strip)).to(grid) / 255  # (height, width), white 1
    return torch.cat([pixels.expand(3, -1, -1), grid], dim=2)


def attention(features: Tensor) -> Tensor:
    """(N, C, H, W) -> (N, 1, H, W): attention transfer's map (the channel mean of the squared activations),
    per sample in [0, 1]."""
    n, _, h, w = features.shape
    return _unit(attention_map(features.float()).view(n, 1, h, w))


def _shown_size(height: int, width: int) -> tuple[int, int]:
    """An (height, width) map upscaled by a whole factor to at least MIN_PIXELS high: 8x8 digits would be specks."""
    scale = -(-MIN_PIXELS // height)
    return height * scale, width * scale


def _channels(features: Tensor, size: tuple[int, int]) -> Tensor:
    """The first `CHANNELS` maps of one sample, each in [0, 1], as a row (white where there are fewer)."""
    maps = _as_images(_unit(features[:CHANNELS, None].float()), size)
    blank = torch.ones(CHANNELS - len(maps), *maps.shape[1:], device=maps.device)
    return torch.cat([maps, blank])


class Pictures:
    """Which pictures a run draws and the fixed samples it draws them from; `draw` logs them."""

    def __init__(
        self, x: Tensor, y: Tensor, every: int, reconstruction: bool, pairs: list[tuple[str, str, str]]
    ) -> None:
        self.x, self.y, self.every, self.reconstruction, self.pairs = x, y, every, reconstruction, pairs
        self.size = _shown_size(*self.x.shape[-2:])
        self.inputs = _as_images(_unit(self.x), self.size)

    @classmethod
    def for_run(cls, exp: Experiment, device: torch.device, every: int | None) -> Pictures | None:
        """`trainer.image_every`: None draws every epoch for reconstruction tasks and nothing otherwise. None
        when there is nothing to draw: no reconstruction, no tapped layers, or inputs that are not images."""
        reconstruction = isinstance(exp.task, Reconstruction)
        every = int(reconstruction) if every is None else every
        pairs = [
            (name, s, t) for name, term in exp.objective.items() for s, t in zip(term.student_taps, term.teacher_taps)
        ]
        if not every or not (reconstruction or pairs):
            return None
        x, y = next(iter(exp.data.val))[:2]
        if x.dim() != 4:
            return None
        return cls(x[:SAMPLES].to(device), y[:SAMPLES].to(device), every, reconstruction, pairs)

    @torch.no_grad()
    def draw(self, exp: Experiment, logger: Any, step: int) -> None:
        was_training = exp.student.training
        exp.student.eval()
        try:
            out = exp.forward(self.x, self.y)  # no sample index: the teachers run, whatever is cached
        finally:
            exp.student.train(was_training)
        size = self.size
        if self.reconstruction:
            # one scale per sample for its three images, so a faint output looks faint
            together = _unit(torch.stack([self.x.float(), out.student.out.float(), self.y.float()], 1))
            rows = [_as_images(together[:, i], size) for i in range(3)]
            grid = _labelled(_grid(rows, len(self.x)), ["input", "output", "target"])
            logger.image("pictures/reconstruction", grid, step)
        teacher = out.teachers[0].features if out.teachers else {}
        for name, s, t in self.pairs:
            fs, ft = out.student.features.get(s), teacher.get(t)
            if fs is None or ft is None or fs.dim() != 4 or ft.dim() != 4:
                continue  # embeddings (CRD, RKD, ...) are not pictures
            where = f"{s}~{t}"
            rows = [self.inputs, _as_images(attention(fs), size), _as_images(attention(ft), size)]
            grid = _labelled(_grid(rows, len(self.x)), ["input", "student", "teacher"])
            logger.image(f"pictures/{name}/attention/{where}", grid, step)
            shown = _shown_size(max(fs.shape[-2], ft.shape[-2]), max(fs.shape[-1], ft.shape[-1]))
            channels = [_channels(f[0], shown) for f in (fs, ft)]
            grid = _labelled(_grid(channels, CHANNELS), ["student", "teacher"])
            logger.image(f"pictures/{name}/channels/{where}", grid, step)
