"""The two CNNs of the PyTorch knowledge-distillation tutorial, for any input channels, size and classes.

The layers are the tutorial's. The only change: the first conv takes `in_channels` and the first linear
layer's width follows from the image size (two 2x2 max-pools: `size // 4` per side), where the tutorial
hard-codes 3 channels and 32x32 (2048 and 1024 inputs).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from distillab import checks


class DeepNN(nn.Module):
    """Teacher: four 3x3 convs (128, 64, 64, 32 channels), ~1.19 M parameters on 3x32x32."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3, image_size: int = 32) -> None:
        super().__init__()
        checks.sizes(num_classes=num_classes, in_channels=in_channels, image_size=image_size)
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 128, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.Conv2d(128, 64, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(kernel_size=2, stride=2),
            nn.Conv2d(64, 64, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.Conv2d(64, 32, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(kernel_size=2, stride=2),
        )
        self.classifier = nn.Sequential(
            nn.Linear(32 * (image_size // 4) ** 2, 512),
            nn.ReLU(),
            nn.Dropout(0.1),
            nn.Linear(512, num_classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


class LightNN(nn.Module):
    """Student: two 3x3 convs of 16 channels, ~0.27 M parameters on 3x32x32. `dropout`: the tutorial's 0.1."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3, image_size: int = 32, dropout: float = 0.1) -> None:
        super().__init__()
        checks.sizes(num_classes=num_classes, in_channels=in_channels, image_size=image_size)
        checks.number("dropout", dropout, at_least=0, below=1)
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 16, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(kernel_size=2, stride=2),
            nn.Conv2d(16, 16, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(kernel_size=2, stride=2),
        )
        self.classifier = nn.Sequential(
            nn.Linear(16 * (image_size // 4) ** 2, 256),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(256, num_classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))
