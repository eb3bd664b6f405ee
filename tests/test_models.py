from __future__ import annotations

import pytest
import torch

from distillab.models import MLP, ConvAutoencoder, DeepNN, LightNN


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_tutorial_models_have_the_tutorials_parameter_counts() -> None:
    # The PyTorch KD tutorial prints these for its CIFAR-10 models.
    assert n_params(DeepNN(num_classes=10)) == 1_186_986
    assert n_params(LightNN(num_classes=10)) == 267_738


@pytest.mark.parametrize("model_cls", [DeepNN, LightNN, MLP])
@pytest.mark.parametrize(("channels", "size", "classes"), [(1, 8, 10), (3, 32, 100), (1, 28, 10)])
def test_classifiers_fit_any_input_and_class_count(model_cls, channels: int, size: int, classes: int) -> None:
    model = model_cls(num_classes=classes, in_channels=channels, image_size=size)
    assert model(torch.randn(2, channels, size, size)).shape == (2, classes)


def test_autoencoder_returns_an_image_in_unit_range() -> None:
    out = ConvAutoencoder(in_channels=1)(torch.randn(3, 1, 8, 8))
    assert out.shape == (3, 1, 8, 8) and out.min() >= 0 and out.max() <= 1


@pytest.mark.parametrize(
    ("target", "arguments", "said"),
    [
        ("CifarResNet", {"depth": 10}, "depth=10 is not valid: use 6n + 2 for a CIFAR ResNet: 8, 14, 20, 32"),
        ("WideResNet", {"depth": 18, "widen_factor": 2}, "depth=18 is not valid: use 6n + 4 for a WideResNet: 16, 22"),
        ("CifarVGG", {"depth": 9}, "depth=9 is not valid: use one of 8, 11, 13 for a CIFAR VGG."),
    ],
)
def test_a_cifar_network_refuses_a_depth_it_cannot_build_named_where_it_sits(target, arguments, said) -> None:
    from distillab.errors import ConfigError
    from distillab.instantiate import instantiate

    node = {"_target_": f"distillab.models.cifar.{target}", "num_classes": 10, **arguments}
    for key in ("model.student", "model.teacher"):
        with pytest.raises(ConfigError) as refused:
            instantiate(node, key=key)
        assert str(refused.value).startswith(f"{key}.{said}")
