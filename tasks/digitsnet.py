"""``digitsnet``: a small digits classifier, trained once, whose features judge samples of ``gen-digits``.

A random network's features (``gfd_randcnn``) rank digit generators by noise; a classifier trained on the digits
knows what a digit is. This module trains one (the recipe: :class:`DigitsNetRecipe`), deterministically, on the
``train`` split of the ``digits`` task (the task's own ``n_eval`` / ``split_seed`` split and its validation
hold-out: :func:`vqbench.tasks.image_data.hold_out` with ``VALIDATION_FRACTION``, seed 0), so neither the
validation images nor the eval images (its test split) are ever seen in training.

* Architecture (:class:`DigitsNet`, 8x8 grey input in [0, 1], scaled to [-1, 1]):
  ``conv3x3(1->32) ReLU, conv3x3(32->32) ReLU, maxpool 2, conv3x3(32->64) ReLU, maxpool 2, flatten (256),
  linear(256->64) ReLU`` = the 64 penultimate features, then ``linear(64->10)`` = the class logits.
* Training: Adam (lr 2e-3, weight decay 1e-4), batch 64, 20 epochs over a seeded permutation per epoch, cross-
  entropy; weights drawn and batches shuffled from generators seeded with ``seed``; on the CPU in float32, one
  thread, ``torch.use_deterministic_algorithms(True)`` (all three restored afterwards, as is the global RNG).
  Two trainings with the same recipe and torch give bit-identical weights.
* Cache: ``<cache>/digitsnet/<recipe hash>.pt``, ``<cache>`` = ``$VQBENCH_CACHE``, else
  ``$XDG_CACHE_HOME/vqbench``, else ``~/.cache/vqbench``. The recipe hash is the first
  :data:`HASH_DIGITS` hex digits of the SHA-256 of the recipe's canonical JSON (architecture, hyper-parameters,
  data split, seed and :data:`RECIPE_VERSION`); the file holds the recipe, the weights and the measured test
  accuracy, and is written to a temporary file then renamed (two processes never leave a torn file; the second
  rename replaces an identical file). A later call loads it (:func:`load_or_train`).

Every evaluation of a task using it also logs :data:`ACCURACY_METRIC` (the classifier's accuracy on its test
split) and :data:`RECIPE_METRIC` (the recipe hash as an integer, exact in float64), so the site can state which
classifier judged a run without importing torch.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vqbench.errors import UserError
from vqbench.gen_metrics import SampleClassifier
from vqbench.image_metrics import ImageFeatures, fd_metric_name
from vqbench.tasks.image_data import TensorImages, hold_out, load_digits

#: bump when anything the recipe dataclass does not spell out changes how the classifier is trained
RECIPE_VERSION = 1
#: the extractor's name: metric suffix (``gfd_digitsnet``, ``precision_digitsnet`` ...)
EXTRACTOR = "digitsnet"
#: the gFD in its features (the main metric of ``gen-digits``)
DIGITSNET_GFD = fd_metric_name(EXTRACTOR, "g")
ACCURACY_METRIC = f"{EXTRACTOR}_test_accuracy"
RECIPE_METRIC = f"{EXTRACTOR}_recipe_hash"
#: hex digits of the recipe hash (48 bits: exact as a float64 metric value)
HASH_DIGITS = 12
CACHE_ENV = "VQBENCH_CACHE"
NUM_CLASSES = 10


@dataclass(frozen=True)
class DigitsNetRecipe:
    """Everything that determines the trained weights (its hash names the cache file)."""

    n_eval: int = 297  # the digits task's split (its registered defaults)
    split_seed: int = 0
    validation_fraction: float = 0.1  # the task's validation hold-out (vqbench.tasks.images.VALIDATION_FRACTION)
    channels: tuple[int, int, int] = (32, 32, 64)
    features: int = 64
    epochs: int = 20
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 1e-4
    seed: int = 0
    version: int = RECIPE_VERSION

    def canonical_json(self) -> str:
        """The recipe as sorted, compact JSON (what the hash covers)."""
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))

    @property
    def hash(self) -> str:
        """First :data:`HASH_DIGITS` hex digits of ``sha256(canonical_json)``."""
        return hashlib.sha256(self.canonical_json().encode()).hexdigest()[:HASH_DIGITS]


class DigitsNet(nn.Module):
    """The classifier: ``features(x01) -> (N, F)`` penultimate activations, ``head(features) -> (N, 10)`` logits."""

    def __init__(self, channels: tuple[int, int, int] = (32, 32, 64), features: int = 64) -> None:
        super().__init__()
        c1, c2, c3 = channels
        self.body = nn.Sequential(
            nn.Conv2d(1, c1, 3, padding=1), nn.ReLU(), nn.Conv2d(c1, c2, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(c2, c3, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
            nn.Linear(c3 * 2 * 2, features), nn.ReLU())
        self.head = nn.Linear(features, NUM_CLASSES)
        self.num_features = features

    def features(self, x01: Tensor) -> Tensor:
        """Penultimate features of images ``(N, 1, 8, 8)`` in [0, 1]."""
        return self.body(x01.float() * 2.0 - 1.0)

    def forward(self, x01: Tensor) -> Tensor:
        return self.head(self.features(x01))


class _FeatureView(nn.Module):
    """``forward = net.features``: the penultimate layer as an :class:`ImageFeatures` network."""

    def __init__(self, net: DigitsNet) -> None:
        super().__init__()
        self.net, self.num_features = net, net.num_features

    def forward(self, x01: Tensor) -> Tensor:
        return self.net.features(x01)


@dataclass
class TrainedDigitsNet:
    """A trained classifier, its recipe and its accuracy on the test split (the digits task's eval split)."""

    recipe: DigitsNetRecipe
    net: DigitsNet
    test_accuracy: float
    train_seconds: float


# -- data ------------------------------------------------------------------------------------------
def recipe_splits(recipe: DigitsNetRecipe) -> tuple[TensorImages, TensorImages]:
    """(train, test): the digits task's ``train`` split (after its validation hold-out) and its eval split."""
    train, test = load_digits(n_eval=recipe.n_eval, split_seed=recipe.split_seed)
    train, _validation = hold_out(train, recipe.validation_fraction, seed=0)
    assert isinstance(train, TensorImages) and isinstance(test, TensorImages)
    return train, test


def _unit(images: Tensor) -> Tensor:
    return images.float() / 255.0


@torch.no_grad()
def accuracy(net: DigitsNet, split: TensorImages) -> float:
    """Fraction of ``split``'s images whose argmax class is their label."""
    net.eval()
    predicted = net(_unit(split.images)).argmax(1)
    return float((predicted == split.labels).double().mean())


# -- training --------------------------------------------------------------------------------------
@contextlib.contextmanager
def deterministic_cpu(seed: int) -> Iterator[None]:
    """One thread, deterministic algorithms, ``torch.manual_seed(seed)``; all restored on exit (global RNG too)."""
    threads, strict = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    with torch.random.fork_rng(devices=[]):
        torch.set_num_threads(1)
        torch.use_deterministic_algorithms(True)
        torch.manual_seed(seed)
        try:
            yield
        finally:
            torch.use_deterministic_algorithms(strict)
            torch.set_num_threads(threads)


def train_digitsnet(recipe: DigitsNetRecipe) -> TrainedDigitsNet:
    """Train the classifier of ``recipe`` from scratch (CPU, deterministic; a few seconds) and measure it."""
    train, test = recipe_splits(recipe)
    start = time.perf_counter()
    with deterministic_cpu(recipe.seed), torch.enable_grad():  # (callers may evaluate under no_grad)
        net = DigitsNet(recipe.channels, recipe.features)  # initialised from the seeded global RNG
        optimizer = torch.optim.Adam(net.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
        order_rng = torch.Generator().manual_seed(recipe.seed)
        x, y = _unit(train.images), train.labels
        net.train()
        for _epoch in range(recipe.epochs):
            order = torch.randperm(len(train), generator=order_rng)
            for first in range(0, len(train), recipe.batch_size):
                idx = order[first:first + recipe.batch_size]
                loss = F.cross_entropy(net(x[idx]), y[idx])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
        net.eval().requires_grad_(False)
    seconds = time.perf_counter() - start
    return TrainedDigitsNet(recipe, net, accuracy(net, test), seconds)


# -- cache -----------------------------------------------------------------------------------------
def cache_dir() -> Path:
    """``$VQBENCH_CACHE/digitsnet``, else ``$XDG_CACHE_HOME/vqbench/digitsnet``, else ``~/.cache/vqbench/...``."""
    if os.environ.get(CACHE_ENV):
        root = Path(os.environ[CACHE_ENV]).expanduser()
    elif os.environ.get("XDG_CACHE_HOME"):
        root = Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "vqbench"
    else:
        root = Path.home() / ".cache" / "vqbench"
    return root / EXTRACTOR


def cache_path(recipe: DigitsNetRecipe) -> Path:
    """Where the weights of ``recipe`` are cached."""
    return cache_dir() / f"{recipe.hash}.pt"


def _save(trained: TrainedDigitsNet, path: Path) -> None:
    """Write atomically: a temporary file in the same folder, then ``os.replace``."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        payload = {"recipe": trained.recipe.canonical_json(), "state_dict": trained.net.state_dict(),
                   "test_accuracy": trained.test_accuracy, "train_seconds": trained.train_seconds,
                   "torch": str(torch.__version__)}
        fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise UserError(f"cannot write the digitsnet cache under {path.parent} ({exc}): set ${CACHE_ENV} to a "
                        "writable folder") from exc
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(payload, handle)
        os.chmod(tmp, 0o644)  # mkstemp makes it private; the cache is shared like any cache file
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _load(recipe: DigitsNetRecipe, path: Path) -> TrainedDigitsNet | None:
    """The cached classifier of ``recipe`` at ``path``; None when absent, unreadable or of another recipe."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # absent, or damaged (e.g. torn by a crash, written by another torch): train again
        return None
    if not isinstance(payload, dict) or payload.get("recipe") != recipe.canonical_json():
        return None
    net = DigitsNet(recipe.channels, recipe.features)
    net.load_state_dict(payload["state_dict"])
    net.eval().requires_grad_(False)
    return TrainedDigitsNet(recipe, net, float(payload["test_accuracy"]), float(payload["train_seconds"]))


_LOADED: dict[Path, TrainedDigitsNet] = {}


def load_or_train(recipe: DigitsNetRecipe | None = None) -> TrainedDigitsNet:
    """The classifier of ``recipe`` (default recipe when None): from this process, the disk cache, or trained
    once and cached (see the module doc)."""
    recipe = recipe or DigitsNetRecipe()
    path = cache_path(recipe)
    if path in _LOADED and _LOADED[path].recipe == recipe:
        return _LOADED[path]
    trained = _load(recipe, path)
    if trained is None:
        trained = train_digitsnet(recipe)
        _save(trained, path)
    _LOADED[path] = trained
    return trained


# -- as the sample classifier of a generation task --------------------------------------------------
def sample_classifier(n_eval: int, split_seed: int, device: torch.device | str = "cpu") -> SampleClassifier:
    """The digitsnet of the digits split ``(n_eval, split_seed)`` as a :class:`SampleClassifier` on ``device``:
    its penultimate features (named ``digitsnet``), its head, and the two figures every evaluation logs."""
    trained = load_or_train(DigitsNetRecipe(n_eval=n_eval, split_seed=split_seed))
    net = DigitsNet(trained.recipe.channels, trained.recipe.features)
    net.load_state_dict(trained.net.state_dict())  # a copy: the cached one stays on the CPU
    features = ImageFeatures(EXTRACTOR, device, net=_FeatureView(net))
    return SampleClassifier(features=features, head=net.head.to(device), num_classes=NUM_CLASSES,
                            info={ACCURACY_METRIC: trained.test_accuracy,
                                  RECIPE_METRIC: float(int(trained.recipe.hash, 16))})
