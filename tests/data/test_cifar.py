"""CIFAR: reading the official batch format, checks on bad files, verified download."""

from __future__ import annotations

import functools
import hashlib
import http.server
import io
import os
import pickle
import tarfile
import threading
from contextlib import contextmanager

import numpy as np
import pytest
import torch

from attnlab.data.cifar import CIFAR


def _batch(labels: list[int], labels_key: bytes = b"labels") -> dict:
    data = np.zeros((len(labels), 3072), np.uint8)
    for i, label in enumerate(labels):
        data[i] = label  # each image is filled with its label, to check pairing
        data[i, 1024 + 5] = 200  # green plane, row 0, column 5
    return {b"data": data, labels_key: labels, b"batch_label": b"testing"}


def _dump(path, content) -> None:
    with open(path, "wb") as handle:
        pickle.dump(content, handle, protocol=2)


def make_cifar10(root, per_batch: int = 3) -> str:
    """A tiny CIFAR-10 in the official layout: 5 train batches and a test batch."""
    folder = os.path.join(root, "cifar-10-batches-py")
    os.makedirs(folder)
    names = [f"class{i}".encode() for i in range(10)]
    _dump(os.path.join(folder, "batches.meta"), {b"label_names": names})
    for b in range(1, 6):
        _dump(
            os.path.join(folder, f"data_batch_{b}"),
            _batch([(b + i) % 10 for i in range(per_batch)]),
        )
    _dump(os.path.join(folder, "test_batch"), _batch([9, 0]))
    return folder


def make_cifar100(root) -> str:
    folder = os.path.join(root, "cifar-100-python")
    os.makedirs(folder)
    _dump(
        os.path.join(folder, "meta"), {b"fine_label_names": [f"c{i}".encode() for i in range(100)]}
    )
    _dump(os.path.join(folder, "train"), _batch([99, 5, 0], b"fine_labels"))
    _dump(os.path.join(folder, "test"), _batch([42], b"fine_labels"))
    return folder


def test_cifar10_items_and_layout(tmp_path):
    folder = make_cifar10(tmp_path)
    train = CIFAR(tmp_path, train=True)
    assert len(train) == 15 and train.classes[3] == "class3" and train.num_classes == 10
    image, label = train[4]
    assert image.shape == (3, 32, 32) and image.dtype == torch.float32
    assert label == 3 and image[0, 10, 10] == pytest.approx(3 / 255)
    assert image[1, 0, 5] == pytest.approx(200 / 255) and image[1, 0, 4] == pytest.approx(3 / 255)
    test = CIFAR(folder, train=False, transform=lambda x: x.mean())  # the folder itself works
    assert [test[i][1] for i in range(2)] == [9, 0] and test[0][0].dim() == 0


def test_cifar100(tmp_path):
    make_cifar100(tmp_path)
    train = CIFAR(tmp_path, train=True, num_classes=100)
    assert [train[i][1] for i in range(3)] == [99, 5, 0] and train.classes[99] == "c99"
    assert len(CIFAR(tmp_path, train=False, num_classes=100)) == 1


def test_missing_files_name_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="cifar-10-batches-py"):
        CIFAR(tmp_path, train=True)
    folder = make_cifar10(tmp_path)
    os.remove(os.path.join(folder, "data_batch_3"))
    with pytest.raises(FileNotFoundError, match="data_batch_3"):
        CIFAR(tmp_path, train=True)


@pytest.mark.parametrize(
    "content, message",
    [
        (_batch([1, 10]), "labels range"),  # label out of range
        ({**_batch([1, 2]), b"labels": [1]}, "2 images but labels"),
        ({**_batch([1]), b"data": np.zeros((1, 3071), np.uint8)}, "3071"),
        ({b"data": np.zeros((1, 3072), np.uint8)}, "no 'labels'"),
        ("not a dict", "not a batch dict"),
    ],
)
def test_bad_batches_are_errors(tmp_path, content, message):
    folder = make_cifar10(tmp_path)
    _dump(os.path.join(folder, "data_batch_2"), content)
    with pytest.raises(ValueError, match=f"data_batch_2.*{message}|{message}.*data_batch_2"):
        CIFAR(tmp_path, train=True)


def test_garbage_and_unsafe_pickles_are_refused(tmp_path):
    folder = make_cifar10(tmp_path)
    with open(os.path.join(folder, "test_batch"), "wb") as handle:
        handle.write(b"\x00garbage")
    with pytest.raises(ValueError, match="test_batch"):
        CIFAR(tmp_path, train=False)
    _dump(os.path.join(folder, "test_batch"), {b"data": os.getcwd})  # a callable, not data
    with pytest.raises(ValueError, match="unexpected object"):
        CIFAR(tmp_path, train=False)


def _archive(tmp_path, make=make_cifar10, name="cifar-10-python.tar.gz", extra=None) -> bytes:
    source = tmp_path / "source"
    folder = make(source)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        tar.add(folder, arcname=os.path.basename(folder))
        if extra:
            info = tarfile.TarInfo(extra)
            info.size = 1
            tar.addfile(info, io.BytesIO(b"x"))
    (tmp_path / "served").mkdir()
    (tmp_path / "served" / name).write_bytes(buffer.getvalue())
    return buffer.getvalue()


@contextmanager
def _serve(directory):
    """A local HTTP server on 127.0.0.1 for the duration of the block."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(directory))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_download_verifies_and_extracts(tmp_path):
    payload = _archive(tmp_path)
    md5 = hashlib.md5(payload).hexdigest()
    root = tmp_path / "data"
    with _serve(tmp_path / "served") as base:
        url = f"{base}/cifar-10-python.tar.gz"
        train = CIFAR(root, train=True, download=True, url=url, md5=md5)
        assert len(train) == 15
        # A second call finds the extracted folder and does not download again.
        assert len(CIFAR(root, train=False, download=True, url=f"{base}/gone", md5=md5)) == 2
    assert sorted(os.listdir(root)) == ["cifar-10-batches-py", "cifar-10-python.tar.gz"]


def test_download_with_wrong_checksum_is_refused(tmp_path):
    _archive(tmp_path)
    root = tmp_path / "data"
    with _serve(tmp_path / "served") as base, pytest.raises(ValueError, match="md5"):
        CIFAR(root, train=True, download=True, url=f"{base}/cifar-10-python.tar.gz", md5="0" * 32)
    assert os.listdir(root) == []  # no partial file, nothing extracted


def test_download_refuses_path_traversal(tmp_path):
    payload = _archive(tmp_path, extra="../escaped.txt")
    root = tmp_path / "data"
    with _serve(tmp_path / "served") as base, pytest.raises(ValueError, match="unsafe"):
        CIFAR(root, train=True, download=True, url=f"{base}/cifar-10-python.tar.gz",
              md5=hashlib.md5(payload).hexdigest())  # fmt: skip
    assert not (tmp_path / "escaped.txt").exists()
    assert "cifar-10-batches-py" not in os.listdir(root)


def test_download_failure_names_the_url(tmp_path):
    with _serve(tmp_path) as base, pytest.raises(OSError, match="missing.tar.gz"):
        CIFAR(tmp_path / "data", train=True, download=True, url=f"{base}/missing.tar.gz", md5="0")
