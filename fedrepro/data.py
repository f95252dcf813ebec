"""Datasets by name, offline-capable, decoded once into a checksummed tensor cache.

Where the files come from, in order:

1. the root: an explicit ``root`` argument, else ``$FEDREPRO_DATA``, else ``~/.cache/fedrepro/data``;
2. a class-folder copy under it, ``<root>/<name>/{train,test}/<class>/<image>`` (how the offline
   archives are read, and how any custom dataset is added: classes are the sorted folder names);
3. the official loader (torchvision or MedMNIST), which downloads into ``<root>/<name>``.

Decoded images are kept as ``uint8`` tensors in ``<root>/.fedrepro-cache`` with a SHA-256 sidecar,
so a re-run does not decode 60,000 files again and a corrupted cache is detected and rebuilt.
"""
from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from fedrepro.runtime import generator

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
CACHE_DIR = ".fedrepro-cache"
CACHE_FORMAT = 1


@dataclass(frozen=True)
class DatasetInfo:
    """What the papers need to know about a named dataset; mean/std are the usual normalisation."""

    source: str  # "torchvision" | "medmnist"
    loader: str
    mean: tuple[float, ...]
    std: tuple[float, ...]


KNOWN_DATASETS: dict[str, DatasetInfo] = {
    "cifar10": DatasetInfo("torchvision", "CIFAR10", (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": DatasetInfo("torchvision", "CIFAR100", (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "mnist": DatasetInfo("torchvision", "MNIST", (0.1307,), (0.3081,)),
    "fashion-mnist": DatasetInfo("torchvision", "FashionMNIST", (0.2860,), (0.3530,)),
    "pneumoniamnist": DatasetInfo("medmnist", "PneumoniaMNIST", (0.5,), (0.5,)),
    "dermamnist": DatasetInfo("medmnist", "DermaMNIST", (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    "retinamnist": DatasetInfo("medmnist", "RetinaMNIST", (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    "bloodmnist": DatasetInfo("medmnist", "BloodMNIST", (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
}


class DatasetNotFoundError(FileNotFoundError):
    """Raised when a dataset is neither on disk nor downloadable; the message says how to provide it."""


@dataclass
class ImageDataset:
    """Images as one ``uint8`` tensor (N, C, H, W) with integer labels; normalisation is explicit."""

    name: str
    split: str
    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    _stats: tuple[torch.Tensor, torch.Tensor] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.ndim != 4:
            raise ValueError("images must be a uint8 tensor of shape (N, C, H, W)")
        if len(self.images) != len(self.labels):
            raise ValueError(f"{len(self.images)} images but {len(self.labels)} labels")
        self._stats = (torch.tensor(self.mean).view(1, -1, 1, 1), torch.tensor(self.std).view(1, -1, 1, 1))

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def channels(self) -> int:
        return self.images.shape[1]

    @property
    def image_size(self) -> int:
        return self.images.shape[-1]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def subset(self, indices: torch.Tensor | list[int]) -> "ImageDataset":
        index = torch.as_tensor(indices, dtype=torch.long)
        return ImageDataset(self.name, self.split, self.images[index], self.labels[index], self.classes, self.mean, self.std)

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 or [0, 1] float images -> the normalised float input the models train on."""
        x = images.float() / 255.0 if images.dtype == torch.uint8 else images
        mean, std = (s.to(x.device) for s in self._stats)
        return (x - mean) / std

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        """Model input -> images in [0, 1], the space every image metric is computed in."""
        mean, std = (s.to(x.device) for s in self._stats)
        return (x * std + mean).clamp(0.0, 1.0)

    def tensors(self, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
        """All images normalised, and labels, on ``device`` — decoded once, sliced per batch later."""
        return self.normalize(self.images.to(device)), self.labels.to(device)


def data_root(root: str | os.PathLike | None = None) -> Path:
    """Explicit argument > ``$FEDREPRO_DATA`` > the user cache directory."""
    if root is not None:
        return Path(root).expanduser()
    if os.environ.get("FEDREPRO_DATA"):
        return Path(os.environ["FEDREPRO_DATA"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "fedrepro" / "data"


def load_dataset(name: str, split: str = "train", root: str | os.PathLike | None = None,
                 download: bool = True, image_size: int | None = None) -> ImageDataset:
    """Load ``name``'s ``split`` ('train' or 'test') as an :class:`ImageDataset`.

    ``image_size`` brings images to a square size: smaller ones are zero-padded at the centre
    (how 28×28 MNIST meets the CVB CNN's 32×32), larger ones are resized with antialiasing.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    key = name.lower()
    base = data_root(root)
    images, labels, classes = _cached_or_decoded(key, split, base, download)
    info = KNOWN_DATASETS.get(key)
    if info is not None:
        mean, std = info.mean, info.std
    else:
        train = images if split == "train" else _cached_or_decoded(key, "train", base, download)[0]
        mean, std = _channel_stats(train)
    if image_size is not None:
        images = resize_images(images, image_size)
    return ImageDataset(key, split, images, labels, classes, mean, std)


def resize_images(images: torch.Tensor, size: int) -> torch.Tensor:
    """Centre zero-pad (smaller) or antialiased resize (larger) uint8 images to ``size``×``size``."""
    h, w = images.shape[-2:]
    if (h, w) == (size, size):
        return images
    if h <= size and w <= size:
        top, left = (size - h) // 2, (size - w) // 2
        return F.pad(images, (left, size - w - left, top, size - h - top))
    resized = F.interpolate(images.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return resized.round().clamp(0, 255).to(torch.uint8)


def _channel_stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    x = images.float().div(255.0).transpose(0, 1).reshape(images.shape[1], -1)
    return tuple(x.mean(1).tolist()), tuple(x.std(1).tolist())


# --- cache -------------------------------------------------------------------------------------

def _cache_paths(base: Path, name: str, split: str) -> tuple[Path, Path]:
    stem = base / CACHE_DIR / f"{name}-{split}"
    return stem.with_suffix(".pt"), stem.with_suffix(".json")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def _cached_or_decoded(name: str, split: str, base: Path, download: bool) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    tensor_path, meta_path = _cache_paths(base, name, split)
    if tensor_path.exists() and meta_path.exists():
        meta = json.loads(meta_path.read_text())
        if meta.get("format") == CACHE_FORMAT and meta.get("sha256") == _sha256(tensor_path):
            blob = torch.load(tensor_path, weights_only=True)
            return blob["images"], blob["labels"], meta["classes"]
    images, labels, classes = _decode(name, split, base, download)
    tensor_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = tensor_path.with_suffix(f".{os.getpid()}.tmp")  # notebooks run side by side may build it at once
    torch.save({"images": images, "labels": labels}, tmp)
    tmp.replace(tensor_path)
    tmp_meta = meta_path.with_suffix(f".{os.getpid()}.tmp")
    tmp_meta.write_text(json.dumps({"format": CACHE_FORMAT, "sha256": _sha256(tensor_path), "classes": classes}))
    tmp_meta.replace(meta_path)
    return images, labels, classes


def _decode(name: str, split: str, base: Path, download: bool) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    folder = base / name / split
    if folder.is_dir():
        return _decode_class_folders(folder)
    info = KNOWN_DATASETS.get(name)
    if info is None:
        raise DatasetNotFoundError(
            f"dataset {name!r} is not a known dataset ({', '.join(KNOWN_DATASETS)}) and no class-folder copy "
            f"exists at {folder}. Put images at {base / name}/{{train,test}}/<class>/<image>."
        )
    try:
        return _download(name, info, split, base / name, download)
    except Exception as error:  # noqa: BLE001 - offline failures surface as many exception types
        raise DatasetNotFoundError(_not_found_message(name, split, base, download, error)) from None


def _not_found_message(name: str, split: str, base: Path, download: bool, error: Exception) -> str:
    how = "downloading is disabled (download=False)" if not download else f"the download failed ({type(error).__name__}: {error})"
    return (
        f"dataset {name!r} ({split}) was not found and {how}.\n"
        f"Searched: the tensor cache {base / CACHE_DIR}, a class-folder copy at {base / name / split}, "
        f"and the official files under {base / name}.\n"
        f"Provide it by either: running once with internet access; or extracting a class-folder copy so that "
        f"{base / name}/{{train,test}}/<class>/<image> exists; or pointing FEDREPRO_DATA (or root=) at a "
        f"directory that holds one."
    )


def _download(name: str, info: DatasetInfo, split: str, target: Path, download: bool) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    target.mkdir(parents=True, exist_ok=True)
    if info.source == "torchvision":
        import torchvision.datasets as tvd

        dataset = getattr(tvd, info.loader)(str(target), train=split == "train", download=download)
        array = np.asarray(dataset.data)
        labels = torch.as_tensor(np.asarray(dataset.targets), dtype=torch.long)
        classes = list(dataset.classes)
    else:
        import medmnist

        dataset = getattr(medmnist, info.loader)(split=split, root=str(target), download=download)
        array = np.asarray(dataset.imgs)
        labels = torch.as_tensor(np.asarray(dataset.labels).reshape(-1), dtype=torch.long)
        classes = [dataset.info["label"][str(i)] for i in range(len(dataset.info["label"]))]
    images = torch.as_tensor(array)
    images = images.unsqueeze(1) if images.ndim == 3 else images.permute(0, 3, 1, 2)
    return images.contiguous().to(torch.uint8), labels, classes


def _decode_class_folders(folder: Path) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir())
    files: list[Path] = []
    labels: list[int] = []
    for label, cls in enumerate(classes):
        found = sorted(p for p in (folder / cls).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        files += found
        labels += [label] * len(found)
    if not files:
        raise DatasetNotFoundError(f"no images found under {folder}/<class>/")
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        arrays = list(pool.map(_read_image, files, chunksize=512))
    shapes = {a.shape for a in arrays}
    if len(shapes) != 1:
        raise ValueError(f"images under {folder} differ in size or channels: {sorted(shapes)[:4]}")
    images = torch.from_numpy(np.stack(arrays))
    images = images.unsqueeze(1) if images.ndim == 3 else images.permute(0, 3, 1, 2)
    return images.contiguous(), torch.tensor(labels, dtype=torch.long), classes


def _read_image(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        if image.mode not in ("L", "RGB"):
            image = image.convert("RGB")
        return np.asarray(image, dtype=np.uint8)


# --- federated partitioning --------------------------------------------------------------------

@dataclass
class ClientSplit:
    """Indices into the training set: what one client trains on and validates on."""

    train: torch.Tensor
    val: torch.Tensor


def partition_iid(num_items: int, num_clients: int, seed: int) -> list[torch.Tensor]:
    """Shuffle and split into ``num_clients`` equal shares (the remainder goes to the first shares)."""
    if not 1 <= num_clients <= num_items:
        raise ValueError(f"need 1 <= num_clients <= {num_items}, got {num_clients}")
    order = torch.randperm(num_items, generator=generator(seed, "iid"))
    return [part.sort().values for part in torch.tensor_split(order, num_clients)]


def partition_dirichlet(labels: torch.Tensor, num_clients: int, alpha: float, seed: int,
                        min_size: int = 1) -> list[torch.Tensor]:
    """Label-skewed non-IID split: each class is divided among clients by Dirichlet(α) proportions.

    Small α gives each client few classes; resampled until every client holds ``min_size`` items.
    """
    if alpha <= 0:
        raise ValueError(f"alpha must be positive, got {alpha}")
    rng = np.random.default_rng(np.random.SeedSequence([seed % 2**32, 0xD1]))
    labels_np = labels.numpy()
    for _ in range(1000):
        shares: list[list[int]] = [[] for _ in range(num_clients)]
        for cls in np.unique(labels_np):
            idx = np.flatnonzero(labels_np == cls)
            rng.shuffle(idx)
            cuts = (np.cumsum(rng.dirichlet([alpha] * num_clients))[:-1] * len(idx)).astype(int)
            for client, part in enumerate(np.split(idx, cuts)):
                shares[client] += part.tolist()
        if min(len(s) for s in shares) >= min_size:
            return [torch.tensor(sorted(s), dtype=torch.long) for s in shares]
    raise ValueError(f"could not give every one of {num_clients} clients {min_size} items with alpha={alpha}")


def federated_split(labels: torch.Tensor, num_clients: int, seed: int, scheme: str = "iid",
                    alpha: float = 0.5, val_fraction: float = 0.1,
                    samples_per_client: int | None = None) -> list[ClientSplit]:
    """Partition, optionally cap each client's share (for smoke/quick tiers), then hold out validation.

    The CVB protocol is ``scheme='iid', val_fraction=0.1``: CIFAR-10 gives 10 × (4,500 train + 500 val).
    """
    if not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if scheme == "iid":
        parts = partition_iid(len(labels), num_clients, seed)
    elif scheme == "dirichlet":
        parts = partition_dirichlet(labels, num_clients, alpha, seed)
    else:
        raise ValueError(f"unknown partition scheme {scheme!r}; use 'iid' or 'dirichlet'")
    splits = []
    for client, part in enumerate(parts):
        order = part[torch.randperm(len(part), generator=generator(seed, "client-split", client))]
        if samples_per_client is not None:
            order = order[:samples_per_client]
        n_val = int(round(len(order) * val_fraction))
        splits.append(ClientSplit(train=order[n_val:].sort().values, val=order[:n_val].sort().values))
    return splits


def subsample(num_items: int, count: int | None, seed: int) -> torch.Tensor:
    """A seeded random subset of indices (all of them when ``count`` is None)."""
    if count is None or count >= num_items:
        return torch.arange(num_items)
    return torch.randperm(num_items, generator=generator(seed, "subsample"))[:count].sort().values


@dataclass
class FederatedData:
    """A training set split over clients, plus the (optionally subsampled) test set."""

    train: ImageDataset
    test: ImageDataset
    splits: list[ClientSplit]

    def describe(self) -> str:
        sizes = sorted({(len(s.train), len(s.val)) for s in self.splits})
        shown = ", ".join(f"{t} train + {v} val" for t, v in sizes[:3]) + (" …" if len(sizes) > 3 else "")
        return (f"{self.train.name}: {len(self.splits)} clients ({shown}), {len(self.test)} test images, "
                f"{self.train.channels}×{self.train.image_size}×{self.train.image_size}, {self.train.num_classes} classes")


def load_federated(name: str, num_clients: int, seed: int, *, scheme: str = "iid", alpha: float = 0.5,
                   val_fraction: float = 0.1, samples_per_client: int | None = None,
                   test_samples: int | None = None, image_size: int | None = None,
                   root: str | os.PathLike | None = None) -> FederatedData:
    """Load a dataset and split it the way a notebook's parameters say (see :func:`federated_split`)."""
    train = load_dataset(name, "train", root=root, image_size=image_size)
    test = load_dataset(name, "test", root=root, image_size=image_size)
    splits = federated_split(train.labels, num_clients, seed, scheme=scheme, alpha=alpha,
                             val_fraction=val_fraction, samples_per_client=samples_per_client)
    return FederatedData(train, test.subset(subsample(len(test), test_samples, seed)), splits)
