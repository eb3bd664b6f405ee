"""Taps by module path: a module's output or input, and token transforms (ViTs by timm)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from distillab.errors import ConfigError
from distillab.models import resnet
from distillab.taps import FeatureTaps, drop_class_token, tokens_to_map


def test_an_input_tap_reads_what_a_module_receives() -> None:
    """`fc:input` on a CIFAR ResNet is the pooled embedding the classifier receives (avgpool's output, flattened);
    `layer3` and `layer3:input` are a stage's output and its input (layer2's output)."""
    torch.manual_seed(0)
    net = resnet(depth=8, num_classes=10).eval()
    taps = FeatureTaps(net, ["fc:input", "avgpool", "layer3", "layer3:input", "layer2"])
    net(torch.randn(2, 3, 32, 32))
    f = taps.pop()
    assert torch.equal(f["fc:input"], f["avgpool"].flatten(1)) and torch.equal(f["layer3:input"], f["layer2"])
    assert f["layer3"].shape == (2, 64, 8, 8) and taps.pop() == {}


def test_token_transforms_lay_out_the_patch_grid_and_drop_the_leading_tokens() -> None:
    """17 tokens (a class token + 4 x 4 patches) -> a (C, 4, 4) map whose position (i, j) is patch i * 4 + j;
    18 tokens (class + distillation) drop both; `drop_cls` drops the first token only."""
    x = torch.arange(2 * 17 * 3, dtype=torch.float32).reshape(2, 17, 3)
    m = tokens_to_map(x)
    assert m.shape == (2, 3, 4, 4) and torch.equal(m[1, 2, 1, 3], x[1, 1 + 1 * 4 + 3, 2])
    assert torch.equal(tokens_to_map(torch.cat([x[:, :1], x], 1)), m)
    assert torch.equal(drop_class_token(x), x[:, 1:])
    with pytest.raises(ConfigError, match=r"a ':map' tap reads \(batch, tokens, channels\) tensors, not one of shape"):
        tokens_to_map(torch.zeros(2, 3, 4, 4))


def test_a_tap_that_is_not_one_is_named_with_what_would_be() -> None:
    net = nn.Sequential(nn.Linear(2, 2))
    for bad in ("0:foo", "0:map:drop_cls", "0:input:input"):
        with pytest.raises(ConfigError, match=r"is not a tap: use a module path, then optionally ':input'"):
            FeatureTaps(net, {bad: "loss.student_layer"})
    with pytest.raises(ConfigError, match=r"loss.student_layer='nope:map' is not a module of Sequential"):
        FeatureTaps(net, {"nope:map": "loss.student_layer"})


TINY_VITS = [
    "model/student=timm_vit",
    "model/teacher=timm_vit",
    *(f"model.{who}.{k}={v}" for who in ("student", "teacher") for k, v in (("depth", 2), ("patch_size", 8))),
    *(f"model.{who}.{k}={v}" for who, k, v in (("student", "embed_dim", 32), ("teacher", "embed_dim", 64))),
    "model.student.num_heads=2",
    "model.teacher.num_heads=2",
    "data=synthetic",
    "data.num_train=64",
    "data.num_val=32",
]


def test_a_timm_vit_pair_distils_token_features_through_map_taps(tmp_path: Path) -> None:
    """Two tiny timm ViTs (built without weights): FitNets between `blocks.1:map` maps (4 x 4 patches, widths 32
    and 64) through a 1x1 conv projector trains, its loss logged; the same taps without `:map` are refused before
    training, pointing at `:map`."""
    pytest.importorskip("timm")
    from tests.conftest import run_in, scalars

    taps = ["loss=fitnet", "loss.student_layer=blocks.1:map", "loss.teacher_layer=blocks.1:map", "projector=conv1x1"]
    metrics, run_dir = run_in(tmp_path / "a", *TINY_VITS, *taps, "trainer.max_epochs=1", "teacher.max_epochs=1")
    fitnet = scalars(run_dir)["loss/fitnet"]
    assert metrics["status"] == "completed" and fitnet and all(v > 0 for v in fitnet)
    with pytest.raises(ConfigError, match=r"tap token features as maps \(e.g. blocks.3:map\)"):
        run_in(tmp_path / "b", *TINY_VITS, *[t.removesuffix(":map") for t in taps], "trainer.max_epochs=1")
    at = ["loss=at", "loss.student_layers=[blocks.1]", "loss.teacher_layers=[blocks.1]", "trainer.max_epochs=1"]
    with pytest.raises(ConfigError, match=r"blocks.1, blocks.1 give tokens: tap them as maps, blocks.1:map\)\.$"):
        run_in(tmp_path / "c", *TINY_VITS, *at)  # attention transfer fails on tokens: the term's sentence says why


def test_a_teacher_as_built_keeps_the_weights_its_target_loads(tmp_path: Path, caplog) -> None:
    """teacher.source=built: the teacher is neither trained nor cached; a timm ViT built with pretrained=true loads
    the weights file given as its pretrained config's `file` (saved here: timm's real loading code, offline), and
    the run distils exactly those weights (its validation accuracy is theirs, recomputed here), says so, and records
    where they came from."""
    pytest.importorskip("timm")
    import timm

    from tests.conftest import run_in

    torch.manual_seed(3)
    kwargs = dict(num_classes=10, in_chans=3, img_size=32, patch_size=8, depth=2, embed_dim=64, num_heads=2)
    saved = timm.create_model("vit_tiny_patch16_224", pretrained=False, **kwargs)
    path = tmp_path / "vit.pth"
    torch.save(saved.state_dict(), path)
    with caplog.at_level("INFO", logger="distillab"):
        metrics, _ = run_in(
            tmp_path / "run",
            *TINY_VITS,
            "loss=kd",
            "teacher.source=built",
            "model.teacher.pretrained=true",
            f"+model.teacher.pretrained_cfg_overlay={{file: {path}, num_classes: 10}}",  # (timm keeps a 10-class head)
            "trainer.max_epochs=1",
            shared_cache=False,
        )
    assert metrics["teacher"]["kind"] == "built" and metrics["teacher"]["source"] == "timm.create_model"
    assert not (tmp_path / "run" / "cache" / "teachers").exists()  # nothing trained, nothing cached
    from distillab.data.synthetic import synthetic

    val = synthetic(batch_size=32, num_train=64, num_val=32).val
    saved.eval()
    with torch.no_grad():
        correct = sum(int((saved(x).argmax(1) == y).sum()) for x, y, *_ in val)
    assert metrics["teacher_val_acc"] == pytest.approx(100 * correct / 32)
    assert "teacher: as built by timm.create_model (timm_vit, teacher.source=built)" in caplog.text


def test_a_built_teacher_with_a_checkpoint_too_is_refused(tmp_path: Path) -> None:
    from tests.conftest import run_in

    with pytest.raises(ConfigError, match=r"teacher.source=built distils the teacher as its _target_ builds it"):
        run_in(tmp_path, "loss=kd", "teacher.source=built", f"teacher.checkpoint={tmp_path / 'x.pt'}")
