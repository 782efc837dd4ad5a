"""Choosing the next character from logits: temperature, top-n, top-p, one seeded generator.

The same code for every framework, so the same weights and seed give the same
text everywhere.

    >>> probs = next_char_probs(np.log([[0.5, 0.3, 0.2]]), temperature=1.0, top_n=2)
    >>> probs.round(3).tolist()
    [[0.625, 0.375, 0.0]]
"""

from __future__ import annotations

import numpy as np

from common.errors import CharRnnError


def check_sampling(temperature: float, top_n: int, top_p: float) -> None:
    if temperature < 0:
        raise CharRnnError(f"--temperature {temperature}: must be >= 0 (0 is greedy)")
    if top_n < 0:
        raise CharRnnError(f"--top-n {top_n}: must be >= 0 (0 keeps all)")
    if not 0.0 < top_p <= 1.0:
        raise CharRnnError(f"--top-p {top_p}: must be in (0, 1]")


def next_char_probs(logits: np.ndarray, temperature: float = 1.0, top_n: int = 0,
                    top_p: float = 1.0) -> np.ndarray:
    """Sampling distribution (batch, vocab_size) float64 from logits (batch, vocab_size).

    In order: softmax of logits / temperature; keep the top_n most likely (0 = all,
    the original suite's default is 3); keep the smallest set whose probability
    reaches top_p; renormalise. Temperature 0 puts all mass on the argmax. Id 0
    (unknown, decodes to "") is never sampled.
    """
    logits = np.array(logits, dtype=np.float64, ndmin=2)
    logits[:, 0] = -np.inf
    if temperature == 0:
        probs = np.zeros_like(logits)
        probs[np.arange(len(logits)), logits.argmax(axis=1)] = 1.0
        return probs
    scaled = logits / temperature
    scaled -= scaled.max(axis=1, keepdims=True)
    probs = np.exp(scaled)
    probs /= probs.sum(axis=1, keepdims=True)
    # Ranks by descending probability, ties broken by id (stable), so it is deterministic.
    order = np.argsort(-probs, axis=1, kind="stable")
    sorted_probs = np.take_along_axis(probs, order, axis=1)
    keep = np.ones_like(sorted_probs, dtype=bool)
    if top_n > 0:
        keep[:, top_n:] = False
    if top_p < 1.0:
        # Keep a rank while the mass before it is still below top_p (always the first).
        before = np.cumsum(sorted_probs, axis=1) - sorted_probs
        keep &= before < top_p
    mask = np.zeros_like(keep)
    np.put_along_axis(mask, order, keep, axis=1)
    probs = np.where(mask, probs, 0.0)
    return probs / probs.sum(axis=1, keepdims=True)


def sample(probs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One id per row of `probs` (batch, vocab_size), by inverse CDF with one uniform per row."""
    cdf = np.cumsum(probs, axis=1)
    u = rng.random(len(probs)) * cdf[:, -1]
    ids = (cdf <= u[:, None]).sum(axis=1)  # first index whose cdf exceeds u
    # Never land on a zero-probability id through rounding at the top of the cdf.
    return np.minimum(ids, probs.shape[1] - 1 - np.argmax(probs[:, ::-1] > 0, axis=1))
