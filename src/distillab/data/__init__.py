"""Datasets and loaders. Every `data/` config builds a `DataModule` (its docstring states the loader contract)."""

from distillab.data.memory import GaussianNoise, TensorLoader
from distillab.data.module import DataModule

__all__ = ["DataModule", "GaussianNoise", "TensorLoader"]
