"""Data sets for the accuracy work, all loaded from disk or generated: nothing is downloaded.

* ``cifar100``, ``cifar10``: the standard python-pickle archives (the ``cifar-100-python`` or
  ``cifar-10-batches-py`` folder, or its ``.tar.gz``) from a directory the user gives.
* ``digits``: scikit-learn's bundled 8x8 handwritten digits (1,797 images), upsampled to 32x32,
  with a stratified train/test split drawn with the seed.
* ``longrange``: a generated probe in the spirit of Long Range Arena's Pathfinder. Each 32x32
  image holds two marked 3x3 patterns far apart (one at the left edge, one at the right edge)
  and unmarked distractor patterns between them; the label says whether the two marked patterns
  are the same. A network that pools local features before relating them cannot tell (the answer
  depends on a pair of distant positions), so it is solved only by variants that relate distant
  pixels early.

Every loader returns float images ``(N, 3, 32, 32)`` normalised per channel, and int64 labels.
``imagefolder`` (an ImageNet-style tree of image files) is streamed instead: see :mod:`attnbench.imagefolder`.

At a side other than the one a network was trained at (:func:`load_at_side`, test-time resolution),
each data set makes its images as its nature asks, normalised as in training: cifar resizes its
32x32 images (bilinear, antialiased when shrinking), digits upsamples its 8x8 originals to the side,
longrange generates its images at the side (the patterns keep their 3x3 size and the marks stay at
the edges, so at a larger side they are farther apart: the same task over a longer range), and
imagefolder resizes its validation images' centre crop to the side.
"""

from __future__ import annotations

import io
import pickle
import tarfile
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from attnbench.choices import DATASETS, count  # noqa: F401  (DATASETS re-exported)
from attnbench.errors import DataError  # noqa: F401  (re-exported: its data sets raise it)

if TYPE_CHECKING:
    from attnbench.imagefolder import ImageFolderSet


@dataclass(frozen=True)
class Dataset:
    """A data set held in memory. Training and evaluation read it through ``batches`` and
    ``eval_batches``, which a streaming set (:class:`attnbench.imagefolder.ImageFolderSet`) has too."""

    name: str
    images: torch.Tensor  # (N, 3, 32, 32) float32, normalised
    labels: torch.Tensor  # (N,) int64
    num_classes: int
    augment: bool  # random crop + flip while training (natural images only)

    def subset(self, idx: torch.Tensor, augment: bool) -> Dataset:
        return Dataset(self.name, self.images[idx], self.labels[idx], self.num_classes, augment)

    def batches(self, order: torch.Tensor, generator: torch.Generator, part: slice
                ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Training batches: row i of ``order`` holds the indices of global batch i; yields this process's
        ``part`` of each, augmented (drawing from ``generator``) over the whole global batch, so that every
        process sees what one process would."""
        for rows in order:
            x, y = self.images[rows], self.labels[rows]
            if self.augment:
                x = augment(x, generator)
            yield x[part], y[part]

    def eval_batches(self, batch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for i in range(0, len(self.labels), batch):
            yield self.images[i : i + batch], self.labels[i : i + batch]


IMAGE_SIDE = 32  # of every data set held in memory
DEFAULT_IMAGEFOLDER_SIDE = 224


def _normalised(stats_from: torch.Tensor, *images: torch.Tensor) -> list[torch.Tensor]:
    """``images`` normalised per channel with the mean and standard deviation of ``stats_from`` (the training
    split, at the side trained at)."""
    mean = stats_from.mean(dim=(0, 2, 3), keepdim=True)
    std = stats_from.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-6)
    return [(x - mean) / std for x in images]


def resized(images: torch.Tensor, side: int) -> torch.Tensor:
    """Images resized to ``side`` x ``side``: bilinear, antialiased when shrinking (as PIL resizes)."""
    if images.shape[-1] == side:
        return images
    return F.interpolate(images, size=(side, side), mode="bilinear", align_corners=False,
                         antialias=side < images.shape[-1])


# ---- cifar ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class CifarLayout:
    """Where the python version of a CIFAR archive keeps its splits."""

    folder: str  # the folder inside the archive, e.g. cifar-100-python
    train: tuple[str, ...]  # the files of the training split
    test: tuple[str, ...]
    label_key: str
    classes: int


CIFAR = {
    "cifar100": CifarLayout("cifar-100-python", ("train",), ("test",), "fine_labels", 100),
    "cifar10": CifarLayout("cifar-10-batches-py", tuple(f"data_batch_{i}" for i in range(1, 6)), ("test_batch",),
                           "labels", 10),
}


CLASSES = {**{name: layout.classes for name, layout in CIFAR.items()}, "digits": 10, "longrange": 2}


MAX_BATCH_BYTES = 1 << 29  # a CIFAR batch file holds at most 60,000 images of 3,072 bytes (180 MiB)
NUMERIC_KINDS = "biufc"  # numpy's kinds of numbers: bool, signed, unsigned, float, complex


class _Refused(Exception):
    """A pickle that names something a CIFAR batch never holds."""


def _numeric_dtype(*args) -> np.dtype:
    dtype = np.dtype(*args)
    if dtype.kind not in NUMERIC_KINDS:
        raise _Refused(f"an array of {dtype}")
    return dtype


def _plain_array(subtype, shape, dtype) -> np.ndarray:  # numpy's _reconstruct: an empty array, then its state
    if subtype is not np.ndarray:
        raise _Refused(f"an array of type {getattr(subtype, '__name__', subtype)}")
    return np.ndarray(shape, dtype)


def _from_buffer(buffer, dtype, shape, order) -> np.ndarray:  # how numpy pickles an array at protocol 5
    return np.frombuffer(buffer, _numeric_dtype(dtype)).reshape(shape, order=order)


def _scalar(dtype, data: bytes | str = b""):  # a numpy number
    raw = data.encode("latin1") if isinstance(data, str) else data
    return np.frombuffer(raw, _numeric_dtype(dtype), count=1)[0]


def _latin1(text: str, encoding: str = "utf-8") -> bytes:  # how Python 3 pickles bytes at protocol 2
    if encoding != "latin1":
        raise _Refused(f"bytes encoded as {encoding}")
    return text.encode("latin1")


# What a CIFAR batch's pickle may name: numpy's own pickles of arrays of numbers (as numpy 1 and 2 spell
# them), each checked, and nothing that runs code.
CIFAR_GLOBALS = {
    **{(f"numpy.{core}.multiarray", "_reconstruct"): _plain_array for core in ("core", "_core")},
    **{(f"numpy.{core}.numeric", "_frombuffer"): _from_buffer for core in ("core", "_core")},
    **{(f"numpy.{core}.multiarray", "scalar"): _scalar for core in ("core", "_core")},
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): _numeric_dtype,
    ("_codecs", "encode"): _latin1,
}


class _CifarUnpickler(pickle.Unpickler):
    """Unpickles dicts, lists, strings, bytes, numbers and numpy arrays of numbers; refuses anything else
    before it is looked up, so a pickle that would run code (``os.system``, say) runs nothing."""

    def find_class(self, module: str, name: str):
        if (module, name) not in CIFAR_GLOBALS:
            raise _Refused(f"{module}.{name}")
        return CIFAR_GLOBALS[module, name]


def _read_cifar_batch(raw: bytes, what: str, label_key: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        batch = _CifarUnpickler(io.BytesIO(raw), encoding="latin1").load()
        data = np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
        labels = np.asarray(batch[label_key], dtype=np.int64)
    except _Refused as err:
        raise DataError(f"{what} is not a CIFAR python batch: its pickle names {err}, which a CIFAR batch never "
                        "holds (refused; nothing of it ran).") from None
    except Exception as err:  # noqa: BLE001 - any malformed content is the same user error
        raise DataError(f"{what} is not a CIFAR python-pickle batch ({type(err).__name__}: {err}).") from None
    if len(data) != len(labels):
        raise DataError(f"{what} holds {count(len(data), 'image')} but {count(len(labels), 'label')}.")
    return data, labels


def load_cifar(data_dir: str | Path, name: str = "cifar100"
               ) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """(train, test) of CIFAR-100 or CIFAR-10 as uint8 arrays and labels, from the python version's folder
    (``cifar-100-python/``, ``cifar-10-batches-py/``) or its ``.tar.gz``, as they are distributed."""
    layout = CIFAR[name]
    root = Path(data_dir)
    if not root.exists():
        raise DataError(f"--data-dir {root} does not exist; it should hold {layout.folder}/ or {layout.folder}.tar.gz.")
    folder = root / layout.folder if (root / layout.folder).is_dir() else root

    def joined(read, files: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
        parts = [_read_cifar_batch(*read(f), layout.label_key) for f in files]
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

    def sized(size: int, what: str) -> None:
        if size > MAX_BATCH_BYTES:
            raise DataError(f"{what} holds {size:,} bytes, more than any CIFAR batch ({MAX_BATCH_BYTES:,} at most).")

    if all((folder / f).is_file() for f in layout.train + layout.test):
        def read(f: str) -> tuple[bytes, str]:
            sized((folder / f).stat().st_size, str(folder / f))
            return (folder / f).read_bytes(), str(folder / f)

        return joined(read, layout.train), joined(read, layout.test)
    archive = root / f"{layout.folder}.tar.gz"
    if archive.is_file():
        try:
            with tarfile.open(archive) as tar:
                members = {m.name: m for m in tar.getmembers()}

                def read(f: str) -> tuple[bytes, str]:
                    name = f"{layout.folder}/{f}"
                    if name not in members or not members[name].isfile():
                        raise DataError(f"{archive} has no file {name}; is it the {layout.folder} python archive?")
                    sized(members[name].size, f"{archive}:{name}")
                    return tar.extractfile(members[name]).read(), f"{archive}:{name}"

                return joined(read, layout.train), joined(read, layout.test)
        except (tarfile.TarError, EOFError, OSError, zlib.error) as err:  # EOFError: a truncated archive
            raise DataError(f"{archive} is not a readable .tar.gz archive ({type(err).__name__}: {err}).") from None
    raise DataError(
        f"--data-dir {root} holds neither {layout.folder}/ with {', '.join(layout.train + layout.test)} nor "
        f"{layout.folder}.tar.gz (the python version of {name.upper()})."
    )


# ---- digits --------------------------------------------------------------------------------------


def load_digits_at(seed: int = 0, side: int = IMAGE_SIDE
                   ) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """scikit-learn's 8x8 digits upsampled (bilinear) to ``side`` x ``side`` (32 for training), three channels;
    a stratified 80/20 split drawn with ``seed``."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32)[:, None] / 16.0  # (N, 1, 8, 8)
    images = resized(images, side).expand(-1, 3, -1, -1)
    labels = torch.tensor(digits.target, dtype=torch.int64)
    rng = np.random.default_rng(seed)
    test = np.zeros(len(labels), dtype=bool)
    for c in range(10):  # stratified: 20 % of each class
        idx = np.flatnonzero(digits.target == c)
        test[rng.choice(idx, size=len(idx) // 5, replace=False)] = True
    test_t = torch.from_numpy(test)
    return (images[~test_t].contiguous(), labels[~test_t]), (images[test_t].contiguous(), labels[test_t])


# ---- longrange ------------------------------------------------------------------------------------

LONGRANGE_SIZES = (10_000, 2_000)  # train, test images (2,000 training images were memorised by axial's probe)
PATTERNS = torch.tensor(
    [
        [[1, 0, 1], [0, 1, 0], [1, 0, 1]],  # X
        [[0, 1, 0], [1, 1, 1], [0, 1, 0]],  # +
        [[1, 1, 1], [1, 0, 1], [1, 1, 1]],  # ring
        [[1, 1, 0], [1, 1, 0], [0, 0, 1]],  # corner
    ],
    dtype=torch.float32,
)


LONGRANGE_MIN_SIDE = 24  # room for the marks at the edges and three distractors between them, wherever they fall


def check_side(name: str, side: int) -> None:
    """``DataError`` for a side that data set ``name`` cannot make its images at."""
    if name == "longrange" and side < LONGRANGE_MIN_SIDE:
        raise DataError(f"longrange images need a side of at least {LONGRANGE_MIN_SIDE} (marks at both edges and "
                        f"distractors between them), not {side}.")


def make_longrange(n: int, seed: int, distractors: int = 3, side: int = IMAGE_SIDE
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` probe images of ``side`` x ``side`` pixels and their labels (1: the two marked patterns are the same),
    deterministic in ``seed``.

    Channel 0 holds patterns, channel 1 a 5x5 frame around the two marked ones, channel 2 noise.
    The marked patterns sit in columns 1-6 and side - 7 to side - 2 (25-30 at 32), so they are at least
    side - 13 pixels apart (19 at 32); the distractors start in columns 9 to side - 12, between them. At
    every side the patterns are 3x3 and the marks keep to the edges: a larger side is the same task
    over a longer range, and 32 gives the training images.
    """
    check_side("longrange", side)
    g = torch.Generator().manual_seed(seed)
    images = torch.zeros(n, 3, side, side)
    labels = torch.randint(0, 2, (n,), generator=g)
    for i in range(n):
        first = int(torch.randint(0, len(PATTERNS), (1,), generator=g))
        other = (first + int(torch.randint(1, len(PATTERNS), (1,), generator=g))) % len(PATTERNS)
        second = first if labels[i] == 1 else other
        taken = []
        for pattern, cols in ((first, (1, 4)), (second, (side - 7, side - 4))):
            r = int(torch.randint(2, side - 5, (1,), generator=g))
            c = int(torch.randint(*cols, (1,), generator=g))
            images[i, 0, r : r + 3, c : c + 3] = PATTERNS[pattern]
            images[i, 1, r - 1 : r + 4, c - 1 : c + 4] = 1.0
            images[i, 1, r : r + 3, c : c + 3] = 0.0
            taken.append((r, c))
        placed = 0
        while placed < distractors:  # unmarked patterns in the middle band, away from the marks
            r = int(torch.randint(1, side - 4, (1,), generator=g))
            c = int(torch.randint(9, side - 11, (1,), generator=g))
            if all(abs(r - tr) > 4 or abs(c - tc) > 4 for tr, tc in taken):
                images[i, 0, r : r + 3, c : c + 3] = PATTERNS[int(torch.randint(0, len(PATTERNS), (1,), generator=g))]
                taken.append((r, c))
                placed += 1
    images[:, 2] = 0.1 * torch.rand(n, side, side, generator=g)
    return images, labels


# ---- entry point ---------------------------------------------------------------------------------


def load_dataset(name: str, data_dir: str | Path | None = None, *, seed: int = 0, image_size: int | None = None,
                 workers: int = 0, classes: Sequence[str] | None = None
                 ) -> tuple[Dataset, Dataset] | tuple[ImageFolderSet | None, ImageFolderSet]:
    """(train, test) of data set ``name``; the test split is normalised with the train statistics.
    ``imagefolder`` is read from ``data_dir`` as it is used, at ``image_size`` (default 224) in ``workers``
    processes (:mod:`attnbench.imagefolder`; with ``classes``, a trained network's, a folder with val/ only has no
    train split: None); the others are held in memory, 32 x 32."""
    if name == "imagefolder":
        from attnbench.imagefolder import load_imagefolder

        if data_dir is None:
            raise DataError("imagefolder needs --data-dir: a folder with train/<class>/*.jpg and val/<class>/*.jpg.")
        return load_imagefolder(data_dir, size=image_size or DEFAULT_IMAGEFOLDER_SIDE, workers=workers, classes=classes)
    if image_size not in (None, IMAGE_SIDE):
        raise DataError(f"{name} images are {IMAGE_SIDE} x {IMAGE_SIDE}; --image-size is for imagefolder.")
    return _in_memory(name, data_dir, seed, IMAGE_SIDE)


IN_MEMORY_IMAGES = {"digits": 1797, "longrange": sum(LONGRANGE_SIZES), **dict.fromkeys(CIFAR, 60_000)}  # all splits


def check_fits(name: str, side: int) -> None:
    """MemoryError, in one line, when data set ``name``'s images at ``side`` x ``side`` (float32, held twice while
    they are normalised) would not fit in the memory available now: a side the allocator grants but the machine
    cannot hold would otherwise bring in the kernel's out-of-memory killer, which may end another process."""
    from attnbench.measure.memory import available_memory

    need = IN_MEMORY_IMAGES[name] * 3 * side * side * 4 * 2
    available = available_memory("cpu")
    if available is not None and need > available:
        raise MemoryError(f"its images at {side} x {side} need about {need / 2**30:.1f} GiB; "
                          f"{available / 2**30:.1f} GiB is available")


def load_at_side(name: str, side: int, data_dir: str | Path | None = None, *, seed: int = 0, workers: int = 0,
                 classes: Sequence[str] | None = None
                 ) -> tuple[Dataset, Dataset] | tuple[ImageFolderSet | None, ImageFolderSet]:
    """(train, test) of data set ``name`` with images of ``side`` x ``side`` pixels, as a network trained on it at
    its own side sees them at another (see the module's docstring): normalised as in training, with the
    training split's statistics at its own side (imagefolder: ImageNet's; ``classes`` as for :func:`load_dataset`)."""
    if name == "imagefolder":
        return load_dataset(name, data_dir, seed=seed, image_size=side, workers=workers, classes=classes)
    return _in_memory(name, data_dir, seed, side)


def _in_memory(name: str, data_dir: str | Path | None, seed: int, side: int) -> tuple[Dataset, Dataset]:
    """(train, test) of a data set held in memory, at ``side``, normalised with its training split's statistics
    at ``IMAGE_SIDE``."""
    if name in IN_MEMORY_IMAGES:
        check_fits(name, side)
    if name in CIFAR:
        layout = CIFAR[name]
        if data_dir is None:
            raise DataError(f"{name} needs --data-dir: a folder with {layout.folder}/ or {layout.folder}.tar.gz.")
        (xtr, ytr), (xte, yte) = load_cifar(data_dir, name)
        xtr, xte = torch.from_numpy(xtr).float() / 255, torch.from_numpy(xte).float() / 255
        train, test = (resized(x, side) for x in _normalised(xtr, xtr, xte))
        return (Dataset(name, train, torch.from_numpy(ytr), layout.classes, True),
                Dataset(name, test, torch.from_numpy(yte), layout.classes, False))
    if name == "digits":
        (xtr, ytr), (xte, yte) = load_digits_at(seed, side)  # the split follows the seed too
        at_own_side = xtr if side == IMAGE_SIDE else load_digits_at(seed)[0][0]
        train, test = _normalised(at_own_side, xtr, xte)
        return Dataset(name, train, ytr, 10, False), Dataset(name, test, yte, 10, False)
    if name == "longrange":  # generated, so as many as a model needs not to memorise: about a second
        xtr, ytr = make_longrange(LONGRANGE_SIZES[0], seed=1000 + seed, side=side)
        xte, yte = make_longrange(LONGRANGE_SIZES[1], seed=2000 + seed, side=side)
        at_own_side = xtr if side == IMAGE_SIDE else make_longrange(LONGRANGE_SIZES[0], seed=1000 + seed)[0]
        train, test = _normalised(at_own_side, xtr, xte)
        return Dataset(name, train, ytr, 2, False), Dataset(name, test, yte, 2, False)
    from attnbench.registry import unknown_name_message

    raise DataError(unknown_name_message("data set", name, list(DATASETS)))


def augment(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Standard CIFAR augmentation: random 32x32 crop of the 4-pixel zero-padded image, random flip."""
    n = images.shape[0]
    padded = F.pad(images, (4, 4, 4, 4))
    dy = torch.randint(0, 9, (n,), generator=generator)
    dx = torch.randint(0, 9, (n,), generator=generator)
    flip = torch.rand(n, generator=generator) < 0.5
    rows = (dy[:, None] + torch.arange(32))[:, :, None]  # (n, 32, 1)
    cols = dx[:, None] + torch.arange(32)  # (n, 32)
    cols = torch.where(flip[:, None], cols.flip(1), cols)[:, None, :]  # (n, 1, 32)
    batch = torch.arange(n)[:, None, None]
    return padded.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2).contiguous()
