"""Exact unit tests of common/: vocabulary, batching, sampling, weights, files, parser.

These need only NumPy and safetensors, so they run in both environments.
"""

import json
import string

import numpy as np
import pytest
import safetensors.numpy

from charrnn.common.batching import Batches, make_streams, split_ids
from charrnn.common.cli import parse_args
from charrnn.common.config import ModelConfig, TrainConfig
from charrnn.common.errors import CharRnnError
from charrnn.common.fileio import atomic_directory, atomic_write_text, resolve_directory
from charrnn.common.framework import cross_entropy
from charrnn.common.sampling import Sampler, inverse_cdf, next_char_probs, sample
from charrnn.common.text import Vocab, read_text
from charrnn.common.threads import one_step_command, threads_from_argv
from charrnn.common.weights import init_weights, load_portable, save_portable


# ---- text and vocabulary -------------------------------------------------------------
def test_printable_vocabulary_is_spec():
    vocab = Vocab.printable()
    assert vocab.size == 98
    assert vocab.to_list()[0] == ""
    assert vocab.chars == sorted(set(string.printable) - {"\x0b", "\x0c", "\r"})
    assert vocab.chars[:2] == ["\t", "\n"]


def test_vocab_encode_decode_unknown():
    vocab = Vocab.printable()
    ids = vocab.encode("KING é")
    assert ids.dtype == np.int32
    assert ids[-1] == 0
    assert vocab.decode(ids) == "KING "
    assert vocab.unknown_chars("aéüé") == ["é", "ü"]


def test_vocab_choose_auto():
    assert Vocab.choose("hello", "auto").size == 98
    corpus = Vocab.choose("héllo", "auto")
    assert corpus.to_list() == ["", "h", "l", "o", "é"]
    assert Vocab.choose("hello", "corpus").to_list() == ["", "e", "h", "l", "o"]
    assert Vocab.from_list(corpus.to_list()).chars == corpus.chars


@pytest.mark.parametrize("content, message", [
    (None, "file not found"), (b"", "file is empty"), (b"ab\xffcd", "not valid UTF-8")])
def test_read_text_refuses(tmp_path, content, message):
    path = tmp_path / "t.txt"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(CharRnnError, match=message):
        read_text(path)


# ---- batching --------------------------------------------------------------------------
def test_batches_layout_and_epoch_roll():
    ids = np.arange(25, dtype=np.int32)
    b = Batches(ids, batch_size=2, seq_len=4)
    assert b.num_batches == (25 - 1) // 8 == 3
    x, y = b.batch(0, 1)
    assert x.tolist() == [[4, 5, 6, 7], [16, 17, 18, 19]]
    assert y.tolist() == [[5, 6, 7, 8], [17, 18, 19, 20]]
    # Epoch 1 rolls the rows by one: np.roll(x, -1, axis=0).
    x1, _ = b.batch(1, 1)
    assert x1.tolist() == np.roll(b.x, -1, axis=0)[:, 4:8].tolist()
    assert b.batch(2, 0)[0].tolist() == b.batch(0, 0)[0].tolist()
    # Consecutive batches continue each row: the carried state sees contiguous text.
    assert b.batch(0, 0)[0][0, -1] + 1 == b.batch(0, 1)[0][0, 0]


def test_split_and_streams():
    ids = np.arange(100, dtype=np.int32)
    train, val = split_ids(ids, 0.1)
    assert len(train) == 90 and val.tolist() == list(range(90, 100))
    train_b, val_b = make_streams(ids, 2, 4, 0.1, "x")
    assert train_b.num_batches == (90 - 1) // 8
    assert val_b.batch_size == 2 and val_b.num_batches == 1
    _, val_b = make_streams(np.arange(60, dtype=np.int32), 2, 4, 0.1, "x")
    assert val_b.batch_size == 1 and val_b.num_batches == 1  # 6 ids: too short for 2 rows
    with pytest.raises(CharRnnError, match="too short"):
        make_streams(np.arange(8, dtype=np.int32), 2, 4, 0.1, "tiny.txt")


# ---- sampling ----------------------------------------------------------------------------
def test_sampling_top_k_and_temperature():
    logits = np.log(np.array([[1e-9, 0.5, 0.3, 0.2]]))
    np.testing.assert_allclose(next_char_probs(logits, 1.0, top_k=2), [[0, 0.625, 0.375, 0]])
    np.testing.assert_allclose(next_char_probs(logits, 0.0), [[0, 1, 0, 0]])
    p = next_char_probs(logits, 0.5, top_k=0)
    expected = np.array([0.5, 0.3, 0.2]) ** 2
    np.testing.assert_allclose(p[0, 1:], expected / expected.sum())
    assert p[0, 0] == 0  # the unknown id is never sampled


def test_sampling_top_p():
    logits = np.log(np.array([[1e-9, 0.5, 0.3, 0.2]]))
    np.testing.assert_allclose(next_char_probs(logits, 1.0, top_p=0.6), [[0, 0.625, 0.375, 0]])
    np.testing.assert_allclose(next_char_probs(logits, 1.0, top_p=0.4), [[0, 1, 0, 0]])


def test_sample_is_seeded_and_follows_probs():
    probs = np.array([[0.0, 0.25, 0.0, 0.75]] * 4000)
    draws = sample(probs, np.random.default_rng(0))
    assert set(draws.tolist()) == {1, 3}
    assert abs((draws == 3).mean() - 0.75) < 0.03
    again = sample(probs, np.random.default_rng(0))
    assert draws.tolist() == again.tolist()


def test_sampler_is_the_definition_bit_for_bit():
    """`Sampler` picks exactly the ids of `inverse_cdf(next_char_probs(...))`: random
    logits, ties, non-finite rows, every setting, and uniforms on and beside each step of
    the cdf (where a rounding difference would show)."""
    rng = np.random.default_rng(0)
    settings = [(t, n, p) for t in (0.0, 0.5, 1.0, 1.7) for n in (0, 1, 3, 40)
                for p in (1.0, 0.9, 0.3)]
    for trial in range(150):
        batch = 1 + trial % 3
        logits = (rng.standard_normal((batch, 98)) * (0.3, 3.0, 30.0)[trial % 3])
        logits = logits.astype(np.float32)
        if trial % 4 == 0:
            logits = np.round(logits)  # ties, broken by id
        if trial == 5:
            logits[0, 7] = np.nan
        if trial == 6:
            logits[-1, 9] = np.inf
        temperature, top_k, top_p = settings[trial % len(settings)]
        with np.errstate(invalid="ignore"):
            probs = next_char_probs(logits, temperature, top_k, top_p)
        cdf = np.cumsum(probs[0])
        steps = cdf[probs[0] > 0] / cdf[-1] if np.isfinite(cdf[-1]) else np.array([])
        # Zero, and the largest uniform below 1, where u * total may round up to the top.
        uniforms = [rng.random(batch) for _ in range(3)] + [np.zeros(batch),
                                                           np.full(batch, 1 - 2**-53)]
        for step in steps[:-1]:
            uniforms += [np.full(batch, u) for u in (np.nextafter(step, 0), step,
                                                     np.nextafter(step, 1))]
        sampler = Sampler(temperature, top_k, top_p)
        for u in uniforms:
            with np.errstate(invalid="ignore"):
                ids = sampler(logits, u)
            assert ids.dtype == np.int32
            assert ids.tolist() == inverse_cdf(probs, u).tolist(), (temperature, top_k, top_p)


def test_uniforms_drawn_at_once_are_the_same_draws():
    """Generation draws a block of uniforms in one call; NumPy gives the same sequence."""
    one_call = np.random.default_rng(5).random((7, 3))
    rng = np.random.default_rng(5)
    assert np.array_equal(one_call, [rng.random(3) for _ in range(7)])


def test_cross_entropy_uniform():
    assert cross_entropy(np.zeros((2, 3, 5)), np.zeros((2, 3), int)) == pytest.approx(np.log(5))


# ---- initial weights and the portable format ---------------------------------------------
def test_param_count_is_spec():
    assert ModelConfig(vocab_size=98).num_params() == 229_794


def test_init_weights_follow_spec():
    config = ModelConfig(vocab_size=98)
    w = init_weights(config, seed=42)
    assert all(a.dtype == np.float32 for a in w.values())
    embedding = w["embedding"].astype(np.float64)  # N(0, 1): 98 x 32 draws
    assert abs(embedding.mean()) < 0.1 and abs(embedding.std() - 1.0) < 0.05
    H = config.rnn_size
    for k in range(2):
        rec = w[f"lstm.{k}.w_hh"].T  # (H, 4H) with orthonormal rows
        np.testing.assert_allclose(rec @ rec.T, np.eye(H), atol=1e-5)
        bias = w[f"lstm.{k}.bias"]
        assert bias[H:2 * H].tolist() == [1.0] * H
        assert not bias[:H].any() and not bias[2 * H:].any()
        fan_in = config.embedding_size if k == 0 else H
        assert np.abs(w[f"lstm.{k}.w_ih"]).max() <= np.sqrt(6 / (fan_in + 4 * H))
    assert np.abs(w["dense.w"]).max() <= np.sqrt(6 / (H + 98))
    again = init_weights(config, seed=42)
    assert all(np.array_equal(w[n], again[n]) for n in w)
    assert not np.array_equal(w["embedding"], init_weights(config, seed=1)["embedding"])


def test_portable_round_trip(tmp_path):
    vocab = Vocab.printable()
    config = ModelConfig(vocab_size=vocab.size, embedding_size=4, rnn_size=8)
    w = init_weights(config, 0)
    path = tmp_path / "m.safetensors"
    save_portable(path, w, config, vocab, framework="numpy", epoch=3, val_loss=None)
    p = load_portable(path)
    assert p.config == config and p.vocab.chars == vocab.chars
    assert all(np.array_equal(p.weights[n], w[n]) for n in w)
    assert p.metadata["format"] == "char-rnn-portable/1"
    assert p.metadata["epoch"] == "3" and p.metadata["framework"] == "numpy"
    assert json.loads(p.metadata["config"])["rnn_size"] == 8


def test_portable_refuses_bad_files(tmp_path):
    vocab = Vocab.from_text("abc")
    config = ModelConfig(vocab_size=vocab.size, embedding_size=4, rnn_size=8)
    w = init_weights(config, 0)
    good = tmp_path / "good.safetensors"
    save_portable(good, w, config, vocab)
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(good.read_bytes()[:200])
    with pytest.raises(CharRnnError, match="not a readable"):
        load_portable(truncated)
    no_meta = tmp_path / "nometa.safetensors"
    safetensors.numpy.save_file(w, str(no_meta))
    with pytest.raises(CharRnnError, match="missing metadata"):
        load_portable(no_meta)
    wrong = tmp_path / "wrong.safetensors"
    bad = dict(w, **{"dense.b": np.zeros(3, np.float32)})
    meta = {"format": "char-rnn-portable/1", "config": config.to_json(),
            "vocab": json.dumps(vocab.to_list())}
    safetensors.numpy.save_file(bad, str(wrong), metadata=meta)
    with pytest.raises(CharRnnError, match="dense.b has shape"):
        load_portable(wrong)


# ---- atomic files ------------------------------------------------------------------------
def test_atomic_write_keeps_old_file_on_failure(tmp_path, monkeypatch):
    path = tmp_path / "f.txt"
    atomic_write_text(path, "old")

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("os.replace", broken)
    with pytest.raises(OSError):
        atomic_write_text(path, "new")
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.txt"]  # no temp file left


def test_atomic_directory(tmp_path):
    target = tmp_path / "ck"
    with atomic_directory(target) as d:
        (d / "a").write_text("1")
    with pytest.raises(RuntimeError):
        with atomic_directory(target) as d:
            (d / "a").write_text("2")
            raise RuntimeError("killed mid-save")
    assert (target / "a").read_text() == "1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"]
    # A crash between the two renames leaves ck.old, which is then used.
    target.rename(tmp_path / "ck.old")
    assert resolve_directory(target) == tmp_path / "ck.old"


# ---- the parser ------------------------------------------------------------------------
def test_parser_defaults_match_config():
    command, cfg = parse_args(["train"], "x")
    assert command == "train" and cfg == TrainConfig()
    _, cfg = parse_args(["train", "--restore", "--seq-len", "32", "--threads=2"], "x")
    assert cfg.restore == "" and cfg.seq_len == 32 and cfg.threads == 2
    _, cfg = parse_args(["generate", "--seed", "KING", "--temperature", "0"], "x")
    assert cfg.seed == "KING" and cfg.temperature == 0.0 and cfg.top_k == 3


@pytest.mark.parametrize("argv", [["train", "--seq-len", "0"], ["train", "--batch-size", "-1"],
                                  ["train", "--rnn-size", "x"], ["generate", "--length", "-5"],
                                  ["train", "--vocab", "bytes"]])
def test_parser_refuses_bad_sizes(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        parse_args(argv, "x")
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "error" in err


def test_variant_rows_pick_their_class(monkeypatch):
    from charrnn.common import registry
    from charrnn.common.paths import default_checkpoint_path, slug

    class Plain:
        framework = "demo"

    class Idiomatic(Plain):
        framework = "demo[idiom]"

    monkeypatch.delenv(registry.VARIANT_ENV, raising=False)
    assert registry.pick_variant(Plain, {"idiom": Idiomatic}) is Plain
    monkeypatch.setenv(registry.VARIANT_ENV, "idiom")
    assert registry.pick_variant(Plain, {"idiom": Idiomatic}) is Idiomatic
    monkeypatch.setenv(registry.VARIANT_ENV, "other")
    with pytest.raises(KeyError, match="has: idiom"):
        registry.pick_variant(Plain, {"idiom": Idiomatic})
    # A plain row's child process never inherits a variant from its parent.
    entry = registry.Entry("demo", "demo_model", "modern", "demo")
    assert registry.VARIANT_ENV not in entry.process_env()
    variant = registry.Entry("demo[idiom]", "demo_model", "modern", "demo", variant="idiom")
    assert variant.process_env()[registry.VARIANT_ENV] == "idiom"
    assert slug("demo[idiom]") == "demo-idiom"
    assert default_checkpoint_path("demo[idiom]").name == "demo-idiom_model"


def test_step_time_stats_flag_stalls():
    from charrnn.common.train import step_time_stats
    stats = step_time_stats([0.1] * 98 + [0.2, 5.9])
    assert stats["step_s_median"] == pytest.approx(0.1)
    assert stats["step_s_max"] == pytest.approx(5.9)
    assert stats["stalls"] == 1  # 5.9 s > 5 x the median; 0.2 s is not a stall
    assert stats["step_s_p90"] == pytest.approx(0.1)
    assert step_time_stats([])["stalls"] == 0


def test_thread_flags_and_one_step_commands():
    assert threads_from_argv(["train", "--threads", "2"]) == 2
    assert threads_from_argv(["generate", "--threads=0"]) is None
    assert one_step_command(["generate", "--threads", "2"])
    assert one_step_command(["repl"])
    assert not one_step_command(["train", "generate"]) and not one_step_command([])
