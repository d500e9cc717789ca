"""ImageNet-style image folders, the way people keep real data: ``DIR/train/<class>/*.jpg`` and
``DIR/val/<class>/*.jpg`` (any of ``EXTENSIONS``), one folder per class, classes in sorted order.

Images are decoded with Pillow in DataLoader worker processes, never all held in memory. Training
images get the standard augmentation (a random crop of 8 % to 100 % of the image's area with an aspect
ratio between 3/4 and 4/3, resized to the side asked for, and a horizontal flip half the time);
evaluation images are resized so that the side asked for is 87.5 % of their shorter side and
centre-cropped (224 of 256). Both are normalised with ImageNet's channel statistics.

Augmentation is drawn per image from a seed fixed by the run's seed, the epoch and the image's place
in the global batch, so a run is the same with any number of workers or processes.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import DataLoader

from attnbench.errors import DataError

EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".webp", ".tif", ".tiff")
# The decoders an image may use, whatever its name says: Pillow identifies a file by its content, and some
# of its other formats hand the file to programs outside Python (EPS to Ghostscript)
FORMATS = ("JPEG", "PNG", "BMP", "PPM", "WEBP", "TIFF")  # JPEG's decoder reads cameras' MPO files too
SPLITS = ("train", "val")
MEAN = (0.485, 0.456, 0.406)  # ImageNet's channel statistics, as ImageNet-style training normalises
STD = (0.229, 0.224, 0.225)
CROP_SCALE = (0.08, 1.0)  # training crops: share of the image's area
CROP_RATIO = (3 / 4, 4 / 3)  # training crops: width over height
EVAL_CROP = 0.875  # evaluation: the side asked for over the resized shorter side (224 of 256)
CROP_TRIES = 10  # random crops drawn before falling back to a centre crop


def random_crop_box(width: int, height: int, rng: random.Random) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of a random crop covering ``CROP_SCALE`` of the area with a width over
    height in ``CROP_RATIO`` (drawn log-uniformly); after ``CROP_TRIES`` misses, the largest centred crop
    whose ratio is in range."""
    area = width * height
    low, high = math.log(CROP_RATIO[0]), math.log(CROP_RATIO[1])
    for _ in range(CROP_TRIES):
        target = area * rng.uniform(*CROP_SCALE)
        ratio = math.exp(rng.uniform(low, high))
        w, h = round(math.sqrt(target * ratio)), round(math.sqrt(target / ratio))
        if 0 < w <= width and 0 < h <= height:
            left, top = rng.randint(0, width - w), rng.randint(0, height - h)
            return left, top, left + w, top + h
    ratio = min(max(width / height, CROP_RATIO[0]), CROP_RATIO[1])
    w, h = (width, round(width / ratio)) if width / height <= ratio else (round(height * ratio), height)
    left, top = (width - w) // 2, (height - h) // 2
    return left, top, left + w, top + h


def center_crop_box(width: int, height: int) -> tuple[float, float, float, float]:
    """The centred square that evaluation keeps: ``EVAL_CROP`` of the shorter side (resizing the shorter
    side to size / EVAL_CROP and cropping size from the middle keeps the same pixels)."""
    side = min(width, height) * EVAL_CROP
    left, top = (width - side) / 2, (height - side) / 2
    return left, top, left + side, top + side


def to_tensor(image: Image.Image) -> torch.Tensor:
    """An RGB image as a normalised (3, H, W) float tensor."""
    pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255).permute(2, 0, 1)
    return (pixels - torch.tensor(MEAN)[:, None, None]) / torch.tensor(STD)[:, None, None]


def read_image(path: str, size: int, augment: bool, seed: int) -> torch.Tensor:
    """One image, cropped, resized to ``size`` x ``size`` and normalised; with ``augment`` the crop and
    flip are drawn from ``seed``."""
    Image.init()  # every decoder registered (only those of FORMATS that this Pillow has are tried)
    try:
        opened = Image.open(path, formats=[f for f in FORMATS if f in Image.OPEN])
    except UnidentifiedImageError:
        raise ValueError(f"it is not a {', '.join(FORMATS[:-1])} or {FORMATS[-1]} image") from None
    with opened:
        image = opened.convert("RGB")
    if augment:
        rng = random.Random(seed)
        image = image.resize((size, size), Image.Resampling.BILINEAR, box=random_crop_box(*image.size, rng))
        if rng.random() < 0.5:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    else:
        image = image.resize((size, size), Image.Resampling.BILINEAR, box=center_crop_box(*image.size))
    return to_tensor(image)


class _Reader(torch.utils.data.Dataset):
    """What a worker reads: an item is (index, seed); a file that cannot be read comes back as its error."""

    def __init__(self, paths: Sequence[str], labels: torch.Tensor, size: int, augment: bool) -> None:
        self.paths, self.labels, self.size, self.augment = paths, labels, size, augment

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, item: tuple[int, int]) -> tuple[torch.Tensor, int] | str:
        index, seed = item
        try:
            return read_image(self.paths[index], self.size, self.augment, seed), int(self.labels[index])
        except (OSError, ValueError, Image.DecompressionBombError) as e:
            return f"Cannot read image {self.paths[index]}: {e}."


def _collate(items: list) -> tuple[torch.Tensor, torch.Tensor] | str:
    errors = [item for item in items if isinstance(item, str)]
    if errors:
        return errors[0]
    return torch.stack([x for x, _ in items]), torch.tensor([y for _, y in items])


class ImageFolderSet:
    """One split of an image folder, read as it is used (see the module's docstring)."""

    name = "imagefolder"

    def __init__(self, paths: Sequence[str], labels: torch.Tensor, classes: Sequence[str], *, augment: bool,
                 size: int, workers: int) -> None:
        self.paths, self.labels, self.classes, self.num_classes = list(paths), labels, list(classes), len(classes)
        self.augment, self.size, self.workers = augment, size, workers

    def subset(self, idx: torch.Tensor, augment: bool) -> ImageFolderSet:
        return ImageFolderSet([self.paths[i] for i in idx.tolist()], self.labels[idx], self.classes,
                              augment=augment, size=self.size, workers=self.workers)

    def batches(self, order: torch.Tensor, generator: torch.Generator, part: slice
                ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Training batches, as :meth:`attnbench.data.Dataset.batches`: this process reads only its ``part``
        of each global batch; each image's augmentation seed follows from ``generator`` and its place in
        the global batch."""
        base = int(torch.randint(2**62, (1,), generator=generator))
        width = order.shape[1]
        plan = [[(index, base + step * width + j) for j, index in enumerate(rows.tolist())][part]
                for step, rows in enumerate(order)]
        return self._read(plan, self.augment)

    def eval_batches(self, batch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = len(self.paths)
        return self._read([[(i, 0) for i in range(start, min(start + batch, n))] for start in range(0, n, batch)],
                          False)

    def _read(self, plan: list[list[tuple[int, int]]], augment: bool) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        loader = DataLoader(_Reader(self.paths, self.labels, self.size, augment), batch_sampler=plan,
                            num_workers=self.workers, collate_fn=_collate)
        for batch in loader:
            if isinstance(batch, str):
                raise DataError(batch)
            yield batch


def scan(root: str | Path, classes: Sequence[str] | None = None
         ) -> tuple[list[str], dict[str, tuple[list[str], torch.Tensor]]]:
    """The classes (the training split's sub-folders, sorted) and each split's image paths and labels. With
    ``classes`` (a trained network's, to evaluate it) and no train/ folder, val/ alone, labelled by ``classes``."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"imagefolder: no folder {root}.")
    splits_here = SPLITS if classes is None or (root / "train").is_dir() else ("val",)
    missing = [split for split in splits_here if not (root / split).is_dir()]
    if missing:
        raise DataError(f"imagefolder: {root} has no {' or '.join(f'{m}/' for m in missing)} folder; expected "
                        + (f"{root}/train/<class>/*.jpg and {root}/val/<class>/*.jpg." if classes is None else
                           f"{root}/val/<class>/*.jpg (evaluating needs val/ alone)."))
    if "train" in splits_here:
        classes = sorted(d.name for d in (root / "train").iterdir() if d.is_dir())
        if not classes:
            raise DataError(f"imagefolder: {root}/train has no class folders.")
    splits = {}
    for split in splits_here:
        unknown = sorted({d.name for d in (root / split).iterdir() if d.is_dir()} - set(classes))
        if unknown:
            lacks = "train/ lacks" if "train" in splits_here else "the network was not trained on"
            raise DataError(f"imagefolder: {root}/{split} has classes that {lacks}: {', '.join(unknown[:5])}.")
        paths, labels = [], []
        for label, name in enumerate(classes):
            folder = root / split / name
            files = sorted(f for f in folder.iterdir() if f.suffix.lower() in EXTENSIONS) if folder.is_dir() else []
            paths += [str(f) for f in files]
            labels += [label] * len(files)
        if not paths:
            raise DataError(f"imagefolder: {root}/{split} holds no images ({', '.join(EXTENSIONS)}).")
        splits[split] = (paths, torch.tensor(labels))
    return list(classes), splits


def load_imagefolder(root: str | Path, *, size: int, workers: int, classes: Sequence[str] | None = None
                     ) -> tuple[ImageFolderSet | None, ImageFolderSet]:
    """(train, val) of the image folder at ``root``; with ``classes`` (see :func:`scan`) train is None where the
    folder has val/ only."""
    classes, splits = scan(root, classes)
    train, val = ((ImageFolderSet(*splits[split], classes, augment=split == "train", size=size, workers=workers)
                   if split in splits else None) for split in SPLITS)
    return train, val
