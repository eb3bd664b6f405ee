"""Taps by module path: a module's output or input, and token transforms (ViTs by timm)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

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


# The CIFAR models name the tensors AB, ReviewKD and RepDistiller's `preact=True` features read `preact`: tap aliases
# (`tap_aliases`), not identity modules added to be tapped. Every name the configs publish still reads them.
PREACT = re.compile(r"[\w.]*\bpreact\b")


def published_preact_names() -> dict[str, set[str]]:
    """Each CIFAR model's `preact` taps as the configs publish them: the model's YAML (its comment), and the
    CIFAR-100 pairs' tap lists (`pair.teacher` and `pair.student`, for the models the pair chooses)."""
    from omegaconf import OmegaConf

    from distillab.config import config_dir

    conf = config_dir()
    names: dict[str, set[str]] = {}
    for path in sorted((conf / "model").glob("*.yaml")):
        if found := set(PREACT.findall(path.read_text())):  # the prose's bare "preact" is a tap of the WRNs only
            names[path.stem] = {n for n in found if n != "preact" or path.stem.startswith("wrn")}
    for path in sorted((conf / "recipe" / "cifar100").glob("*.yaml")):
        recipe = OmegaConf.load(path)
        choices = {k: v for d in recipe.defaults if not isinstance(d, str) for k, v in d.items()}
        for who in ("teacher", "student"):
            taps = OmegaConf.to_container(recipe.pair[who])
            listed = [p for v in taps.values() if v for p in (v if isinstance(v, list) else [v])]
            if preacts := {p for p in listed if PREACT.fullmatch(p)}:
                names.setdefault(choices[f"override /model@model.{who}"], set()).update(preacts)
    return names


def _model(name: str) -> nn.Module:
    from distillab.config import compose
    from distillab.instantiate import instantiate

    return instantiate(compose(["data=cifar100", f"model/student={name}"]).model.student)


def _preact_by_hand(model: nn.Module, owner: str, x: Tensor) -> Tensor:
    """The tensor a `preact` stands for, computed from the submodules of the module that owns it (`x`: its input)."""
    from distillab.models.cifar import BasicBlock, Bottleneck, WideBlock, WideResNet
    from distillab.models.cifar_mobile import ShuffleV1Unit, _shuffle

    m = model.get_submodule(owner)
    if isinstance(m, BasicBlock):
        return m.bn2(m.conv2(m.relu(m.bn1(m.conv1(x))))) + (x if m.downsample is None else m.downsample(x))
    if isinstance(m, Bottleneck):
        out = m.relu(m.bn2(m.conv2(m.relu(m.bn1(m.conv1(x))))))
        return m.bn3(m.conv3(out)) + (x if m.shortcut is None else m.shortcut(x))
    if isinstance(m, WideBlock):
        return m.bn1(x)
    if isinstance(m, WideResNet):  # the net's own: the last BatchNorm, before its ReLU
        return m.bn1(m.block3(m.block2(m.block1(m.conv1(x)))))
    if isinstance(m, ShuffleV1Unit):
        out = m.conv3(m.conv2(_shuffle(m.conv1(x), m.first_groups)))
        return out + x if m.shortcut is None else torch.cat([out, m.shortcut(x)], 1)
    if isinstance(m, nn.Sequential):  # a VGG block: everything before its last ReLU
        for layer in list(m)[:-1]:
            x = layer(x)
        return x
    raise AssertionError(f"no rule for the preact of {type(m).__name__}")


PUBLISHED = published_preact_names()


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_every_published_preact_tap_reads_the_tensor_its_block_computes(name: str) -> None:
    """Each `preact` of the model (every block's, so every name published for it in conf/model and conf/recipe) is
    bit for bit what the block computes before its last ReLU, recomputed here from the block's submodules
    (`bn2(conv2(...)) + shortcut`; the WRNs' BatchNorm; a VGG block without its last ReLU; ShuffleNetV1's sum or
    concatenation), in eval and in training mode; the model holds no module named preact."""
    from distillab.taps import aliases

    model = _model(name)
    named = aliases(model)
    preacts = sorted(a for a in named if a.rpartition(".")[2] == "preact")
    assert PUBLISHED[name] <= set(preacts), PUBLISHED[name] - set(preacts)
    assert not [n for n, _ in model.named_modules() if n.rpartition(".")[2] == "preact"]
    inputs: dict[str, Tensor] = {}
    for path in preacts:  # each owner's input, as it received it
        owner = path.rpartition(".")[0]
        model.get_submodule(owner).register_forward_pre_hook(
            lambda _m, args, owner=owner: inputs.__setitem__(owner, args[0].clone())
        )
    taps = FeatureTaps(model, preacts)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    for train in (False, True):  # training mode: BatchNorm normalises by the batch's statistics, by hand too
        model.train(train)
        with torch.no_grad():
            model(x)
            features = taps.pop()
            for path in preacts:
                owner = path.rpartition(".")[0]
                assert torch.equal(features[path], _preact_by_hand(model, owner, inputs[owner])), (path, train)
                assert (features[path] < 0).any(), path  # before the ReLU, and not overwritten by an in-place one


# sha256 (first 16 hex digits) of the newline-joined state_dict keys each model had at 3098358, when `preact` was an
# nn.Identity module: checkpoints and cached teachers written then must load into the models as they are now.
KEYS_BEFORE_ALIASES = {
    "resnet110": "aeba6e33283fb472",
    "resnet14": "91b3eccd11cc4456",
    "resnet20": "8b63b6f92921e186",
    "resnet32": "307981a729f5b634",
    "resnet32x4": "9d9d6697a5b9ab5f",
    "resnet44": "09ad8b7d3c4c898c",
    "resnet50": "8fcd44aaa73b7095",
    "resnet56": "fa1effc02561143a",
    "resnet8": "b90db0829d4f2017",
    "resnet8x4": "ac6a0b237e2a52a6",
    "shufflenetv1": "0ad92556830f54b4",
    "vgg13": "9a32cdc33cc15fde",
    "vgg8": "165ccf4281e3ed23",
    "wrn_16_2": "f9dfce1ec3b092e8",
    "wrn_40_1": "542d54d02b811fe6",
    "wrn_40_2": "0d965fc7db940281",
}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_checkpoints_keep_their_keys_without_the_tap_only_modules(name: str, tmp_path: Path) -> None:
    """The state_dict keys, in order, are those the model had with its `preact` identity modules (pinned from that
    commit), so a checkpoint written then loads strictly; one saved now loads back through `load_checkpoint`."""
    import hashlib

    from distillab.checkpoint import load_checkpoint

    model = _model(name)
    keys = list(model.state_dict())
    assert hashlib.sha256("\n".join(keys).encode()).hexdigest()[:16] == KEYS_BEFORE_ALIASES[name]
    torch.save(model.state_dict(), tmp_path / "now.pt")
    model.load_state_dict(load_checkpoint(tmp_path / "now.pt"), strict=True)


def test_an_alias_is_named_among_valid_paths_and_keeps_its_tap_transform() -> None:
    """`layer1.0.preact` is valid where no such module exists, near misses suggest it, `:input` on it reads the same
    tensor (as the identity's input did), and a module of that name would win over the alias."""
    torch.manual_seed(0)
    net = resnet(depth=8, num_classes=10).eval()
    with pytest.raises(ConfigError, match=r"'layer1.0.preac' is not a module of CifarResNet: .*layer1.0.preact"):
        FeatureTaps(net, {"layer1.0.preac": "loss.teacher_layers"})
    taps = FeatureTaps(net, ["layer1.0.preact", "layer1.0.preact:input", "layer1.0.relu_out:input"])
    net(torch.randn(2, 3, 32, 32))
    f = taps.pop()
    assert f["layer1.0.preact"] is f["layer1.0.relu_out:input"] and f["layer1.0.preact:input"] is f["layer1.0.preact"]
    net.layer1[0].add_module("preact", nn.Identity())  # not called in forward: a module by that name is what is tapped
    taps.remove()
    taps = FeatureTaps(net, ["layer1.0.preact"])
    net(torch.randn(2, 3, 32, 32))
    assert taps.pop() == {}


def test_a_teacher_no_better_than_chance_is_named_before_training(tmp_path: Path, caplog) -> None:
    """teacher.source=built on a constructor without pretrained weights (the digits MLP) distils a random network:
    its validation accuracy (about 10% on 10 classes) is at most twice chance and a tenth of the way to 100% (19%), and
    the log says so, with the way out, before the first epoch. A trained teacher draws no such warning, also on two
    classes, where chance is 50%."""
    from distillab.runner import warn_if_untrained
    from distillab.teacher import TeacherInfo
    from tests.conftest import run_in

    with caplog.at_level("INFO", logger="distillab"):
        metrics, _ = run_in(tmp_path, "loss=kd", "teacher.source=built", "trainer.max_epochs=1", shared_cache=False)
    assert metrics["teacher_val_acc"] <= 19.0
    warned = [r for r in caplog.records if "looks untrained on these labels" in r.getMessage()]
    assert len(warned) == 1 and warned[0].levelname == "WARNING"
    said = warned[0].getMessage()
    assert "(teacher.source=built)" in said and "about chance for 10 classes (10)" in said
    assert caplog.text.index("looks untrained") < caplog.text.index("epoch 1/1")

    caplog.clear()
    info = TeacherInfo("teacher", "cache/teachers/x", "cache", "best", 2, 2)
    with caplog.at_level("WARNING", logger="distillab"):
        warn_if_untrained(info, {"val/acc": 19.5}, 10)  # past 10 + 90 / 10: trained, if poorly
        warn_if_untrained(info, {"val/acc": 97.5}, 2)  # a binary task: chance is 50
        warn_if_untrained(info, {"val/acc": 65.0}, 3)  # past 33.3 + 66.7 / 10
        warn_if_untrained(info, {"val/acc": 10.5}, 100)  # past twice chance (2): trained briefly, not untrained
        warn_if_untrained(info, {"val/acc": 1.0}, None)  # not a classification task: nothing to compare with
        assert not caplog.records
        warn_if_untrained(info, {"val/acc": 19.0}, 10)
        warn_if_untrained(info, {"val/acc": 54.0}, 2)
        warn_if_untrained(info, {"val/acc": 1.5}, 100)  # at most twice chance (2)
    assert "val/acc=1.5 on this run's validation set, about chance for 100 classes (1)" in caplog.text
    assert "the cached teacher cache/teachers/x (teacher) scores val/acc=19" in caplog.text
    # a cached teacher trained too briefly: the way out is more epochs (deleting the entry retrains the same one)
    assert "train it for more epochs (teacher.max_epochs, now 2: a new cache entry)" in caplog.text
    assert "val/acc=54 on this run's validation set, about chance for 2 classes (50)" in caplog.text


def test_a_layer_the_network_lacks_lists_the_near_paths_then_its_top_level_layers() -> None:
    """`features` is LightNN's layer; on a CIFAR ResNet the suggestion is where one would look for a layer to tap
    (its top-level layers), not loose matches of the typed text (`relu` was once the only one said)."""
    net = resnet(depth=8, num_classes=10)
    with pytest.raises(ConfigError) as raised:
        FeatureTaps(net, {"features": "loss.student_layer"})
    assert str(raised.value) == (
        "loss.student_layer='features' is not a module of CifarResNet: valid paths include conv1, bn1, relu, layer1, "
        "layer2, layer3, avgpool, fc."
    )
    with pytest.raises(ConfigError, match=r"'layer3.0.con1' .* include layer3.0.conv1, layer3.0.conv2, "):
        FeatureTaps(net, {"layer3.0.con1": "loss.student_layer"})  # near paths first
