"""Networks. Any `torch.nn.Module` constructor (torchvision's included) works as a `_target_` too."""

from distillab.models.autoencoder import ConvAutoencoder
from distillab.models.cifar import CifarBottleneckResNet, CifarResNet, CifarVGG, WideResNet, resnet, resnet50
from distillab.models.cifar_mobile import CifarMobileNetV2, CifarShuffleNetV1, CifarShuffleNetV2
from distillab.models.mlp import MLP
from distillab.models.tutorial import DeepNN, LightNN

__all__ = [
    "MLP",
    "CifarBottleneckResNet",
    "CifarMobileNetV2",
    "CifarResNet",
    "CifarShuffleNetV1",
    "CifarShuffleNetV2",
    "CifarVGG",
    "ConvAutoencoder",
    "DeepNN",
    "LightNN",
    "WideResNet",
    "resnet",
    "resnet50",
]
