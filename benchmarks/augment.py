"""CIFAR augmentation: torchvision's per-image transforms in DataLoader workers against the device path.

One epoch of 50,000 CIFAR-shaped images (synthetic uint8, 32x32x3, as torchvision's CIFAR holds them) through
the train loader only, no model: RandomCrop(32, padding=4) + RandomHorizontalFlip + ToTensor + Normalize,
batches of 64 (the CRD recipe's). `workers`: `data.augment_on=workers` (PIL per image, `--workers` processes);
`device`: `data.augment_on=device` (the split held as one uint8 tensor, whole batches cropped, flipped and
normalised where they are, here the CPU). The two alternate, `--repeats` epochs each; medians compared.

    python benchmarks/augment.py [--images 50000] [--workers 2] [--repeats 2] [--device cpu]

Last line: augment_speedup=<workers epoch / device epoch>.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time

import numpy as np
import torch

from distillab.data.augment import CropFlip
from distillab.data.datasets import dataset_data


class SyntheticCIFAR:
    """A torchvision-style dataset: uint8 images in `data` (N x size x size x 3), labels in `targets`, PIL items."""

    def __init__(self, train: bool, images: int, transform=None, size: int = 32) -> None:
        rng = np.random.default_rng(int(train))
        self.data = rng.integers(0, 256, (images if train else 64, size, size, 3), dtype=np.uint8)
        self.targets = list(rng.integers(0, 100, len(self.data)))
        self.transform = transform

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int):
        from PIL import Image

        image = Image.fromarray(self.data[i])
        return (self.transform(image) if self.transform else image), self.targets[i]


def loader(augment_on: str, args: argparse.Namespace):
    data = dataset_data(
        functools.partial(SyntheticCIFAR, True, args.images),
        functools.partial(SyntheticCIFAR, False, args.images),
        batch_size=64,
        in_channels=3,
        image_size=32,
        num_classes=100,
        augment=CropFlip(4),
        augment_on=augment_on,
        num_workers=args.workers,
        device=args.device,
        normalize={"mean": [0.5071, 0.4865, 0.4409], "std": [0.2673, 0.2564, 0.2762]},
    )
    return data.train


def epoch_seconds(train, epoch: int, device: torch.device) -> float:
    train_sampler = getattr(train, "sampler", None)
    for obj in (train, train_sampler):
        if hasattr(obj, "set_epoch"):
            obj.set_epoch(epoch)
    start = time.perf_counter()
    seen = 0
    for batch in train:  # (inputs, targets, indices), and each sample's view number from the device augmentation
        x = batch[0].to(device, non_blocking=True)
        seen += len(x)
    if device.type == "cuda":
        torch.cuda.synchronize()
    assert seen == len(train.dataset if hasattr(train, "dataset") else train.inputs)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=50_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    loaders = {"workers": loader("workers", args), "device": loader("device", args)}
    times: dict[str, list[float]] = {"workers": [], "device": []}
    for epoch in range(args.repeats):
        for name, train in loaders.items():
            times[name].append(epoch_seconds(train, epoch, device))
    workers, on_device = statistics.median(times["workers"]), statistics.median(times["device"])
    print(
        f"device={device} torch={torch.__version__} threads={torch.get_num_threads()} images={args.images} batch=64 "
        f"workers={args.workers} repeats={args.repeats}"
    )
    print(f"torchvision transforms in workers: {workers:.2f} s per epoch ({args.images / workers:,.0f} images/s)")
    print(f"device augmentation:               {on_device:.3f} s per epoch ({args.images / on_device:,.0f} images/s)")
    print(f"augment_speedup={workers / on_device:.1f}")


if __name__ == "__main__":
    main()
