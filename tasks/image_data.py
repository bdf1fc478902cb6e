"""Image data for the reconstruction and generation tasks: loaders returning uint8 image tensors.

Every loader returns ``(train, eval)`` :class:`ImageSource` splits whose items are ``uint8`` tensors
``(C, H, W)``; images become floats in ``[-1, 1]`` only when they reach a model (:func:`to_model`).

* :func:`load_digits`: scikit-learn's bundled handwritten digits (1797 images, 8x8, grey levels
  0..16 rescaled to 0..255), a fixed random train/eval split. Ships with scikit-learn: offline.
* :func:`load_patches`: RGB patches cut on a grid from the natural photographs bundled with
  scikit-image (astronaut, chelsea, coffee, rocket, motorcycle ...; only files shipped in its wheel,
  never the ones it fetches). Per photo, the rightmost ``eval_fraction`` of the columns is the eval
  region and the rest the train region, so no eval pixel is ever seen in training.
* :func:`load_cifar10`: a local ``cifar-10-batches-py`` folder in the official pickle format
  (``data_batch_1..5`` = train, ``test_batch`` = eval), or torchvision's download when asked.
* :func:`load_image_folder`: any folder of images (``train/`` and ``val/`` sub-folders when present,
  else a deterministic hash split), decoded on access: RGB, shorter side resized to ``size``
  (bicubic, antialiased), centre crop ``size x size``. :func:`load_imagenet` is its preset for an
  ImageNet folder (128 and 256 crops).

A missing data path raises :class:`vqbench.errors.UserError` saying what was expected where and how
to get it; nothing is ever downloaded unless the caller passes ``download=True``.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import pickle
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Subset

from vqbench.errors import UserError
from vqbench.tasks.base import EpochSampler

DATA_ENV = "VQBENCH_DATA"
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".JPEG")
#: RGB photographs shipped inside scikit-image's wheel (its ``data`` folder): name -> file name
SKIMAGE_PHOTOS = {
    "astronaut": "astronaut.png", "chelsea": "chelsea.png", "coffee": "coffee.png", "rocket": "rocket.jpg",
    "motorcycle": "motorcycle_left.png", "hubble_deep_field": "hubble_deep_field.jpg", "ihc": "ihc.png",
    "retina": "retina.jpg",
}
DEFAULT_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "motorcycle")
CIFAR10_TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR10_TEST_FILE = "test_batch"


# -- value conversions -----------------------------------------------------------------------------
def to_model(x: Tensor) -> Tensor:
    """uint8 images -> float in [-1, 1]: ``x / 127.5 - 1``."""
    return x.float() / 127.5 - 1.0


def to_unit(x: Tensor) -> Tensor:
    """Model-space images (about [-1, 1]) -> float in [0, 1]: ``clamp((x + 1) / 2, 0, 1)``."""
    return ((x.float() + 1.0) / 2.0).clamp(0.0, 1.0)


def to_uint8(x: Tensor) -> Tensor:
    """Model-space images -> uint8 (rounded ``255 * to_unit(x)``)."""
    return (to_unit(x) * 255.0).round().to(torch.uint8)


# -- sources ---------------------------------------------------------------------------------------
class ImageSource(Dataset):
    """A split of images: ``len(source)``, ``source[i] -> uint8 (C, H, W)``, ``channels``, ``size``."""

    name: str = "images"
    channels: int
    size: tuple[int, int]

    def __len__(self) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    def __getitem__(self, index: int) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError


class TensorImages(ImageSource):
    """Images held in memory as one uint8 tensor ``(N, C, H, W)`` (optionally with labels)."""

    def __init__(self, images: Tensor, labels: Tensor | None = None, name: str = "images") -> None:
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError(f"images must be a uint8 tensor (N, C, H, W), got {images.dtype} {tuple(images.shape)}")
        if labels is not None and labels.shape[0] != images.shape[0]:
            raise ValueError("labels and images differ in length")
        self.images, self.labels, self.name = images, labels, name
        self.channels, self.size = int(images.shape[1]), (int(images.shape[2]), int(images.shape[3]))

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> Tensor:
        return self.images[index]

    def batch(self, indices: Tensor) -> Tensor:
        return self.images[indices.to(self.images.device)]

    def to(self, device: torch.device | str) -> TensorImages:
        labels = self.labels.to(device) if self.labels is not None else None
        return TensorImages(self.images.to(device), labels, self.name)

    def subset(self, n: int | None, seed: int = 0) -> TensorImages:
        """A fixed random subset of ``n`` images (all of them when ``n`` is None or >= len)."""
        if n is None or n >= len(self):
            return self
        if n < 1:
            raise UserError(f"a subset of {self.name} needs at least one image, got n={n}")
        keep = torch.randperm(len(self), generator=torch.Generator().manual_seed(seed))[:n].sort().values
        labels = self.labels[keep] if self.labels is not None else None
        return TensorImages(self.images[keep], labels, self.name)


def hold_out(source: ImageSource, fraction: float, seed: int = 0) -> tuple[ImageSource, ImageSource]:
    """(train, validation): a fixed random ``fraction`` of ``source`` held out, both in their original order.

    The split depends only on ``len(source)``, ``fraction`` and ``seed``: the same images for every method and
    training seed. At least one image is held out and at least one kept.
    """
    n = len(source)
    if n < 2:
        raise UserError(f"{source.name} has {n} training image(s): a validation split needs at least 2")
    n_val = min(n - 1, max(1, round(fraction * n)))
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    val_idx, train_idx = order[:n_val].sort().values, order[n_val:].sort().values
    if isinstance(source, TensorImages):
        def part(idx: Tensor) -> ImageSource:
            labels = source.labels[idx] if source.labels is not None else None
            return TensorImages(source.images[idx], labels, source.name)
    elif isinstance(source, ImageFolderImages):
        def part(idx: Tensor) -> ImageSource:
            return ImageFolderImages([source.files[int(i)] for i in idx], source.size[0], source.name)
    else:
        raise TypeError(f"cannot hold out part of a {type(source).__name__}")
    return part(train_idx), part(val_idx)


def load_image_file(path: str | os.PathLike[str], size: int | None = None) -> Tensor:
    """Decode one image file to uint8 RGB ``(3, H, W)``; with ``size``: shorter side -> size, centre crop."""
    from PIL import Image

    with Image.open(path) as img:
        img = img.convert("RGB")
        if size is not None:
            w, h = img.size
            scale = size / min(w, h)
            new_w, new_h = max(size, round(w * scale)), max(size, round(h * scale))
            if (new_w, new_h) != (w, h):
                img = img.resize((new_w, new_h), Image.Resampling.BICUBIC, reducing_gap=None)
            left, top = (new_w - size) // 2, (new_h - size) // 2
            img = img.crop((left, top, left + size, top + size))
        array = np.asarray(img, dtype=np.uint8)
    return torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()


class ImageFolderImages(ImageSource):
    """Image files decoded on access (RGB, shorter side -> ``size``, centre crop ``size x size``)."""

    def __init__(self, files: Sequence[Path], size: int, name: str = "imagefolder") -> None:
        if size < 1:
            raise ValueError("size must be >= 1")
        self.files, self.name = list(files), name
        self.channels, self.size = 3, (size, size)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> Tensor:
        return load_image_file(self.files[index], self.size[0])

    def materialize(self, workers: int = 0) -> TensorImages:
        """Decode every file once into an in-memory :class:`TensorImages`."""
        out = torch.empty(len(self), 3, *self.size, dtype=torch.uint8)
        pos = 0
        for batch in DataLoader(self, batch_size=64, num_workers=workers, collate_fn=torch.stack):
            out[pos:pos + batch.shape[0]] = batch
            pos += batch.shape[0]
        return TensorImages(out, None, self.name)


# -- where data lives ------------------------------------------------------------------------------
def resolve_data_root(explicit: str | os.PathLike[str] | None, subdir: str, what: str, how_to_get: str) -> Path:
    """``explicit`` if given, else ``$VQBENCH_DATA/<subdir>``; a :class:`UserError` when it does not exist."""
    if explicit:
        path = Path(explicit).expanduser()
    elif os.environ.get(DATA_ENV):
        path = Path(os.environ[DATA_ENV]).expanduser() / subdir
    else:
        raise UserError(f"{what}: no data folder given. Set the task parameter data_root (e.g. --set "
                        f"task.data_root=/path/to/{subdir}) or the environment variable {DATA_ENV} so that "
                        f"${DATA_ENV}/{subdir} is the folder. {how_to_get}")
    if not path.exists():
        raise UserError(f"{what}: expected the data at {path}, which does not exist. {how_to_get}")
    return path


# -- digits ----------------------------------------------------------------------------------------
def load_digits(n_eval: int = 297, split_seed: int = 0) -> tuple[TensorImages, TensorImages]:
    """scikit-learn's handwritten digits as uint8 ``(N, 1, 8, 8)``: ``round(v * 255 / 16)``, v in 0..16.

    A fixed random permutation (``split_seed``) puts ``n_eval`` images in eval and the rest in train.
    """
    try:
        from sklearn.datasets import load_digits as sk_load_digits
    except ImportError as exc:
        raise UserError("the digits task needs scikit-learn (its digits ship with it): pip install scikit-learn") \
            from exc
    bunch = sk_load_digits()
    images = torch.from_numpy(np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8)).unsqueeze(1)
    labels = torch.from_numpy(bunch.target.astype(np.int64))
    n = images.shape[0]
    if not 0 < n_eval < n:
        raise UserError(f"digits has {n} images: n_eval must be in [1, {n - 1}], got {n_eval}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(split_seed))
    train_idx, eval_idx = perm[n_eval:].sort().values, perm[:n_eval].sort().values
    return (TensorImages(images[train_idx], labels[train_idx], "digits"),
            TensorImages(images[eval_idx], labels[eval_idx], "digits"))


# -- natural-image patches -------------------------------------------------------------------------
def skimage_photo(name: str) -> np.ndarray:
    """One RGB photograph bundled in scikit-image's wheel, as uint8 ``(H, W, 3)``; never fetched."""
    if name not in SKIMAGE_PHOTOS:
        raise UserError(f"unknown photo {name!r}: the bundled RGB photos are {', '.join(sorted(SKIMAGE_PHOTOS))}")
    try:
        import skimage
        from skimage.io import imread
    except ImportError as exc:
        raise UserError("the patches task needs scikit-image (its photos ship with it): pip install scikit-image") \
            from exc
    path = Path(skimage.__file__).parent / "data" / SKIMAGE_PHOTOS[name]
    if not path.is_file():
        raise UserError(f"photo {name!r} is not bundled in this scikit-image install (expected {path}); "
                        f"use photos from: {', '.join(DEFAULT_PHOTOS)}")
    array = np.asarray(imread(path))
    if array.ndim != 3 or array.shape[2] < 3:
        raise UserError(f"photo {name!r} is not an RGB image (shape {array.shape})")
    return np.ascontiguousarray(array[:, :, :3]).astype(np.uint8)


def grid_patches(image: Tensor, patch_size: int, stride: int) -> Tensor:
    """All ``patch_size`` squares of ``image`` (C, H, W) whose corners lie on a ``stride`` grid -> (P, C, p, p)."""
    c, h, w = image.shape
    if h < patch_size or w < patch_size:
        return image.new_empty(0, c, patch_size, patch_size)
    tiles = image.unfold(1, patch_size, stride).unfold(2, patch_size, stride)  # (C, nh, nw, p, p)
    return tiles.permute(1, 2, 0, 3, 4).reshape(-1, c, patch_size, patch_size).contiguous()


def load_patches(photos: Sequence[str] = DEFAULT_PHOTOS, patch_size: int = 32, train_stride: int = 16,
                 eval_stride: int | None = None, eval_fraction: float = 0.2) -> tuple[TensorImages, TensorImages]:
    """RGB patches ``(N, 3, p, p)`` from scikit-image's bundled photos.

    Each photo is split by columns: the left ``1 - eval_fraction`` is the train region (patches on a
    ``train_stride`` grid, overlapping when ``stride < p``), the right part the eval region (patches on
    an ``eval_stride`` grid, default ``p``: non-overlapping). Patches never cross the boundary.
    """
    if patch_size < 1 or train_stride < 1 or (eval_stride is not None and eval_stride < 1):
        raise UserError("patch_size and strides must be >= 1")
    if not 0.0 < eval_fraction < 1.0:
        raise UserError(f"eval_fraction must be in (0, 1), got {eval_fraction}")
    if not photos:
        raise UserError("patches needs at least one photo")
    train, test = [], []
    for name in photos:
        image = torch.from_numpy(skimage_photo(name)).permute(2, 0, 1).contiguous()
        cut = int(round(image.shape[2] * (1.0 - eval_fraction)))
        train.append(grid_patches(image[:, :, :cut], patch_size, train_stride))
        test.append(grid_patches(image[:, :, cut:], patch_size, eval_stride or patch_size))
    train_x, eval_x = torch.cat(train), torch.cat(test)
    if train_x.shape[0] == 0 or eval_x.shape[0] == 0:
        raise UserError(f"patch_size {patch_size} is too large for the photos' train/eval regions")
    return TensorImages(train_x, None, "patches"), TensorImages(eval_x, None, "patches")


# -- CIFAR-10 --------------------------------------------------------------------------------------
CIFAR10_HOW = ("Download the 'CIFAR-10 python version' from https://www.cs.toronto.edu/~kriz/cifar.html and "
               "unpack it (a folder cifar-10-batches-py with data_batch_1..5 and test_batch), or pass "
               "--set task.download=true to let torchvision download it into data_root.")


def _cifar_folder(root: Path) -> Path | None:
    for candidate in (root / "cifar-10-batches-py", root):
        if (candidate / CIFAR10_TEST_FILE).is_file() or (candidate / CIFAR10_TRAIN_FILES[0]).is_file():
            return candidate
    return None


def read_cifar_batch(path: Path) -> tuple[Tensor, Tensor]:
    """One file of the official pickle format -> (uint8 (N, 3, 32, 32), long labels (N,)).

    The file is a pickled dict with ``b"data"`` (N x 3072 uint8, channel-major: 1024 R, 1024 G, 1024 B
    values per row, each row-major 32x32) and ``b"labels"`` (N ints in 0..9).
    """
    with open(path, "rb") as f:
        entry = pickle.load(f, encoding="bytes")
    data = entry.get(b"data", entry.get("data"))
    labels = entry.get(b"labels", entry.get("labels"))
    if data is None or labels is None:
        raise UserError(f"{path} is not a CIFAR-10 batch file (no 'data'/'labels' entries)")
    array = np.asarray(data, dtype=np.uint8).reshape(-1, 3, 32, 32)
    return torch.from_numpy(array.copy()), torch.as_tensor(np.asarray(labels, dtype=np.int64))


def load_cifar10(data_root: str | os.PathLike[str] | None = None, download: bool = False, n_train: int | None = None,
                 n_eval: int | None = None, subset_seed: int = 0) -> tuple[TensorImages, TensorImages]:
    """CIFAR-10 from ``<data_root>/cifar-10-batches-py`` (or ``$VQBENCH_DATA/cifar10/...``).

    Train = the 50000 images of ``data_batch_1..5``, eval = the 10000 of ``test_batch``; ``n_train`` /
    ``n_eval`` take fixed random subsets (``subset_seed``) for quick runs. With ``download=True`` and
    no local copy, torchvision downloads the official archive into ``data_root``.
    """
    what = "cifar10"
    if download:
        root = Path(data_root).expanduser() if data_root else (
            Path(os.environ[DATA_ENV]).expanduser() / "cifar10" if os.environ.get(DATA_ENV) else None)
        if root is None:
            raise UserError("cifar10 download=true needs a place to put it: set task.data_root or "
                            f"${DATA_ENV}")
        if _cifar_folder(root) is None:
            try:
                from torchvision.datasets import CIFAR10
            except ImportError as exc:
                raise UserError("download=true needs torchvision (pip install torchvision)") from exc
            root.mkdir(parents=True, exist_ok=True)
            CIFAR10(str(root), train=True, download=True)
    else:
        root = resolve_data_root(data_root, "cifar10", what, CIFAR10_HOW)
    folder = _cifar_folder(root)
    if folder is None:
        raise UserError(f"{what}: expected {root}/cifar-10-batches-py (or {root} itself) to contain "
                        f"{', '.join(CIFAR10_TRAIN_FILES)} and {CIFAR10_TEST_FILE}. {CIFAR10_HOW}")
    missing = [f for f in (*CIFAR10_TRAIN_FILES, CIFAR10_TEST_FILE) if not (folder / f).is_file()]
    if missing:
        raise UserError(f"{what}: {folder} lacks {', '.join(missing)}. {CIFAR10_HOW}")
    parts = [read_cifar_batch(folder / f) for f in CIFAR10_TRAIN_FILES]
    train = TensorImages(torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts]), "cifar10")
    test = TensorImages(*read_cifar_batch(folder / CIFAR10_TEST_FILE), name="cifar10")
    return train.subset(n_train, subset_seed), test.subset(n_eval, subset_seed + 1)


# -- folders of images (ImageNet) ------------------------------------------------------------------
def list_images(folder: Path) -> list[Path]:
    """Image files under ``folder`` (recursive), sorted by relative path."""
    suffixes = {s.lower() for s in IMAGE_EXTENSIONS}
    return sorted((p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in suffixes),
                  key=lambda p: p.relative_to(folder).as_posix())


def _hash_unit(text: str) -> float:
    """A deterministic number in [0, 1) from ``text`` (sha1), stable across machines and file additions."""
    return int.from_bytes(hashlib.sha1(text.encode()).digest()[:8], "big") / 2**64


def _subset_files(files: list[Path], root: Path, n: int | None, seed: int) -> list[Path]:
    if n is None or n >= len(files):
        return files
    if n < 1:
        raise UserError(f"a subset needs at least one image, got {n}")
    ranked = sorted(files, key=lambda p: _hash_unit(f"{seed}:{p.relative_to(root).as_posix()}"))
    return sorted(ranked[:n], key=lambda p: p.relative_to(root).as_posix())


def load_image_folder(data_root: str | os.PathLike[str] | None, size: int, max_train: int | None = None,
                      max_eval: int | None = None, subset_seed: int = 0, eval_fraction: float = 0.1,
                      name: str = "imagefolder", subdir: str = "imagefolder",
                      how_to_get: str = "Point it at a folder of image files (any nesting).",
                      ) -> tuple[ImageFolderImages, ImageFolderImages]:
    """Images of a folder as ``size x size`` RGB centre crops.

    With ``train/`` and one of ``val/``, ``validation/``, ``test/``, ``eval/`` sub-folders those are the
    splits; otherwise a file is in eval when ``sha1(relative path)`` maps below ``eval_fraction`` (stable
    when files are added). ``max_train``/``max_eval``: deterministic subsets ranked by
    ``sha1(subset_seed:relative path)``.
    """
    root = resolve_data_root(data_root, subdir, name, how_to_get)
    if not root.is_dir():
        raise UserError(f"{name}: {root} is not a folder. {how_to_get}")
    eval_dir = next((root / d for d in ("val", "validation", "test", "eval") if (root / d).is_dir()), None)
    if (root / "train").is_dir() and eval_dir is not None:
        train_root, eval_root = root / "train", eval_dir
        train_files, eval_files = list_images(train_root), list_images(eval_root)
    else:
        if not 0.0 < eval_fraction < 1.0:
            raise UserError(f"eval_fraction must be in (0, 1), got {eval_fraction}")
        train_root = eval_root = root
        files = list_images(root)
        eval_files = [p for p in files if _hash_unit(p.relative_to(root).as_posix()) < eval_fraction]
        train_files = [p for p in files if _hash_unit(p.relative_to(root).as_posix()) >= eval_fraction]
    if not train_files or not eval_files:
        raise UserError(f"{name}: found {len(train_files)} train and {len(eval_files)} eval images under {root} "
                        f"(extensions {', '.join(IMAGE_EXTENSIONS)}); both splits need images. {how_to_get}")
    train_files = _subset_files(train_files, train_root, max_train, subset_seed)
    eval_files = _subset_files(eval_files, eval_root, max_eval, subset_seed + 1)
    return ImageFolderImages(train_files, size, name), ImageFolderImages(eval_files, size, name)


IMAGENET_HOW = ("Get ILSVRC-2012 from https://image-net.org (registration required) and arrange it as "
                "<root>/train/<class>/*.JPEG and <root>/val/[<class>/]*.JPEG; set task.data_root=<root> or "
                f"${DATA_ENV} so that ${DATA_ENV}/imagenet is <root>.")


def load_imagenet(data_root: str | os.PathLike[str] | None = None, size: int = 128, max_train: int | None = None,
                  max_eval: int | None = None, subset_seed: int = 0) -> tuple[ImageFolderImages, ImageFolderImages]:
    """ImageNet (ILSVRC-2012) ``train``/``val`` folders as ``size x size`` centre crops (128 or 256)."""
    return load_image_folder(data_root, size, max_train, max_eval, subset_seed, name="imagenet", subdir="imagenet",
                             how_to_get=IMAGENET_HOW)


# -- batches ---------------------------------------------------------------------------------------
def _stack(items: list[Tensor]) -> Tensor:
    return torch.stack(items)


class _StepBatches:
    """Index lists of steps ``start, start+1, ...`` of an :class:`EpochSampler` (a DataLoader batch sampler):
    this rank's shard of each global batch."""

    def __init__(self, sampler: EpochSampler, start: int) -> None:
        self.sampler, self.start = sampler, start

    def __iter__(self) -> Iterator[list[int]]:
        for step in itertools.count(self.start):
            yield self.sampler.local_indices(step).tolist()


class BatchLoader:
    """``loader(step) -> uint8 (B, C, H, W)`` on ``device``: batch ``step`` of :class:`EpochSampler`
    (in a data-parallel run this rank's shard of it, ``B / world size`` images: a rank loads only its own).

    A pure function of ``step`` (resumed runs see the same batches). In-memory sources are indexed
    directly (on the device); file-backed sources are decoded by a DataLoader with ``workers``
    processes that prefetches the following steps and restarts when a step is asked out of order.
    """

    def __init__(self, source: ImageSource, batch_size: int, seed: int, device: torch.device,
                 workers: int = 0) -> None:
        self.source, self.device, self.workers = source, torch.device(device), workers
        self.sampler = EpochSampler(len(source), batch_size, seed)
        self._iter: Iterator[Tensor] | None = None
        self._next_step = -1
        if isinstance(source, TensorImages):
            self.source = source.to(self.device)

    def __call__(self, step: int) -> Tensor:
        if isinstance(self.source, TensorImages):
            return self.source.batch(self.sampler.local_indices(step))
        if self._iter is None or step != self._next_step:
            self.close()
            loader = DataLoader(self.source, batch_sampler=_StepBatches(self.sampler, step),
                                num_workers=self.workers, collate_fn=_stack,
                                pin_memory=self.device.type == "cuda",
                                prefetch_factor=4 if self.workers else None,
                                persistent_workers=False)
            self._iter = iter(loader)
        batch = next(self._iter)
        self._next_step = step + 1
        return batch.to(self.device, non_blocking=True)

    def close(self) -> None:
        self._iter = None  # worker processes end with the iterator


def iterate(source: ImageSource, batch_size: int, device: torch.device, workers: int = 0,
            part: tuple[int, int] | None = None) -> Iterator[Tensor]:
    """The whole split in order, as uint8 batches ``(B, C, H, W)`` on ``device``; with ``part = (start, stop)``
    only those images (a rank's part of an evaluation, :func:`vqbench.distributed.local_range`)."""
    start, stop = part if part is not None else (0, len(source))
    if isinstance(source, TensorImages):
        for first in range(start, stop, batch_size):
            yield source.images[first:min(first + batch_size, stop)].to(device, non_blocking=True)
        return
    if (start, stop) != (0, len(source)):
        source = Subset(source, range(start, stop))
    loader = DataLoader(source, batch_size=batch_size, shuffle=False, num_workers=workers, collate_fn=_stack,
                        pin_memory=torch.device(device).type == "cuda")
    for batch in loader:
        yield batch.to(device, non_blocking=True)
