"""ImageNet-style image folders: small trees of generated images in a temporary folder, read with
Pillow in DataLoader workers, checked against pixel values worked out by hand."""

import math
import random

import numpy as np
import pytest
import torch
from PIL import Image

from attnbench import store
from attnbench.cli import main
from attnbench.data import DataError, load_dataset
from attnbench.imagefolder import CROP_RATIO, CROP_SCALE, MEAN, STD, center_crop_box, random_crop_box, read_image, scan

COLOURS = {"cat": (200, 30, 30), "dog": (30, 200, 30), "eel": (30, 30, 200)}


def write_tree(root, per_class=(6, 3), size=(40, 30)):
    """train/ and val/ with one folder per class; each image is its class's colour, in several formats and
    modes (RGB JPEG, palette PNG, grey PNG, RGBA PNG), so the reader's conversions are exercised."""
    for split, n in zip(("train", "val"), per_class):
        for name, colour in COLOURS.items():
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(n):
                image = Image.new("RGB", size, colour)
                kind = i % 4
                if kind == 0:
                    image.save(folder / f"{i}.jpg", quality=100)
                elif kind == 1:
                    image.convert("P").save(folder / f"{i}.png")
                elif kind == 2:
                    image.convert("RGBA").save(folder / f"{i}.PNG")
                else:
                    image.save(folder / f"{i}.bmp")
    (root / "train" / "cat" / "notes.txt").write_text("not an image")  # skipped: not an image extension
    return root


def normalised(colour):
    return torch.tensor([(c / 255 - m) / s for c, m, s in zip(colour, MEAN, STD)])


def test_reads_every_class_and_split_with_labels_from_sorted_folders(tmp_path):
    train, val = load_dataset("imagefolder", write_tree(tmp_path), image_size=16, workers=2)
    assert train.num_classes == val.num_classes == 3
    assert torch.bincount(train.labels).tolist() == [6, 6, 6] and torch.bincount(val.labels).tolist() == [3, 3, 3]
    assert train.augment and not val.augment
    seen = 0
    for x, y in val.eval_batches(4):
        assert x.shape == (len(y), 3, 16, 16) and x.dtype == torch.float32
        for image, label in zip(x, y):
            # a plain colour survives cropping and resizing; JPEG may move a channel by a few levels
            expected = normalised(list(COLOURS.values())[label])
            assert torch.allclose(image.mean(dim=(1, 2)), expected, atol=4 / 255 / min(STD))
        seen += len(y)
    assert seen == 9


def test_evaluation_keeps_the_centre_and_training_flips_and_crops(tmp_path):
    # left half white, right half black, 64 x 48: the centre crop keeps 87.5 % of the shorter side (42 px)
    image = np.zeros((48, 64, 3), np.uint8)
    image[:, :32] = 255
    path = tmp_path / "half.png"
    Image.fromarray(image).save(path)
    assert center_crop_box(64, 48) == pytest.approx((11, 3, 53, 45))
    x = read_image(str(path), 42, augment=False, seed=0)  # no resampling: the crop is 42 x 42
    white, black = normalised((255, 255, 255)), normalised((0, 0, 0))
    assert torch.allclose(x[:, :, :21], white[:, None, None].expand(3, 42, 21), atol=1e-5)
    assert torch.allclose(x[:, :, 21:], black[:, None, None].expand(3, 42, 21), atol=1e-5)
    # training: seeded, and half of the seeds flip (white then on the right)
    flips = 0
    for seed in range(200):
        a, b = read_image(str(path), 16, augment=True, seed=seed), read_image(str(path), 16, augment=True, seed=seed)
        assert torch.equal(a, b)
        rng = random.Random(seed)
        left, top, right, bottom = random_crop_box(64, 48, rng)
        flipped = rng.random() < 0.5
        flips += flipped
        if left + 2 < 32 < right - 2:  # the crop holds both halves: which side is white says whether it flipped
            white_left = a[0, :, 0].mean() > a[0, :, -1].mean()
            assert bool(white_left) != flipped
    assert 70 < flips < 130


def test_random_crops_keep_the_area_and_ratio_ranges():
    rng = random.Random(0)
    for width, height in [(64, 48), (500, 375), (30, 300), (300, 30), (7, 7), (5, 500)]:
        for _ in range(300):
            left, top, right, bottom = random_crop_box(width, height, rng)
            w, h = right - left, bottom - top
            assert 0 <= left < right <= width and 0 <= top < bottom <= height
            if (width, height) in [(64, 48), (500, 375)]:  # these always find a crop in range within 10 tries
                assert CROP_SCALE[0] * 0.9 <= w * h / (width * height) <= CROP_SCALE[1]
                assert CROP_RATIO[0] * 0.9 <= w / h <= CROP_RATIO[1] * 1.1
    # so tall that no try fits (8 % of the area is at least 12 pixels wide at ratio 3/4): the largest centred
    # crop with a ratio in range, 5 wide and 5 / (3/4) = 6.7, so 7, high
    assert math.sqrt(CROP_SCALE[0] * 5 * 500 * CROP_RATIO[0]) > 5
    assert random_crop_box(5, 500, random.Random(1)) == (0, 246, 5, 253)


def test_a_run_is_the_same_with_any_number_of_workers_and_split_over_processes(tmp_path):
    train, _ = load_dataset("imagefolder", write_tree(tmp_path), image_size=12, workers=0)
    order = torch.randperm(18, generator=torch.Generator().manual_seed(0))[:16].view(2, 8)
    one = list(train.batches(order, torch.Generator().manual_seed(5), slice(None)))
    two_workers = train.subset(torch.arange(18), True)
    two_workers.workers = 2
    assert all(torch.equal(a[0], b[0]) for a, b in zip(one, two_workers.batches(order, torch.Generator().manual_seed(5),
                                                                                slice(None))))
    # two processes each read half of every global batch: together, what one process reads
    halves = [list(train.batches(order, torch.Generator().manual_seed(5), slice(r * 4, (r + 1) * 4))) for r in (0, 1)]
    for step, (x, y) in enumerate(one):
        assert torch.equal(torch.cat([halves[0][step][0], halves[1][step][0]]), x)
        assert torch.equal(torch.cat([halves[0][step][1], halves[1][step][1]]), y)
    assert not torch.equal(one[0][0], list(train.batches(order, torch.Generator().manual_seed(6), slice(None)))[0][0])


@pytest.mark.slow
def test_train_and_eval_on_an_image_folder(tmp_path, capsys):
    root, db = write_tree(tmp_path / "tree"), tmp_path / "r.sqlite"
    common = ["--dataset", "imagefolder", "--data-dir", str(root), "--model", "conv_probe", "--width", "0.5",
              "--batch", "6", "--steps", "4", "--db", str(db), "--image-size", "24"]
    assert main(["train", *common, "--workers", "2", "--out", str(tmp_path / "a")]) == 0
    assert main(["train", *common, "--workers", "0", "--out", str(tmp_path / "b")]) == 0
    rows = store.load_training(db)
    runs = [g for _, g in rows.groupby("run_id", sort=False)]
    assert len(runs) == 2 and runs[0].train_loss.tolist() == runs[1].train_loss.tolist()  # workers change nothing
    assert set(rows.image_size) == {24} and set(rows.dataset) == {"imagefolder"}
    assert rows.macs_per_image.iloc[0] > 0
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(tmp_path / "a" / "checkpoint.pt"), "--dataset", "imagefolder",
                 "--data-dir", str(root), "--db", str(db)]) == 0
    top1 = float(capsys.readouterr().out.split("top-1 ")[1].split(" %")[0])
    assert top1 == pytest.approx(rows.top1_pct.iloc[len(runs[0]) - 1])


def test_a_checkpoint_is_evaluated_only_on_the_classes_it_was_trained_on(tmp_path, capsys):
    """Another folder with more classes, or as many with other names, is refused in one line before anything is
    stored: its labels would index past the network's outputs, or mean other things."""
    root = write_tree(tmp_path / "tree", per_class=(2, 1))
    assert main(["train", "--dataset", "imagefolder", "--data-dir", str(root), "--model", "conv_probe", "--width",
                 "0.5", "--batch", "2", "--steps", "1", "--image-size", "16", "--workers", "0", "--out",
                 str(tmp_path / "run"), "--db", str(tmp_path / "r.sqlite")]) == 0
    more, renamed = write_tree(tmp_path / "more", per_class=(1, 1)), write_tree(tmp_path / "renamed", per_class=(1, 1))
    for split in ("train", "val"):
        (more / split / "fox").mkdir()
        __import__("shutil").copy(more / split / "cat" / "0.jpg", more / split / "fox" / "0.jpg")
        (renamed / split / "cat").rename(renamed / split / "lynx")
    n = len(COLOURS)
    for folder, message in [(more, f"network has {n} classes; imagefolder in {more} has {n + 1}."),
                            (renamed, "was trained on other classes than imagefolder in")]:
        code = main(["eval", "--checkpoint", str(tmp_path / "run" / "checkpoint.pt"), "--dataset", "imagefolder",
                     "--data-dir", str(folder), "--db", str(tmp_path / "e.sqlite")])
        err = capsys.readouterr().err
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "e.sqlite").exists() or store.load_evaluations(tmp_path / "e.sqlite").empty


def test_a_checkpoint_is_evaluated_on_a_folder_with_val_only(tmp_path, capsys):
    """Evaluating needs the validation images alone (ImageNet's val/ without its 1.28 million training images): the
    checkpoint names its classes, which label val/'s folders; the top-1 is the one the full folder gives; train
    is still required to train, and val/ classes the network never saw are refused in one line."""
    root = write_tree(tmp_path / "tree", per_class=(2, 2))
    ckpt = str(tmp_path / "run" / "checkpoint.pt")
    assert main(["train", "--dataset", "imagefolder", "--data-dir", str(root), "--model", "conv_probe", "--width",
                 "0.5", "--batch", "2", "--steps", "2", "--image-size", "16", "--workers", "0", "--out",
                 str(tmp_path / "run"), "--db", str(tmp_path / "r.sqlite")]) == 0
    val_only = tmp_path / "val-only"
    __import__("shutil").copytree(root / "val", val_only / "val")
    capsys.readouterr()
    outs = []
    for folder in (root, val_only):
        assert main(["eval", "--checkpoint", ckpt, "--dataset", "imagefolder", "--data-dir", str(folder), "--res",
                     "16,20", "--db", str(tmp_path / "e.sqlite")]) == 0
        outs.append([line.split(": ", 1)[1] for line in capsys.readouterr().out.splitlines() if "top-1" in line])
    assert len(outs[0]) == 2 and outs[0] == outs[1], outs
    __import__("shutil").rmtree(val_only / "val" / "cat")  # a class without validation images keeps its label
    classes, splits = scan(val_only, list(COLOURS))
    assert classes == list(COLOURS) and list(splits) == ["val"] and splits["val"][1].tolist() == [1, 1, 2, 2]
    (val_only / "val" / "dog").rename(val_only / "val" / "wolf")
    db = ["--db", str(tmp_path / "e.sqlite")]
    assert main(["eval", "--checkpoint", ckpt, "--dataset", "imagefolder", "--data-dir", str(val_only), *db]) == 2
    err = capsys.readouterr().err
    assert "val has classes that the network was not trained on: wolf" in err and len(err.strip().splitlines()) == 1
    assert main(["train", "--dataset", "imagefolder", "--data-dir", str(val_only), "--model", "conv_probe",
                 "--steps", "1", "--out", str(tmp_path / "again"), *db]) == 2
    assert "has no train/ folder" in capsys.readouterr().err


@pytest.mark.parametrize("change, message", [
    (lambda root: None, "needs --data-dir"),
    (lambda root: (root / "missing").mkdir(), "no folder"),
    (lambda root: __import__("shutil").rmtree(root / "val"), "has no val/ folder"),
    (lambda root: (root / "val" / "fox").mkdir(), "classes that train/ lacks: fox"),
    (lambda root: (root / "val" / "cat" / "0.jpg").write_bytes(b"not a jpeg"), "Cannot read image"),
])
def test_bad_folders_are_one_line_errors(tmp_path, capsys, change, message):
    root = write_tree(tmp_path / "tree", per_class=(2, 1))
    change(root)
    data_dir = [] if message == "needs --data-dir" else ["--data-dir", str(root / "missing" / "x")
                                                          if message == "no folder" else str(root)]
    code = main(["train", "--dataset", "imagefolder", *data_dir, "--model", "conv_probe", "--batch", "2",
                 "--steps", "1", "--image-size", "8", "--workers", "1", "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_memory_data_sets_refuse_another_image_size():
    with pytest.raises(DataError, match="digits images are 32 x 32"):
        load_dataset("digits", image_size=64)


def test_an_image_that_pillow_would_hand_to_another_program_is_refused(tmp_path, monkeypatch):
    from PIL import EpsImagePlugin

    root = write_tree(tmp_path / "tree", per_class=(2, 1))
    eps = root / "val" / "cat" / "0.jpg"  # an EPS file named as a JPEG: Pillow would render it with Ghostscript
    eps.write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\nnewpath 0 0 moveto 8 8 lineto stroke\n"
                    b"showpage\n%%EOF\n")
    handed = []
    monkeypatch.setattr(EpsImagePlugin, "Ghostscript", lambda *args, **kwargs: handed.append(args) or 1 / 0)
    monkeypatch.setattr(EpsImagePlugin, "has_ghostscript", lambda: True)
    _, val = load_dataset("imagefolder", root, image_size=8, workers=0)
    with pytest.raises(DataError, match="0.jpg: it is not a JPEG, PNG, BMP, PPM, WEBP or TIFF image"):
        list(val.eval_batches(4))
    assert not handed
