"""Batching (docs/SPEC.md section 3), identical for every framework.

A stream of ids is cut into `batch_size` contiguous rows ("threads") so that
row i of batch j+1 continues row i of batch j, and the LSTM state can be
carried from batch to batch:

    >>> b = Batches(np.arange(13, dtype=np.int32), batch_size=2, seq_len=3)
    >>> b.num_batches
    2
    >>> x, y = b.batch(epoch=0, index=0)
    >>> x.tolist(), y.tolist()
    ([[0, 1, 2], [6, 7, 8]], [[1, 2, 3], [7, 8, 9]])
"""

from __future__ import annotations

import numpy as np

from charrnn.common.errors import CharRnnError


def split_ids(ids: np.ndarray, val_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """(train, val): the last `val_fraction` of the ids is the validation stream."""
    if not 0.0 <= val_fraction < 1.0:
        raise CharRnnError(f"--val-fraction {val_fraction}: must be in [0, 1)")
    n_train = len(ids) - int(len(ids) * val_fraction)
    return ids[:n_train], ids[n_train:]


class Batches:
    """The (x, y) batches of one stream; batch j of epoch e is `batch(e, j)`."""

    def __init__(self, ids: np.ndarray, batch_size: int, seq_len: int):
        self.batch_size, self.seq_len = batch_size, seq_len
        self.num_batches = (len(ids) - 1) // (batch_size * seq_len)
        n = self.num_batches * batch_size * seq_len
        # (batch_size, num_batches * seq_len): row i is the i-th contiguous slice.
        self.x = np.ascontiguousarray(ids[:n], dtype=np.int32).reshape(batch_size, -1)
        self.y = np.ascontiguousarray(ids[1:n + 1], dtype=np.int32).reshape(batch_size, -1)

    def batch(self, epoch: int, index: int) -> tuple[np.ndarray, np.ndarray]:
        """x, y of shape (batch_size, seq_len), int32.

        Epoch e rolls the rows by e (row i takes row i+e's text) so that the
        state carried from the end of epoch e-1 continues the right text.
        """
        rows = (np.arange(self.batch_size) + epoch) % self.batch_size
        cols = slice(index * self.seq_len, (index + 1) * self.seq_len)
        return self.x[rows, cols], self.y[rows, cols]

    def __len__(self) -> int:
        return self.num_batches

    @property
    def chars_per_batch(self) -> int:
        return self.batch_size * self.seq_len


def make_streams(ids: np.ndarray, batch_size: int, seq_len: int, val_fraction: float,
                 source: str) -> tuple[Batches, Batches | None]:
    """Training and validation batches, refusing a text too short for one training batch.

    The validation stream may be too short for a batch of the training shape; it
    is then evaluated as one row (batch_size 1), and skipped (None) only when it
    cannot fill even that.
    """
    train_ids, val_ids = split_ids(ids, val_fraction)
    train = Batches(train_ids, batch_size, seq_len)
    if train.num_batches == 0:
        need = batch_size * seq_len + 1
        raise CharRnnError(
            f"{source}: too short: {len(train_ids)} training characters, one batch of "
            f"--batch-size {batch_size} x --seq-len {seq_len} needs {need}")
    val = Batches(val_ids, batch_size, seq_len)
    if val.num_batches == 0:
        val = Batches(val_ids, 1, seq_len)
    return train, (val if val.num_batches > 0 else None)
