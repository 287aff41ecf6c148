"""A small convnet per data set whose penultimate layer is the feature space of the sample-quality
metrics (Frechet distance, precision/recall, class consistency; see `sample_quality.py`).

This is NOT Inception: nothing is downloaded. The classifier is trained here, on the data set's own
training split (continuous [0, 1] pixels, the data set's labels), so its features know only that
data set and the numbers they give are comparable only with numbers from the same classifier.

Architecture (any C x H x W, any number of classes):
    [conv 3x3 (padding 1) -> batch norm -> ReLU -> max-pool 2x2 (ceil mode)] x 2 -> flatten
    with channels (16, 32)
    -> linear (hidden=128) -> ReLU            <- `features(x)`: these activations, (N, 128)
    -> dropout (0.25, training only) -> linear (num_classes)  <- `logits(x)`

Trained with Adam (lr 2e-3, cosine-decayed to 0 over the run), minibatches of 64, cross-entropy,
5 epochs, a fixed seed (91.7% test accuracy on Fashion-MNIST in about 1.5 minutes on one CPU
thread; see docs/evaluation/sample_quality.md); the trained weights
are cached per data set (safetensors + a JSON sidecar, never pickle) under
`vaelab.data.sources.cache_dir() / "classifiers"`, keyed by a hash of the data set's identity and
the training settings, so every model evaluated on a data set is scored in the same feature space.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as save_tensors_to_bytes
from torch import Tensor, nn
from tqdm.auto import tqdm

from vaelab.data import sources
from vaelab.data.datasets import ImageDataset
from vaelab.errors import VaelabError
from vaelab.experiment import sha256_of_tensor
from vaelab.files import atomic_write_bytes, atomic_write_json
from vaelab.optim import Updater

CACHE_SUBDIR = "classifiers"
CACHE_FORMAT = 1  # bump when the architecture or the training recipe changes meaning
DEFAULT_EPOCHS = 5
DEFAULT_SEED = 0
DEFAULT_BATCH_SIZE = 64
DEFAULT_LR = 2e-3  # peak learning rate; cosine decay to 0 over the run
FEATURE_BATCH = 1000  # images per forward pass in features()/logits()


@dataclass(frozen=True)
class ClassifierArchitecture:
    """Everything needed to rebuild a FeatureClassifier before loading its weights."""

    image_shape: tuple[int, int, int]  # (C, H, W)
    num_classes: int
    channels: tuple[int, int] = (16, 32)
    hidden: int = 128
    dropout: float = 0.25
    batch_norm: bool = True

    def to_dict(self) -> dict[str, Any]:
        values = asdict(self)
        values["image_shape"], values["channels"] = list(self.image_shape), list(self.channels)
        return values

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ClassifierArchitecture:
        return cls(image_shape=tuple(values["image_shape"]), num_classes=int(values["num_classes"]),
                   channels=tuple(values["channels"]), hidden=int(values["hidden"]),
                   dropout=float(values["dropout"]), batch_norm=bool(values["batch_norm"]))


class FeatureClassifier(nn.Module):
    """Two conv blocks, a `hidden`-unit penultimate layer (the features) and the class logits."""

    def __init__(self, architecture: ClassifierArchitecture):
        super().__init__()
        self.architecture = architecture
        self.cache_info: dict[str, Any] | None = None  # set by load_or_train_classifier
        (in_channels, height, width), (c1, c2) = architecture.image_shape, architecture.channels

        def block(inputs: int, outputs: int) -> list[nn.Module]:
            norm = [nn.BatchNorm2d(outputs)] if architecture.batch_norm else []
            return [nn.Conv2d(inputs, outputs, 3, padding=1), *norm, nn.ReLU(), nn.MaxPool2d(2, ceil_mode=True)]

        self.conv = nn.Sequential(*block(in_channels, c1), *block(c1, c2), nn.Flatten())
        pooled = math.ceil(math.ceil(height / 2) / 2) * math.ceil(math.ceil(width / 2) / 2)
        self.penultimate = nn.Sequential(nn.Linear(c2 * pooled, architecture.hidden), nn.ReLU())
        self.dropout = nn.Dropout(architecture.dropout)
        self.head = nn.Linear(architecture.hidden, architecture.num_classes)

    @property
    def feature_dim(self) -> int:
        return self.architecture.hidden

    def forward(self, x: Tensor) -> Tensor:
        """Logits of one batch (N, C, H, W) -> (N, num_classes), with gradients; dropout in train mode."""
        return self.head(self.dropout(self.penultimate(self.conv(x))))

    def _embed(self, x: Tensor) -> Tensor:
        return self.penultimate(self.conv(x))

    @torch.no_grad()
    def _batched(self, x: Tensor, fn, batch_size: int) -> Tensor:
        """fn over x in batches of batch_size on the classifier's device, in eval mode; (N, ...) on CPU."""
        if x.ndim != 4 or tuple(x.shape[1:]) != tuple(self.architecture.image_shape):
            expected = ", ".join(map(str, self.architecture.image_shape))
            raise VaelabError(f"the classifier takes images of shape (N, {expected}), "
                              f"got {tuple(x.shape)}")
        device = next(self.parameters()).device
        was_training = self.training
        self.eval()
        try:
            starts = range(0, len(x), batch_size) if len(x) else [0]  # an empty x gives (0, ...)
            return torch.cat([fn(x[start:start + batch_size].to(device, torch.float32)).cpu() for start in starts])
        finally:
            self.train(was_training)

    def features(self, x: Tensor, batch_size: int = FEATURE_BATCH) -> Tensor:
        """Penultimate activations (after the ReLU, before dropout): (N, C, H, W) -> (N, hidden),
        float32 on the CPU, computed in batches without gradients, in eval mode."""
        return self._batched(x, self._embed, batch_size)

    def logits(self, x: Tensor, batch_size: int = FEATURE_BATCH) -> Tensor:
        """Class logits (N, num_classes), batched, without gradients, in eval mode."""
        return self._batched(x, lambda batch: self.head(self._embed(batch)), batch_size)

    def predict(self, x: Tensor, batch_size: int = FEATURE_BATCH) -> Tensor:
        """The most likely class of each image: (N,) int64."""
        return self.logits(x, batch_size).argmax(dim=1)


# -- training ----------------------------------------------------------------------------------


def _architecture_for(dataset: ImageDataset, channels: tuple[int, int], hidden: int, dropout: float,
                      batch_norm: bool) -> ClassifierArchitecture:
    if dataset.train.labels is None or dataset.num_classes is None:
        raise VaelabError(f"data set {dataset.name!r} has no labels: the feature classifier of the "
                          "sample-quality metrics is trained on the data set's classes")
    if len(dataset.train) < 2:
        raise VaelabError(f"data set {dataset.name!r} has {len(dataset.train)} training images; the feature "
                          "classifier needs at least 2")
    c1, c2 = channels  # a list from a config is accepted too
    return ClassifierArchitecture(dataset.image_shape, dataset.num_classes, (c1, c2), hidden, dropout, batch_norm)


def accuracy(classifier: FeatureClassifier, images: Tensor, labels: Tensor) -> float:
    """Fraction of images classified as their label (nan for no images)."""
    if len(images) == 0:
        return float("nan")
    return (classifier.predict(images) == labels.cpu()).double().mean().item()


def train_classifier(dataset: ImageDataset, *, epochs: int = DEFAULT_EPOCHS, seed: int = DEFAULT_SEED,
                     progress: bool = False, batch_size: int = DEFAULT_BATCH_SIZE, lr: float = DEFAULT_LR,
                     channels: tuple[int, int] = (16, 32), hidden: int = 128, dropout: float = 0.25,
                     batch_norm: bool = True,
                     device: str | torch.device = "cpu") -> tuple[FeatureClassifier, float]:
    """Train a FeatureClassifier on dataset.train (Adam, learning rate `lr` decayed to 0 by a cosine
    over all steps, cross-entropy, `epochs` passes in seeded random order); return it (in eval mode,
    on `device`) and its accuracy on dataset.test (nan without test images). Initialisation,
    shuffling and dropout all come from `seed`; the global torch RNG is forked, so the caller's
    stream is left untouched."""
    architecture = _architecture_for(dataset, channels, hidden, dropout, batch_norm)
    if epochs < 1:
        raise VaelabError(f"epochs must be at least 1, got {epochs}")
    device = torch.device(device)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)  # weights and dropout masks
        classifier = FeatureClassifier(architecture).to(device)
        _fit(classifier, dataset, epochs, torch.Generator().manual_seed(seed), batch_size, lr, progress)
    classifier.eval()
    test_labels = dataset.test.labels if dataset.test.labels is not None else torch.empty(0, dtype=torch.long)
    return classifier, accuracy(classifier, dataset.test.images, test_labels)


def _fit(classifier: FeatureClassifier, dataset: ImageDataset, epochs: int, shuffle: torch.Generator,
         batch_size: int, lr: float, progress: bool) -> None:
    """Minimize the cross-entropy by Adam with a cosine-decayed lr, through vaelab's one Updater."""
    if dataset.train.labels is None:
        raise VaelabError(f"data set {dataset.name!r} has no labels to train the feature classifier on")
    images, labels = dataset.train.images, dataset.train.labels.long()
    device = next(classifier.parameters()).device
    optimizer = torch.optim.Adam(classifier.parameters(), lr=lr)
    steps = epochs * math.ceil(len(images) / batch_size)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * step / steps)))
    updater = Updater([optimizer])
    classifier.train()
    with tqdm(total=steps, disable=not progress, desc="classifier", leave=False) as bar:
        for _ in range(epochs):
            order = torch.randperm(len(images), generator=shuffle)
            for index in order.split(batch_size):
                if len(index) < 2:  # batch norm needs two images (1x1 images, a last batch of one)
                    continue
                loss = F.cross_entropy(classifier(images[index].to(device)), labels[index].to(device))
                updater.minimize(loss)
                schedule.step()
                bar.update()
                if progress:
                    bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)


# -- the cache ---------------------------------------------------------------------------------


def dataset_fingerprint(dataset: ImageDataset) -> dict[str, Any]:
    """The data set's identity: name, shapes, classes, and SHA-256 of the training images (float32
    bytes) and labels (int64 bytes). Two data sets with the same fingerprint train the same classifier."""
    labels = dataset.train.labels
    return {"name": dataset.name, "train_shape": list(dataset.train.images.shape),
            "test_shape": list(dataset.test.images.shape), "num_classes": dataset.num_classes,
            "train_images_sha256": sha256_of_tensor(dataset.train.images.float()),
            "train_labels_sha256": None if labels is None else sha256_of_tensor(labels.long())}


def cache_key(fingerprint: dict[str, Any], training: dict[str, Any]) -> str:
    """A hex digest of (cache format, data set fingerprint, architecture and training settings)."""
    payload = json.dumps({"format": CACHE_FORMAT, "dataset": fingerprint, "training": training}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()


def default_cache_dir() -> Path:
    """`vaelab.data.sources.cache_dir() / "classifiers"` (so `$VAELAB_CACHE` moves it)."""
    return sources.cache_dir() / CACHE_SUBDIR


def _cache_paths(directory: Path, name: str, key: str) -> tuple[Path, Path]:
    stem = f"{re.sub(r'[^A-Za-z0-9_.-]+', '_', name) or 'dataset'}-{key[:16]}"
    return directory / f"{stem}.safetensors", directory / f"{stem}.json"


def _read_cached(weights_path: Path, sidecar_path: Path, key: str) -> tuple[FeatureClassifier, dict] | None:
    """The cached classifier and its sidecar, or None when absent, unreadable or for another key."""
    try:
        sidecar = json.loads(sidecar_path.read_text())
        if sidecar.get("key") != key:
            return None
        with safe_open(str(weights_path), framework="pt") as f:
            if (f.metadata() or {}).get("key") != key:  # weights and sidecar from the same write
                return None
            state = {name: f.get_tensor(name) for name in f.keys()}  # noqa: SIM118 (safe_open is not a dict)
        classifier = FeatureClassifier(ClassifierArchitecture.from_dict(sidecar["architecture"]))
        classifier.load_state_dict(state, strict=True)
    except (OSError, ValueError, KeyError, TypeError, RuntimeError, SafetensorError):
        return None
    return classifier.eval(), sidecar


def load_or_train_classifier(dataset: ImageDataset, cache_dir: str | Path | None = None, *,
                             epochs: int = DEFAULT_EPOCHS, seed: int = DEFAULT_SEED, progress: bool = False,
                             batch_size: int = DEFAULT_BATCH_SIZE, lr: float = DEFAULT_LR,
                             channels: tuple[int, int] = (16, 32), hidden: int = 128, dropout: float = 0.25,
                             batch_norm: bool = True, device: str | torch.device = "cpu",
                             retrain: bool = False) -> tuple[FeatureClassifier, dict[str, Any]]:
    """The data set's feature classifier from the cache, else trained (train_classifier) and cached.

    The cache file is `<cache_dir>/<name>-<key[:16]>.safetensors` with a `.json` sidecar holding
    the key, the data set fingerprint, the architecture, the training settings, the test accuracy
    and the training time; `cache_dir` defaults to `default_cache_dir()`. The key hashes the data
    set's fingerprint (`dataset_fingerprint`) and every training setting, so a changed data set or
    setting trains a new classifier. Both files are written atomically. Returns (classifier in eval
    mode on `device`, info) with info = {"test_accuracy", "epochs", "seed", "cache_path",
    "sidecar_path", "key", "trained" (False when loaded from the cache), "train_seconds",
    "architecture"}.
    """
    architecture = _architecture_for(dataset, channels, hidden, dropout, batch_norm)
    training = {"architecture": architecture.to_dict(), "epochs": epochs, "seed": seed,
                "batch_size": batch_size, "lr": lr, "optimizer": "adam", "schedule": "cosine"}
    fingerprint = dataset_fingerprint(dataset)
    key = cache_key(fingerprint, training)
    directory = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    weights_path, sidecar_path = _cache_paths(directory, dataset.name, key)
    cached = None if retrain else _read_cached(weights_path, sidecar_path, key)
    if cached is not None:
        classifier, sidecar = cached
        trained = False
    else:
        started = time.perf_counter()
        classifier, test_accuracy = train_classifier(
            dataset, epochs=epochs, seed=seed, progress=progress, batch_size=batch_size, lr=lr,
            channels=channels, hidden=hidden, dropout=dropout, batch_norm=batch_norm, device=device)
        sidecar = _json_safe({"key": key, "format": CACHE_FORMAT, "dataset": fingerprint,
                              "architecture": architecture.to_dict(), "training": training,
                              "test_accuracy": test_accuracy,
                              "train_seconds": round(time.perf_counter() - started, 2)})
        state = {name: value.detach().cpu().contiguous() for name, value in classifier.state_dict().items()}
        try:  # weights first: a sidecar is only ever beside the weights it describes
            directory.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(weights_path, save_tensors_to_bytes(state, metadata={"key": key}))
            atomic_write_json(sidecar_path, sidecar)
        except OSError as error:
            warnings.warn(f"could not cache the feature classifier in {directory}: {error}", stacklevel=2)
        trained = True
    info = {"test_accuracy": sidecar["test_accuracy"], "epochs": epochs, "seed": seed,
            "cache_path": str(weights_path), "sidecar_path": str(sidecar_path), "key": key,
            "trained": trained, "train_seconds": sidecar.get("train_seconds"),
            "architecture": sidecar["architecture"]}
    classifier.cache_info = info  # sample_quality records the key and accuracy in its settings
    return classifier.to(device).eval(), info


def _json_safe(values: Any) -> Any:
    """NaN accuracy (no test split) as null: strict JSON has no NaN."""
    if isinstance(values, dict):
        return {key: _json_safe(value) for key, value in values.items()}
    if isinstance(values, float) and not math.isfinite(values):
        return None
    return values
