"""Character-level text for language modelling: by default the running Python's own standard library
source (present on every machine, read in a fixed order), or any UTF-8 file a user names."""

from __future__ import annotations

import dataclasses
import sysconfig
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from jaxarch.data.base import Batch, batch_rng, batch_rows, padded_batches
from jaxarch.data.registry import DATASETS

_ORDER_STREAM = 4
UNKNOWN_ID = 0  # Characters absent from the training text map here.
_SKIPPED_DIRS = {"site-packages", "test", "tests", "idle_test", "__pycache__"}


def stdlib_source(max_chars: int) -> str:
    """The standard library's .py files, sorted by relative path and concatenated up to `max_chars`."""
    root = Path(sysconfig.get_paths()["stdlib"])
    pieces, total = [], 0
    for path in sorted(root.rglob("*.py"), key=lambda p: p.relative_to(root).as_posix()):
        if _SKIPPED_DIRS.intersection(path.relative_to(root).parts[:-1]):
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        pieces.append(text)
        total += len(text)
        if total >= max_chars:
            break
    return "".join(pieces)[:max_chars]


def read_text_file(text_file: str, max_chars: int) -> str:
    """The first `max_chars` characters of a UTF-8 text file. A file that is not UTF-8, or holds NUL bytes (a
    binary file: executables, images and archives are mostly valid bytes in some encoding, but never free of
    NULs), is an error, not a corpus of replacement characters."""
    path = Path(text_file).expanduser()
    if not path.is_file():
        raise ValueError(f"dataset 'text': text_file {text_file!r} does not exist or is not a file, "
                         "expected a readable UTF-8 text file")
    try:
        with path.open("rb") as f:
            # Enough bytes for max_chars characters of up to 4 bytes each; a character cut at the end is dropped.
            data = f.read(4 * max_chars)
    except OSError as err:
        raise ValueError(f"dataset 'text': text_file {text_file!r} cannot be read ({err.strerror}), expected a "
                         "readable UTF-8 text file") from None
    nul = data.find(b"\0")
    if nul >= 0:
        raise ValueError(f"dataset 'text': text_file {text_file!r} holds NUL bytes (the first at byte {nul}), so "
                         "it looks like a binary file, expected a UTF-8 text file")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        if err.reason != "unexpected end of data" or err.end != len(data):
            raise ValueError(f"dataset 'text': text_file {text_file!r} is not UTF-8 text (byte "
                             f"{data[err.start]:#04x} at offset {err.start} {err.reason}), expected a UTF-8 text "
                             "file") from None
        text = data[:err.start].decode("utf-8")
    text = text[:max_chars]
    if not text:
        raise ValueError(f"dataset 'text': text_file {text_file!r} is empty, expected some text")
    return text


@dataclasses.dataclass(frozen=True, eq=False)
class CharCorpus:
    """Training windows are sampled uniformly from the training text at each step; validation uses fixed,
    evenly spaced windows of the held-out tail.

    inputs [batch, seq_len] int32 character ids; targets [batch, seq_len] the next characters.
    """

    name: str
    train_ids: np.ndarray
    validation_ids: np.ndarray
    alphabet: str  # alphabet[i - 1] is the character of id i; id 0 is "unknown".
    seq_len: int
    max_eval_windows: int
    task: str = "sequence_classification"

    @property
    def num_outputs(self) -> int:
        return len(self.alphabet) + 1

    vocab_size = num_outputs

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (self.seq_len,)

    def encode(self, text: str) -> np.ndarray:
        lookup = {c: i + 1 for i, c in enumerate(self.alphabet)}
        return np.array([lookup.get(c, UNKNOWN_ID) for c in text], np.int32)

    def decode(self, ids) -> str:
        return "".join(self.alphabet[i - 1] if 0 < i <= len(self.alphabet) else "\ufffd" for i in np.asarray(ids))

    def default_prompt(self, max_chars: int = 32) -> str:
        """The prompt a sample starts from when none is given: the start of the held-out text (so it is text of
        the corpus's own kind, English or Python alike), up to `max_chars` characters, cut after its last space
        or line break when it has one so that the sample starts at a word."""
        head = self.decode(self.validation_ids[:max_chars])
        cut = max(head.rfind(" "), head.rfind("\n"))
        return head[:cut + 1] if cut > 0 else head

    def _windows(self, ids: np.ndarray, starts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        offsets = starts[:, None] + np.arange(self.seq_len + 1)[None, :]
        windows = ids[offsets]
        return windows[:, :-1], windows[:, 1:]

    def train_batch(self, seed: int, step: int, batch_size: int, rows: slice | None = None) -> Batch:
        rng = batch_rng(seed, step, _ORDER_STREAM)
        rows = batch_rows(rows, batch_size, self.name)
        starts = rng.integers(0, len(self.train_ids) - self.seq_len - 1, size=batch_size)[rows]
        inputs, targets = self._windows(self.train_ids, starts)
        return {"inputs": inputs, "targets": targets}

    def split_names(self) -> tuple[str, ...]:
        return ("validation",)

    def eval_batches(self, split: str, batch_size: int) -> Iterator[Batch]:
        if split != "validation":
            raise ValueError(f"{self.name}: split {split!r} is unknown, expected 'validation'")
        last_start = len(self.validation_ids) - self.seq_len - 1
        count = min(self.max_eval_windows, last_start // self.seq_len + 1)
        starts = np.linspace(0, last_start, count).astype(np.int64)
        yield from padded_batches(*self._windows(self.validation_ids, starts), batch_size)


@DATASETS.register("text")
def text_corpus(text_file: str = "", seq_len: int = 128, max_chars: int = 2_000_000,
                validation_fraction: float = 0.1, max_eval_windows: int = 256) -> CharCorpus:
    """A character corpus split into training text and a held-out tail.

    Args:
      text_file: a UTF-8 file; empty means the Python standard library's source.
      seq_len: characters per training window.
      max_chars: at most this many characters are read.
      validation_fraction: the share of the text, taken from the end, held out for validation.
      max_eval_windows: validation windows (evenly spaced over the held-out text).
    """
    text = read_text_file(text_file, max_chars) if text_file else stdlib_source(max_chars)
    if not 0 < validation_fraction < 1:
        raise ValueError(f"dataset 'text': validation_fraction is {validation_fraction}, expected in (0, 1)")
    split = int(len(text) * (1 - validation_fraction))
    train_text, validation_text = text[:split], text[split:]
    shortest = min(len(train_text), len(validation_text))
    if shortest < seq_len + 2:
        raise ValueError(f"dataset 'text': the text has {len(text)} characters, too few for seq_len={seq_len}; "
                         f"expected each split to hold at least seq_len + 2 = {seq_len + 2}")
    alphabet = "".join(sorted(set(train_text)))
    corpus = CharCorpus(Path(text_file).name if text_file else "python-stdlib", np.zeros(0, np.int32),
                        np.zeros(0, np.int32), alphabet, seq_len, max_eval_windows)
    return dataclasses.replace(corpus, train_ids=corpus.encode(train_text),
                               validation_ids=corpus.encode(validation_text))
