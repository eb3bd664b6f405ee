"""The standard ImageNet set-up in one command (experiment=imagenet/resnet34_resnet18/kd), offline: torchvision's
real weight loading from a weights file saved here where torch.hub keeps its downloads, and torchvision's real
ImageNet class on a tiny ImageNet laid out as it unpacks the archives (meta.bin, train/, val/)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from torchvision.models import ResNet34_Weights, resnet34

from distillab.config import compose
from distillab.errors import ConfigError
from tests.conftest import run_in

EXPERIMENT = "experiment=imagenet/resnet34_resnet18/kd"
WEIGHTS = ResNet34_Weights.IMAGENET1K_V1
WNIDS = ["n01440764", "n01443537"]  # two classes (indices 0 and 1 of 1000), two val and four train images each
BIASED = 1  # the saved teacher's classifier favours this class: its accuracy on the tiny val split is known


@pytest.fixture(scope="module")
def saved_weights(tmp_path_factory) -> tuple[Path, dict[str, torch.Tensor]]:
    """A random ResNet-34 state_dict saved as torchvision's IMAGENET1K_V1 file (its URL's file name) under a
    TORCH_HOME's hub/checkpoints/, where torch.hub looks before downloading. torch.hub checks a file's hash only
    when it downloads it (load_state_dict_from_url's check_hash), so this file is loaded as it is."""
    torch_home = tmp_path_factory.mktemp("torch_home")
    torch.manual_seed(34)
    state = resnet34().state_dict()
    state["fc.weight"] *= 1e-3  # (random features give logits of +-100: scaled down, the bias below decides)
    state["fc.bias"][BIASED] += 10.0  # every prediction is class 1, unlike any randomly initialised network's
    checkpoints = torch_home / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    torch.save(state, checkpoints / os.path.basename(WEIGHTS.url))
    return torch_home, state


@pytest.fixture(scope="module")
def tiny_imagenet(tmp_path_factory) -> Path:
    """ImageNet as torchvision.datasets.ImageNet leaves it after unpacking the archives: meta.bin (wnid -> class
    names, the val images' wnids) and train/<wnid>/*.JPEG, val/<wnid>/*.JPEG; small images of several sizes."""
    from PIL import Image

    root = tmp_path_factory.mktemp("imagenet")
    torch.save(({w: (f"class {w}",) for w in WNIDS}, [w for w in WNIDS for _ in range(2)]), root / "meta.bin")
    generator = torch.Generator().manual_seed(0)
    for split, count in (("train", 4), ("val", 2)):
        for wnid in WNIDS:
            (root / split / wnid).mkdir(parents=True)
            for i in range(count):
                size = (40 + 8 * i, 32 + 4 * i)
                pixels = torch.randint(0, 256, (size[1], size[0], 3), dtype=torch.uint8, generator=generator)
                Image.fromarray(pixels.numpy()).save(root / split / wnid / f"{wnid}_{i}.JPEG")
    return root


def test_the_experiment_is_the_standard_imagenet_recipe() -> None:
    """Data: torchvision's ImageNet in data.root, RandomResizedCrop(224) + flip / Resize(256) + CenterCrop(224),
    ImageNet's mean and std, from disk; torchvision's ResNet-34 with IMAGENET1K_V1 as built -> ResNet-18 without
    weights; mdistiller's r34_r18 KD: T 1, CE 0.5 + KD 0.5, SGD lr 0.1 per 256 images, momentum 0.9, weight decay
    1e-4, 100 epochs, lr x0.1 at 30, 60, 90."""
    cfg = compose([EXPERIMENT, "data.root=/data/imagenet"])
    data = cfg.data
    assert (
        data._target_ == "distillab.data.datasets.dataset_data" and not data.in_memory and data.get("augment") is None
    )
    for split in ("train", "val"):
        assert data[split]._target_ == "torchvision.datasets.ImageNet" and data[split].split == split
        assert data[split].root == "/data/imagenet" and "download" not in data[split]
    transforms = {
        s: [(t._target_.rsplit(".", 1)[1], t.get("size")) for t in data.transforms[s]] for s in ("train", "val")
    }
    assert transforms == {
        "train": [("RandomResizedCrop", 224), ("RandomHorizontalFlip", None)],
        "val": [("Resize", 256), ("CenterCrop", 224)],
    }
    assert list(data.normalize.mean) == [0.485, 0.456, 0.406] and list(data.normalize.std) == [0.229, 0.224, 0.225]
    assert (data.num_classes, data.image_size, data.in_channels, data.batch_size) == (1000, 224, 3, 256)
    teacher, student = cfg.model.teacher, cfg.model.student
    assert (teacher._target_, teacher.weights) == ("torchvision.models.resnet34", "IMAGENET1K_V1")
    assert (student._target_, student.weights) == ("torchvision.models.resnet18", None)
    assert cfg.teacher.source == "built" and cfg.teacher.checkpoint is None
    assert set(cfg.loss.terms) == {"ce", "kd"} and cfg.loss.terms.kd.temperature == 1.0
    assert dict(cfg.loss.weights) == {"ce": 0.5, "kd": 0.5}
    optim = cfg.optim
    assert (optim._target_, optim.lr, optim.momentum, optim.weight_decay) == ("torch.optim.SGD", 0.1, 0.9, 1e-4)
    assert optim.scheduler._target_.endswith("MultiStepLR") and list(optim.scheduler.milestones) == [30, 60, 90]
    assert optim.scheduler.gamma == 0.1 and cfg.trainer.max_epochs == 100


def test_per_image_transforms_are_refused_in_memory_and_with_a_batch_augmentation() -> None:
    """Images of many sizes cannot be stacked into one tensor, and the train split's transforms are its
    augmentation: each refusal is one sentence, before any file is looked for."""
    from distillab.instantiate import instantiate

    for extra, message in (
        (["data.in_memory=true"], r"^data.in_memory=True is not valid: use false with per-image transforms"),
        (["data/augment=crop_flip"], r"^data.augment='CropFlip' is not valid: use null with data.transforms"),
        (["+data.transforms.test=[]"], r"^data.transforms=\['test', 'train', 'val'\] is not valid"),
    ):
        cfg = compose(["data=imagenet", "data.root=/nowhere", *extra])
        with pytest.raises(ConfigError, match=message):
            instantiate(cfg.data, key="data")


def test_the_teacher_as_built_holds_torchvisions_weights_loaded_offline(saved_weights, monkeypatch, capfd) -> None:
    """teacher.source=built through torchvision's own loading code (weights=IMAGENET1K_V1 -> torch.hub): the
    teacher holds exactly the saved tensors, nothing is downloaded, and it is frozen in eval mode."""
    from distillab.teacher import build_teachers, load_teacher_weights

    torch_home, state = saved_weights
    monkeypatch.setenv("TORCH_HOME", str(torch_home))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)  # (torch.hub.set_dir would override TORCH_HOME)
    cfg = compose([EXPERIMENT, "data.root=/data/imagenet"])
    (teacher,) = build_teachers(cfg, torch.device("cpu"))
    (info,) = load_teacher_weights(cfg, [teacher], train=lambda _: pytest.fail("a built teacher is never trained"))
    assert "Downloading" not in capfd.readouterr().out  # torch.hub says so when it fetches a file
    assert (info.kind, info.source, info.name) == ("built", "torchvision.models.resnet34", "resnet34")
    loaded = teacher.state_dict()
    assert loaded.keys() == state.keys() and all(torch.equal(loaded[k], state[k]) for k in state)
    assert not teacher.training and not any(m.training for m in teacher.modules())
    assert not any(p.requires_grad for p in teacher.parameters())


def test_a_missing_imagenet_is_one_sentence_naming_data_root_before_any_weights_are_fetched(
    tmp_path: Path, monkeypatch
) -> None:
    """No ImageNet under data.root: one sentence naming data.root and the files torchvision's ImageNet expects
    there, said before the teacher's weights would be downloaded (none is attempted: the hub folder stays empty)."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)
    missing = tmp_path / "nowhere"
    with pytest.raises(ConfigError) as refused:
        run_in(tmp_path, EXPERIMENT, f"data.root={missing}", shared_cache=False)
    assert str(refused.value) == (
        f"ImageNet (train split) was not found under data.root={missing}: torchvision's ImageNet expects "
        "ILSVRC2012_devkit_t12.tar.gz and ILSVRC2012_img_train.tar from image-net.org (torchvision cannot download "
        "them; it unpacks them there on first use), or the meta.bin and train/ folder unpacked from them; set "
        "data.root to the folder that holds them."
    )
    assert not list((tmp_path / "torch_home").rglob("*.pth"))


def test_the_one_command_trains_the_student_on_a_tiny_imagenet(
    saved_weights, tiny_imagenet: Path, tmp_path: Path, monkeypatch
) -> None:
    """The experiment as the docs give it, with data.root and smaller batches: torchvision's ImageNet reads the
    images through the standard transforms, the teacher is the saved network as built (its validation accuracy is
    theirs: every prediction class 1, half the val images), the student trains one epoch under CE + KD."""
    torch_home, _ = saved_weights
    monkeypatch.setenv("TORCH_HOME", str(torch_home))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)
    metrics, run_dir = run_in(
        tmp_path,
        EXPERIMENT,
        f"data.root={tiny_imagenet}",
        "data.batch_size=4",
        "data.num_workers=0",
        "trainer.max_epochs=1",
        shared_cache=False,
    )
    assert metrics["status"] == "completed" and metrics["teacher"]["kind"] == "built"
    assert metrics["teacher_val_acc"] == pytest.approx(100 * 2 / 4)
    assert not (tmp_path / "cache" / "teachers").exists()  # nothing trained, nothing cached
    from tests.conftest import scalars

    logged = scalars(run_dir)
    assert logged["loss/kd"] and logged["loss/ce"] and all(torch.isfinite(torch.tensor(logged["loss/total"])))
