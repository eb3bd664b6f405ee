"""Datasets and loaders. Every `data/` config builds a `DataModule`."""

from distillab.data.memory import DataModule, GaussianNoise, TensorLoader

__all__ = ["DataModule", "GaussianNoise", "TensorLoader"]
