from __future__ import annotations

import pytest
import torch

from distillab.errors import ConfigError
from distillab.weighting import Fixed


def test_fixed_weights_multiply_and_never_change() -> None:
    weighting = Fixed({"a": 0.25, "b": 2.0})
    assert list(weighting.parameters()) == []  # nothing for an optimizer to move
    losses = torch.tensor([4.0, 3.0], requires_grad=True)
    total, weights = weighting(losses)
    assert total.item() == pytest.approx(0.25 * 4 + 2 * 3)
    total.backward()
    assert losses.grad.tolist() == [0.25, 2.0]
    assert weights.tolist() == [0.25, 2.0]


@pytest.mark.parametrize("bad", [-0.5, float("nan"), float("inf"), "heavy"])
def test_invalid_fixed_weight_is_refused_naming_the_term(bad) -> None:
    with pytest.raises(ConfigError, match=r"loss\.weights\.kd=.* use a finite number >= 0"):
        Fixed({"ce": 1.0, "kd": bad})
