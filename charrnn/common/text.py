"""Text and vocabulary (docs/SPEC.md section 2): strict UTF-8, printable and corpus vocabularies.

    >>> vocab = Vocab.printable()
    >>> vocab.size, vocab.decode(vocab.encode("KING"))
    (98, 'KING')
"""

from __future__ import annotations

import hashlib
import os
import string
import sys
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from charrnn.common.errors import CharRnnError
from charrnn.common.fileio import atomic_write_bytes
from charrnn.common.paths import data_dir

# The corpus of the original suite, downloaded once and checked byte for byte.
TINYSHAKESPEARE_URL = ("https://raw.githubusercontent.com/karpathy/char-rnn/master/"
                       "data/tinyshakespeare/input.txt")
TINYSHAKESPEARE_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
TINYSHAKESPEARE_NAME = "tinyshakespeare.txt"
DATA_DIR_ENV = "CHARRNN_DATA_DIR"

# string.printable minus vertical tab, form feed and carriage return, sorted.
PRINTABLE_CHARS = sorted(set(string.printable) - {"\x0b", "\x0c", "\r"})


def default_corpus_path() -> Path:
    """Find tinyshakespeare: $CHARRNN_DATA_DIR, then data/, else download it into data/.

    A found or downloaded file must match the published SHA-256, so every run of
    the benchmark trains on the same bytes.
    """
    candidates = []
    if os.environ.get(DATA_DIR_ENV):
        candidates.append(Path(os.environ[DATA_DIR_ENV]) / TINYSHAKESPEARE_NAME)
    candidates.append(data_dir() / TINYSHAKESPEARE_NAME)
    for path in candidates:
        if path.is_file():
            _check_sha256(path.read_bytes(), str(path))
            return path
    return download_corpus(data_dir() / TINYSHAKESPEARE_NAME)


def download_corpus(path: Path) -> Path:
    """Download tinyshakespeare to `path` (atomically), verifying its SHA-256."""
    print(f"downloading tinyshakespeare to {path}", file=sys.stderr)
    try:
        with urllib.request.urlopen(TINYSHAKESPEARE_URL, timeout=60) as response:
            data = response.read()
    except OSError as exc:
        raise CharRnnError(
            f"cannot download tinyshakespeare from {TINYSHAKESPEARE_URL} ({exc}); "
            f"put {TINYSHAKESPEARE_NAME} in ${DATA_DIR_ENV} or data/, "
            "or pass --text-path") from None
    _check_sha256(data, TINYSHAKESPEARE_URL)
    atomic_write_bytes(path, data)
    return path


def _check_sha256(data: bytes, where: str) -> None:
    digest = hashlib.sha256(data).hexdigest()
    if digest != TINYSHAKESPEARE_SHA256:
        raise CharRnnError(f"{where}: SHA-256 {digest} is not tinyshakespeare's "
                           f"{TINYSHAKESPEARE_SHA256}")


def read_text(path: str | os.PathLike) -> str:
    """Read a whole file as strict UTF-8, refusing missing, empty or undecodable files."""
    path = Path(path)
    if not path.exists():
        raise CharRnnError(f"{path}: file not found")
    if not path.is_file():
        raise CharRnnError(f"{path}: not a regular file")
    data = path.read_bytes()
    if not data:
        raise CharRnnError(f"{path}: file is empty")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CharRnnError(f"{path}: not valid UTF-8 (byte {exc.start}: "
                           f"{data[exc.start:exc.start + 1]!r})") from None
    return text


@dataclass(frozen=True)
class TextId:
    """The training text a run read: where it was, its size and its SHA-256."""

    path: str  # absolute
    bytes: int  # UTF-8 bytes
    sha256: str  # hex digest of those bytes

    @classmethod
    def of(cls, path: str | Path, text: str) -> TextId:
        data = text.encode("utf-8")  # strict UTF-8 read: the file's own bytes
        return cls(str(Path(path).resolve()), len(data), hashlib.sha256(data).hexdigest())

    def short(self) -> str:
        return f"{self.bytes:,} bytes, SHA-256 {self.sha256[:12]}"


class Vocab:
    """Character <-> id mapping. Id 0 is the unknown character, decoding to ""."""

    def __init__(self, chars: list[str]):
        if len(set(chars)) != len(chars) or any(len(c) != 1 for c in chars):
            raise CharRnnError("vocabulary must be distinct single characters")
        self.chars = list(chars)  # index = id - 1
        self.index = {c: i + 1 for i, c in enumerate(self.chars)}

    @classmethod
    def printable(cls) -> Vocab:
        """98 ids: unknown plus the 97 printable characters."""
        return cls(PRINTABLE_CHARS)

    @classmethod
    def from_text(cls, text: str) -> Vocab:
        """Unknown plus the sorted distinct characters of `text`."""
        return cls(sorted(set(text)))

    @classmethod
    def choose(cls, text: str, mode: str = "auto") -> Vocab:
        """docs/SPEC.md section 2: printable when the text fits in it (auto), else the corpus's."""
        if mode == "printable":
            return cls.printable()
        if mode == "corpus":
            return cls.from_text(text)
        if mode != "auto":
            raise CharRnnError(f"--vocab {mode}: expected auto, printable or corpus")
        printable = cls.printable()
        return printable if set(text) <= set(printable.chars) else cls.from_text(text)

    @property
    def size(self) -> int:
        return len(self.chars) + 1

    def to_list(self) -> list[str]:
        """Characters by id, with "" for id 0 (the portable metadata form)."""
        return [""] + self.chars

    @classmethod
    def from_list(cls, items: list[str]) -> Vocab:
        if not items or items[0] != "":
            raise CharRnnError("vocabulary list must start with the unknown entry \"\"")
        return cls(items[1:])

    def encode(self, text: str) -> np.ndarray:
        """(len(text),) int32 ids; characters outside the vocabulary become 0."""
        return np.fromiter((self.index.get(c, 0) for c in text), dtype=np.int32,
                           count=len(text))

    def decode(self, ids) -> str:
        return "".join(self.chars[i - 1] if i > 0 else "" for i in np.asarray(ids).ravel())

    def unknown_chars(self, text: str) -> list[str]:
        """Distinct characters of `text` that have no id, in order of appearance."""
        return list(dict.fromkeys(c for c in text if c not in self.index))
