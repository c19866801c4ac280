"""Standard datasets downloaded from their publishers on first use (jaxarch.data.downloads): MNIST and
Fashion-MNIST (IDX files), CIFAR-10 and CIFAR-100 (the python tarballs), Tiny Shakespeare (text).

Images are kept as uint8 [N, height, width, channels] and standardised batch by batch with the per-channel mean
and standard deviation of the training split (StandardizedArrayDataset); `augment="crop_flip"` adds the random
crop (zero padding 4) and horizontal flip of the CIFAR literature before the standardisation.
"""

from __future__ import annotations

import dataclasses
import gzip
import pickle
import tarfile
import zlib
from pathlib import Path

import numpy as np

from jaxarch.data.arrays import StandardizedArrayDataset, hold_out, standardized
from jaxarch.data.augment import named
from jaxarch.data.downloads import RemoteFile, fetch
from jaxarch.data.registry import DATASETS
from jaxarch.data.text import CharCorpus, text_corpus

_MNIST_URL = "https://storage.googleapis.com/cvdf-datasets/mnist/"
_FASHION_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
_CIFAR_URL = "https://www.cs.toronto.edu/~kriz/"
_SHAKESPEARE_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"

# The published files and their SHA-256 digests. Tests patch this table to serve their own fixture files.
REMOTE_FILES: dict[str, dict[str, RemoteFile]] = {
    # Digests and sizes as recorded in tensorflow/datasets, tensorflow_datasets/url_checksums/mnist.txt (the CVDF
    # mirror of Yann LeCun's files, which TFDS and Keras download from).
    "mnist": {
        "train_images": RemoteFile("train-images-idx3-ubyte.gz", _MNIST_URL + "train-images-idx3-ubyte.gz",
                                   "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609", 9912422),
        "train_labels": RemoteFile("train-labels-idx1-ubyte.gz", _MNIST_URL + "train-labels-idx1-ubyte.gz",
                                   "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c", 28881),
        "test_images": RemoteFile("t10k-images-idx3-ubyte.gz", _MNIST_URL + "t10k-images-idx3-ubyte.gz",
                                  "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6", 1648877),
        "test_labels": RemoteFile("t10k-labels-idx1-ubyte.gz", _MNIST_URL + "t10k-labels-idx1-ubyte.gz",
                                  "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6", 4542),
    },
    # tensorflow/datasets, tensorflow_datasets/url_checksums/fashion_mnist.txt (Zalando Research's own bucket).
    "fashion_mnist": {
        "train_images": RemoteFile("train-images-idx3-ubyte.gz", _FASHION_URL + "train-images-idx3-ubyte.gz",
                                   "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84", 26421880),
        "train_labels": RemoteFile("train-labels-idx1-ubyte.gz", _FASHION_URL + "train-labels-idx1-ubyte.gz",
                                   "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845", 29515),
        "test_images": RemoteFile("t10k-images-idx3-ubyte.gz", _FASHION_URL + "t10k-images-idx3-ubyte.gz",
                                  "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073", 4422102),
        "test_labels": RemoteFile("t10k-labels-idx1-ubyte.gz", _FASHION_URL + "t10k-labels-idx1-ubyte.gz",
                                  "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5", 5148),
    },
    # keras-team/keras, keras/datasets/cifar10.py (`file_hash` of get_file); the same digest is in torchvision's
    # prototype datasets and many reproduction manifests; MD5 c58f30108f718f92721af3b95e74349a on the CIFAR page.
    "cifar10": {
        "archive": RemoteFile("cifar-10-python.tar.gz", _CIFAR_URL + "cifar-10-python.tar.gz",
                              "6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce", 170498071),
    },
    # keras-team/keras, keras/datasets/cifar100.py and torchvision/prototype/datasets/_builtin/cifar.py (`_SHA256`);
    # MD5 eb9058c3a382ffc7106e4002c42a8d85 on the CIFAR page.
    "cifar100": {
        "archive": RemoteFile("cifar-100-python.tar.gz", _CIFAR_URL + "cifar-100-python.tar.gz",
                              "85cd44d02ba6437773c5bbd22e183051d648de2e7d6b014e1ef29b855ba677a7", 169001437),
    },
    # karpathy/char-rnn, data/tinyshakespeare/input.txt, hashed here from a copy of that file (1,115,394 bytes).
    "tinyshakespeare": {
        "text": RemoteFile("input.txt", _SHAKESPEARE_URL,
                           "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed", 1115394),
    },
}

def read_idx(path: Path, name: str) -> np.ndarray:
    """The array of a gzipped IDX file (LeCun's MNIST format): two zero bytes, a type byte (0x08: uint8), the number
    of dimensions, each dimension as a big-endian uint32, then the values."""
    try:
        with gzip.open(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError, zlib.error) as err:
        raise ValueError(f"dataset {name!r}: {path} is not a readable gzipped IDX file ({err})") from None
    if len(data) < 4 or data[:2] != b"\0\0" or data[2] != 0x08:
        raise ValueError(f"dataset {name!r}: {path} does not start with an IDX header of unsigned bytes "
                         f"(00 00 08 ndim), got {data[:4].hex(' ')}")
    ndim = data[3]
    header = 4 + 4 * ndim
    shape = tuple(int(d) for d in np.frombuffer(data[4:header], ">u4")) if len(data) >= header else None
    if shape is None or len(data) != header + int(np.prod(shape)):
        raise ValueError(f"dataset {name!r}: {path} holds {len(data)} bytes, which does not match its IDX header "
                         f"(shape {shape}); the file is truncated or damaged")
    return np.frombuffer(data, np.uint8, offset=header).reshape(shape)


def _idx_dataset(name: str, validation_size: float, augment: str, normalize: bool
                 ) -> StandardizedArrayDataset:
    augmentation = named(augment, name)  # Options are checked before any download.
    files = {key: fetch(name, file) for key, file in REMOTE_FILES[name].items()}
    arrays = {key: read_idx(path, name) for key, path in files.items()}
    for split in ("train", "test"):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise ValueError(f"dataset {name!r}: the {split} files hold images {images.shape} and labels "
                             f"{labels.shape}, expected [N, height, width] and [N]")
    train = (arrays["train_images"][..., None], arrays["train_labels"].astype(np.int32))  # [N, 28, 28, 1]
    train, validation = hold_out(train, validation_size, name)
    splits = {"validation": validation} if validation is not None else {}
    splits["test"] = (arrays["test_images"][..., None], arrays["test_labels"].astype(np.int32))
    return standardized(name, "classification", 10, train, splits, normalize=normalize,
                        augment=augmentation)


@DATASETS.register("mnist")
def mnist(validation_size: float = 0.0, augment: str = "none", normalize: bool = True
          ) -> StandardizedArrayDataset:
    """MNIST: 60,000 training and 10,000 test handwritten digits, [28, 28, 1], 10 classes.

    Args:
      validation_size: training examples (a count, or a fraction) held out from the end as a validation split.
      augment: "none" or "crop_flip" (random crop after zero padding of 4, horizontal flip).
      normalize: standardise with the training split's mean and standard deviation (else raw uint8 0..255).
    """
    return _idx_dataset("mnist", validation_size, augment, normalize)


@DATASETS.register("fashion_mnist")
def fashion_mnist(validation_size: float = 0.0, augment: str = "none", normalize: bool = True
                  ) -> StandardizedArrayDataset:
    """Fashion-MNIST (Xiao et al. 2017): 60,000 training and 10,000 test clothing images, [28, 28, 1], 10 classes.
    Options as for `mnist`."""
    return _idx_dataset("fashion_mnist", validation_size, augment, normalize)


def read_cifar(path: Path, name: str, members: tuple[str, ...], label_key: bytes) -> tuple[np.ndarray, np.ndarray]:
    """Images [N, 32, 32, 3] uint8 and labels [N] int32 from pickled batches inside the CIFAR python tarball."""
    images, labels = [], []
    try:
        with tarfile.open(path, "r:gz") as archive:
            missing = sorted(set(members) - set(archive.getnames()))
            for member in () if missing else members:
                with archive.extractfile(member) as f:
                    # The archive's digest was checked before it was opened: these pickles are the publisher's.
                    batch = pickle.load(f, encoding="bytes")
                data = np.asarray(batch[b"data"], np.uint8)
                images.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))  # rows are [R..., G..., B...]
                labels.append(np.asarray(batch[label_key], np.int32))
    except (OSError, EOFError, tarfile.TarError, zlib.error, pickle.UnpicklingError, KeyError, ValueError) as err:
        raise ValueError(f"dataset {name!r}: {path} is not a readable CIFAR python archive ({err!r})") from None
    if missing:
        raise ValueError(f"dataset {name!r}: {path} has no member {missing[0]!r}, expected the python version of "
                         "the CIFAR archive")
    return np.concatenate(images), np.concatenate(labels)


def _cifar(name: str, members: dict[str, tuple[str, ...]], label_key: bytes, num_classes: int,
           validation_size: float, augment: str, normalize: bool) -> StandardizedArrayDataset:
    augmentation = named(augment, name)  # Options are checked before any download.
    path = fetch(name, REMOTE_FILES[name]["archive"])
    train = read_cifar(path, name, members["train"], label_key)
    test = read_cifar(path, name, members["test"], label_key)
    train, validation = hold_out(train, validation_size, name)
    splits = {"validation": validation} if validation is not None else {}
    splits["test"] = test
    return standardized(name, "classification", num_classes, train, splits, normalize=normalize,
                        augment=augmentation)


@DATASETS.register("cifar10")
def cifar10(validation_size: float = 0.0, augment: str = "none", normalize: bool = True
            ) -> StandardizedArrayDataset:
    """CIFAR-10 (Krizhevsky 2009): 50,000 training and 10,000 test colour images, [32, 32, 3], 10 classes.

    Args:
      validation_size: training examples (a count, or a fraction) held out from the end as a validation split.
      augment: "none" or "crop_flip" (random crop after zero padding of 4, horizontal flip: He et al. 2016).
      normalize: standardise each channel with the training split's mean and standard deviation.
    """
    members = {"train": tuple(f"cifar-10-batches-py/data_batch_{i}" for i in range(1, 6)),
               "test": ("cifar-10-batches-py/test_batch",)}
    return _cifar("cifar10", members, b"labels", 10, validation_size, augment, normalize)


@DATASETS.register("cifar100")
def cifar100(validation_size: float = 0.0, augment: str = "none", normalize: bool = True, labels: str = "fine"
             ) -> StandardizedArrayDataset:
    """CIFAR-100: 50,000 training and 10,000 test colour images, [32, 32, 3], 100 fine classes (or 20 coarse).

    Args:
      labels: "fine" (100 classes) or "coarse" (20 superclasses); the other options as for `cifar10`.
    """
    if labels not in ("fine", "coarse"):
        raise ValueError(f"dataset 'cifar100': labels is {labels!r}, expected 'fine' or 'coarse'")
    members = {"train": ("cifar-100-python/train",), "test": ("cifar-100-python/test",)}
    return _cifar("cifar100", members, f"{labels}_labels".encode(), 100 if labels == "fine" else 20,
                  validation_size, augment, normalize)


@DATASETS.register("tinyshakespeare")
def tinyshakespeare(seq_len: int = 256, validation_fraction: float = 0.1, max_eval_windows: int = 256
                    ) -> CharCorpus:
    """Tiny Shakespeare (the char-rnn corpus, 1,115,394 characters) as a character corpus; the last 10% is the
    validation text, as in nanoGPT's shakespeare_char.

    Args:
      seq_len: characters per training window.
      validation_fraction: the share of the text, from the end, held out for validation.
      max_eval_windows: validation windows (evenly spaced over the held-out text).
    """
    path = fetch("tinyshakespeare", REMOTE_FILES["tinyshakespeare"]["text"])
    corpus = text_corpus(text_file=str(path), seq_len=seq_len, max_chars=2_000_000,
                         validation_fraction=validation_fraction, max_eval_windows=max_eval_windows)
    return dataclasses.replace(corpus, name="tinyshakespeare")
