"""A small convolutional autoencoder for image reconstruction (denoising)."""

from __future__ import annotations

from torch import Tensor, nn

from distillab import checks


class ConvAutoencoder(nn.Module):
    """Two stride-2 convs down, two transposed convs up; a sigmoid keeps pixels in [0, 1].

    Works for any image size divisible by 4.
    """

    def __init__(self, in_channels: int = 1, width: int = 32) -> None:
        super().__init__()
        checks.sizes(in_channels=in_channels, width=width)
        self.encoder = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1),
            nn.ReLU(),
        )
        self.decoder = nn.Sequential(
            nn.ConvTranspose2d(2 * width, width, 4, stride=2, padding=1),
            nn.ReLU(),
            nn.ConvTranspose2d(width, in_channels, 4, stride=2, padding=1),
            nn.Sigmoid(),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.decoder(self.encoder(x))
