"""CIFAR-10 and CIFAR-100 (Krizhevsky, "Learning Multiple Layers of Features from Tiny Images",
2009) read from the official python-pickle batches, with a checksum-verified download.

The files are the authors' ``cifar-10-python.tar.gz`` / ``cifar-100-python.tar.gz``: pickled
dicts with ``data`` (N×3072 uint8, the 1024 red then green then blue values of each 32×32 image
in row-major order) and ``labels`` (CIFAR-10) or ``fine_labels`` (CIFAR-100). They are read
with an unpickler that only accepts the numpy array types these files contain, and every array
size and label range is checked: a bad file is an error naming it, never a wrong label.

Example:
    >>> from attnlab.data.cifar import CIFAR
    >>> CIFAR("/no/such/dir", train=True)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    FileNotFoundError: CIFAR-10: no cifar-10-batches-py folder in /no/such/dir ...
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import pickle
import shutil
import tarfile
import tempfile
import urllib.parse
import urllib.request
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm import tqdm

log = logging.getLogger(__name__)

# name → (folder in the archive, official URL, md5 of the archive, train files, test files,
#         meta file, key of the class names, key of the labels)
_VARIANTS: dict[int, dict[str, Any]] = {
    10: {
        "name": "CIFAR-10",
        "folder": "cifar-10-batches-py",
        "url": "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        "md5": "c58f30108f718f92721af3b95e74349a",
        "train": [f"data_batch_{i}" for i in range(1, 6)],
        "test": ["test_batch"],
        "meta": "batches.meta",
        "names_key": b"label_names",
        "labels_key": b"labels",
    },
    100: {
        "name": "CIFAR-100",
        "folder": "cifar-100-python",
        "url": "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
        "md5": "eb9058c3a382ffc7106e4002c42a8d85",
        "train": ["train"],
        "test": ["test"],
        "meta": "meta",
        "names_key": b"fine_label_names",
        "labels_key": b"fine_labels",
    },
}

# The only globals the official pickles need (numpy arrays; bytes via _codecs under Python 3).
_ALLOWED_GLOBALS = {
    ("_codecs", "encode"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
}


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickler that refuses anything but numpy arrays and builtins (no code execution)."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f"unexpected object {module}.{name}")
        return super().find_class(module, name)


def _read_pickle(path: str) -> dict:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"CIFAR: missing file {path}")
    try:
        with open(path, "rb") as handle:
            content = _ArrayUnpickler(io.BytesIO(handle.read()), encoding="bytes").load()
    except Exception as err:
        raise ValueError(f"CIFAR: cannot read {path}: {err}") from err
    if not isinstance(content, dict):
        raise ValueError(f"CIFAR: {path} holds a {type(content).__name__}, not a batch dict")
    return content


def _text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _read_batch(path: str, labels_key: bytes, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Images N×3×32×32 uint8 and labels N int64 of one batch file, checked."""
    batch = _read_pickle(path)
    for key in (b"data", labels_key):
        if key not in batch:
            found = ", ".join(_text(k) for k in batch)
            raise ValueError(f"CIFAR: {path} has no {_text(key)!r} entry (found: {found})")
    data = batch[b"data"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2:
        raise ValueError(f"CIFAR: {path}: 'data' is not an N×3072 uint8 array")
    if data.shape[1] != 3072:
        raise ValueError(f"CIFAR: {path}: 'data' has {data.shape[1]} values per image, not 3072")
    labels = np.asarray(batch[labels_key])
    if labels.ndim != 1 or len(labels) != len(data) or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(
            f"CIFAR: {path}: {len(data)} images but labels of shape {labels.shape} ({labels.dtype})"
        )
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(
            f"CIFAR: {path}: labels range {labels.min()}…{labels.max()}, "
            f"expected 0…{num_classes - 1}"
        )
    # N×3072 → N×3×32×32: the file stores each image's channels as consecutive 32×32 planes.
    return data.reshape(-1, 3, 32, 32), labels.astype(np.int64)


def _find_folder(root: str, spec: dict[str, Any]) -> str | None:
    """``root/<folder>``, or ``root`` itself if it holds the batches (renamed copies too)."""
    inside = os.path.join(root, spec["folder"])
    if os.path.isdir(inside):
        return inside
    if os.path.isfile(os.path.join(root, spec["meta"])):
        return root
    return None


class CIFAR(Dataset):
    """CIFAR-10 or CIFAR-100 (fine labels) from the official python batches.

    Args:
        root: the folder holding ``cifar-10-batches-py/`` (``cifar-100-python/``), or that
            folder itself.
        train: the 50,000 training images (True) or the 10,000 test images (False).
        num_classes: 10 or 100.
        transform: callable applied to each float image 3×32×32 in [0, 1].
        download: fetch and extract the official archive into ``root`` if it is absent.
        url: archive URL instead of the official one (a mirror).
        md5: expected checksum of the archive at ``url``; with a custom ``url`` and no
            ``md5`` the archive is not verified (a warning says so).

    Attributes:
        classes: class names in label order.
        num_classes: number of classes.
        folder: the folder the batches were read from.

    Raises:
        FileNotFoundError: the folder or a batch file is missing (the message names it).
        ValueError: a file is unreadable or inconsistent (sizes, label range), or the
            download's checksum is wrong.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        *,
        train: bool,
        num_classes: int = 10,
        transform: Callable | None = None,
        download: bool = False,
        url: str | None = None,
        md5: str | None = None,
    ) -> None:
        if num_classes not in _VARIANTS:
            raise ValueError(f"CIFAR: num_classes must be 10 or 100, got {num_classes!r}")
        spec = _VARIANTS[num_classes]
        root = os.fspath(root)
        folder = _find_folder(root, spec)
        if folder is None and download:
            if url is not None and md5 is None:
                log.warning("CIFAR: %s will not be verified (no md5 given)", url)
            download_and_extract(url or spec["url"], root, md5=spec["md5"] if url is None else md5)
            folder = _find_folder(root, spec)
            if folder is None:
                raise ValueError(
                    f"{spec['name']}: the archive from {url or spec['url']} did not contain "
                    f"{spec['folder']}/"
                )
        if folder is None:
            raise FileNotFoundError(
                f"{spec['name']}: no {spec['folder']} folder in {root} (pass download=True, "
                "or --download on the command line, to fetch it)"
            )
        meta = _read_pickle(os.path.join(folder, spec["meta"]))
        if spec["names_key"] not in meta:
            raise ValueError(
                f"CIFAR: {os.path.join(folder, spec['meta'])} has no "
                f"{_text(spec['names_key'])!r} entry"
            )
        self.classes = [_text(name) for name in meta[spec["names_key"]]]
        if len(self.classes) != num_classes:
            raise ValueError(
                f"CIFAR: {os.path.join(folder, spec['meta'])} names {len(self.classes)} classes, "
                f"expected {num_classes}"
            )
        images, labels = [], []
        for name in spec["train" if train else "test"]:
            data, target = _read_batch(os.path.join(folder, name), spec["labels_key"], num_classes)
            images.append(data)
            labels.append(target)
        self.images = torch.from_numpy(np.concatenate(images))  # N×3×32×32 uint8
        self.labels = torch.from_numpy(np.concatenate(labels))  # N int64
        self.num_classes = num_classes
        self.folder = folder
        self.train = train
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = self.images[index].float().div_(255)
        if self.transform is not None:
            image = self.transform(image)
        return image, int(self.labels[index])

    def __repr__(self) -> str:
        split = "train" if self.train else "test"
        return f"CIFAR(num_classes={self.num_classes}, split={split}, {len(self)} images)"


def download_and_extract(
    url: str, root: str, *, md5: str | None, timeout: float = 60.0, progress: bool = True
) -> str:
    """Downloads a .tar.gz archive into ``root``, verifies it, and extracts it there.

    The archive is written to a temporary file in ``root`` and renamed only once its md5
    matches, so an interrupted download never leaves a file that looks complete. Members are
    extracted into a temporary folder first (refusing absolute paths, ``..``, links and
    devices) and then moved into place.

    Args:
        url: http(s) URL of the archive.
        root: destination folder (created).
        md5: expected hex md5 of the archive; None skips the check.
        timeout: socket timeout in seconds.
        progress: show a progress bar when stderr is a terminal.

    Returns:
        The path of the verified archive.

    Raises:
        ValueError: checksum mismatch (naming the URL and both checksums) or an unsafe member.
        OSError: the download failed (the message names the URL).
    """
    os.makedirs(root, exist_ok=True)
    name = os.path.basename(urllib.parse.urlparse(url).path) or "download.tar.gz"
    archive = os.path.join(root, name)
    if not (os.path.isfile(archive) and (md5 is None or _md5(archive) == md5)):
        handle, partial = tempfile.mkstemp(prefix=f".{name}.", suffix=".part", dir=root)
        digest = hashlib.md5()
        try:
            with os.fdopen(handle, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as r:
                total = int(r.headers.get("Content-Length") or 0) or None
                bar = tqdm(total=total, unit="B", unit_scale=True, desc=name,
                           disable=True if not progress else None)  # fmt: skip
                with bar:
                    while chunk := r.read(1 << 20):
                        out.write(chunk)
                        digest.update(chunk)
                        bar.update(len(chunk))
            if md5 is not None and digest.hexdigest() != md5:
                raise ValueError(
                    f"download of {url}: md5 {digest.hexdigest()} does not match the expected "
                    f"{md5}; the file was discarded"
                )
            os.replace(partial, archive)
        except OSError as err:
            raise OSError(f"download of {url} failed: {err}") from err
        finally:
            if os.path.exists(partial):
                os.remove(partial)
    _extract(archive, root)
    return archive


def _md5(path: str) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _extract(archive: str, root: str) -> None:
    staging = tempfile.mkdtemp(prefix=".extract-", dir=root)
    try:
        try:
            with tarfile.open(archive, "r:*") as tar:
                members = tar.getmembers()
                for member in members:
                    parts = member.name.replace("\\", "/").split("/")
                    if (os.path.isabs(member.name) or ".." in parts
                            or not (member.isfile() or member.isdir())):  # fmt: skip
                        raise ValueError(
                            f"{archive}: refusing unsafe archive member {member.name!r}"
                        )
                # The "data" filter (Python ≥ 3.10.12) re-checks what the loop above checked.
                safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
                tar.extractall(staging, members=members, **safe)
        except tarfile.TarError as err:
            raise ValueError(f"{archive}: not a readable tar archive: {err}") from err
        for entry in os.listdir(staging):
            target = os.path.join(root, entry)
            if os.path.exists(target):
                continue  # an earlier extraction (or the user's own copy) wins
            os.replace(os.path.join(staging, entry), target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
