"""Generation and the repl, written once: any framework's one-step logits + `common.sampling`.

    python pytorch_model.py generate --seed "KING" --length 200 --temperature 0.8
    echo "ROMEO:" | python jax_model.py repl
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TextIO

import numpy as np

from charrnn.common.checkpoint import find_portable
from charrnn.common.config import PRETRAINED_MODELS, GenerateConfig, OptimConfig
from charrnn.common.errors import CharRnnError
from charrnn.common.fileio import atomic_write_text
from charrnn.common.framework import CharRNN
from charrnn.common.paths import PRETRAINED_PATH, default_checkpoint_path, pretrained_path
from charrnn.common.sampling import Sampler, check_sampling
from charrnn.common.text import Vocab, default_corpus_path, read_text
from charrnn.common.weights import Portable, load_portable

# The warm-up that gives generation a realistic starting state (see Generator.warm_state).
WARMUP_MIN_CHARS, WARMUP_MAX_CHARS, WARMUP_SEED = 50, 500, 0
# Uniforms are drawn this many steps at a time: rng.random((n, k)) gives the same numbers
# as n calls of rng.random(k), one call instead of one a character.
UNIFORM_CHUNK = 1024


class Generator:
    """Seeded text generation from a built model and its vocabulary."""

    def __init__(self, model: CharRNN, vocab: Vocab, warm_start: bool = True):
        self.model, self.vocab, self.warm_start = model, vocab, warm_start
        self._warm: tuple[np.ndarray, np.ndarray] | None = None
        self.chars = vocab.to_list()  # id -> character ("" for the unknown id 0)
        self.sampler_s = 0.0  # seconds the last `generate` spent sampling and decoding

    def check_seed(self, seed: str) -> np.ndarray:
        if not seed:
            raise CharRnnError("the seed text is empty")
        unknown = self.vocab.unknown_chars(seed)
        if unknown:
            raise CharRnnError(f"seed text has characters outside the model's vocabulary: "
                               f"{''.join(unknown)!r}")
        return self.vocab.encode(seed)

    def warm_state(self) -> tuple[np.ndarray, np.ndarray]:
        """(h, c) of one row, each (num_layers, 1, rnn_size): the state at a paragraph break.

        Training carries the state across every batch (docs/SPEC.md section 3), so a trained
        model has seen the all-zero state only at its very first batch, and from it
        the first characters are close to noise (the pretrained model continues
        "KING" with "TVKVKK..."). So, once per model: start from zeros, feed "\n",
        sample the model's own text (fixed seed, top-3) until it ends a paragraph
        ("\n\n" after at least 50 characters, at most 500), and start every
        generation from that state. Deterministic, and the same in every framework.
        """
        if self._warm is None:
            state = self.model.zero_state(1)
            if self.warm_start and "\n" in self.vocab.index:
                uniforms = np.random.default_rng(WARMUP_SEED).random((WARMUP_MAX_CHARS, 1))
                sampler = Sampler(1.0, 3)
                last, text = self.vocab.encode("\n"), ""
                for u in uniforms:
                    logits, state = self.model.step(last, state)
                    last = sampler(logits, u)
                    text += self.chars[last[0]]
                    if len(text) >= WARMUP_MIN_CHARS and text.endswith("\n\n"):
                        break
            # One step through `steps` too, its result dropped: a framework that runs the
            # loop in its own graph builds that graph here, before any clock, as the
            # compiled frameworks compiled their step in the loop above.
            first = np.zeros(1, np.int32)
            self.model.steps(first, self.model.zero_state(1), 1, lambda logits, t: first)
            self._warm = self.model.state_to_numpy(state)
        return self._warm

    def generate(self, seed: str, length: int, rng: np.random.Generator, *,
                 temperature: float = 1.0, top_k: int = 3, top_p: float = 1.0,
                 num_samples: int = 1,
                 on_chars: Callable[[list[str]], None] | None = None) -> list[str]:
        """`num_samples` continuations of `seed`, generated together as one batch.

        From the warm state, the seed primes the state (all but its last character,
        through the one-step path: a `forward` over a new seed length would be a new
        compilation in the compiled frameworks, timed as generation), then each step
        feeds the last character and samples the next; all of it one `CharRNN.steps`,
        which may run the loop inside the framework's graph. `on_chars` receives each step's
        characters, one per sample, as they come. Returns the generated texts (without the seed).
        """
        sampler = Sampler(temperature, top_k, top_p)
        seed_ids = self.check_seed(seed)
        ids = np.tile(seed_ids, (num_samples, 1)).astype(np.int32)  # (num_samples, len(seed))
        h, c = self.warm_state()
        state = self.model.state_from_numpy(np.repeat(h, num_samples, axis=1),
                                            np.repeat(c, num_samples, axis=1))
        prime = ids.shape[1] - 1  # steps that feed the seed's next character, unsampled
        out: list[list[str]] = [[] for _ in range(num_samples)]
        self.sampler_s = 0.0
        uniforms = np.empty((0, num_samples))

        def choose(logits: np.ndarray, step: int) -> np.ndarray:
            """The ids fed after step `step` (`CharRNN.steps`): the seed's, then sampled."""
            nonlocal uniforms
            if step < prime:
                return ids[:, step + 1]
            t = step - prime
            if t % UNIFORM_CHUNK == 0:
                uniforms = rng.random((min(UNIFORM_CHUNK, length - t), num_samples))
            start = time.perf_counter()
            chosen = sampler(logits, uniforms[t % UNIFORM_CHUNK])  # (num_samples,) int32
            chars = [self.chars[i] for i in chosen.tolist()]
            self.sampler_s += time.perf_counter() - start
            for sample_out, ch in zip(out, chars):
                sample_out.append(ch)
            if on_chars is not None:
                on_chars(chars)
            return chosen

        self.model.steps(ids[:, 0], state, prime + length, choose)
        return ["".join(chars) for chars in out]


@dataclass
class Loaded:
    generator: Generator
    portable: Portable
    source: str  # what the user is told about the weights


def load_for_generation(model_cls: type[CharRNN], checkpoint_path: str | None, device: str,
                        threads: int | None, warm_start: bool = True,
                        model: str | None = None) -> Loaded:
    """Build the model from a checkpoint directory or any framework's portable file, or
    the shipped model named `model` (--model).

    With neither: this framework's default checkpoint if it exists, else the pretrained
    model shipped in pretrained/.
    """
    if model is not None:
        if model not in PRETRAINED_MODELS:
            raise CharRnnError(f"no shipped model {model!r}: choose from "
                               f"{', '.join(PRETRAINED_MODELS)}")
        path = pretrained_path(model)
        if not path.exists():
            raise CharRnnError(f"--model {model}: {path} is not there (a checkout without "
                               "the shipped models?)")
        source = f"the shipped pretrained model {model!r} ({path.name})"
    elif checkpoint_path is not None:
        path = find_portable(checkpoint_path)
        if not Path(checkpoint_path).exists() and not path.exists():
            raise CharRnnError(f"{checkpoint_path}: no such checkpoint or portable file")
        source = str(path)
    else:
        path = find_portable(default_checkpoint_path(model_cls.framework))
        source = str(path)
        if not path.exists():
            path = PRETRAINED_PATH
            if not path.exists():
                raise CharRnnError(
                    f"no checkpoint at {default_checkpoint_path(model_cls.framework)} and no "
                    f"pretrained model at {PRETRAINED_PATH}: train first or pass "
                    "--checkpoint-path")
            source = f"the shipped pretrained model {path.relative_to(path.parents[1])}"
    portable = load_portable(path)
    meta = portable.metadata
    if meta.get("framework"):
        val_loss = meta.get("val_loss")
        val_loss = f"{float(val_loss):.4f}" if val_loss else "n/a"
        source += (f" (trained by {meta['framework']} {meta.get('framework_version', '')}, "
                   f"{_trained_for(meta)}, val loss {val_loss})")
    resolved = model_cls.setup_device(device, threads)
    model = model_cls(portable.config, portable.weights, OptimConfig(), device=resolved)
    return Loaded(Generator(model, portable.vocab, warm_start), portable, source)


def _trained_for(meta: dict[str, str]) -> str:
    """How long a portable file's model trained, from its metadata: "3 epochs", "1 epoch
    and 11 batches (step 40)", or "11 batches (step 11)" for part of a first epoch."""
    epochs, batch, step = (meta.get(key, "") for key in ("epoch", "batch", "step"))
    if not epochs.isdigit():
        return "epochs unknown"
    done = f"{epochs} epoch{'' if epochs == '1' else 's'}" if epochs != "0" else ""
    if batch.isdigit() and batch != "0":
        part = f"{batch} batch{'' if batch == '1' else 'es'}"
        done = f"{done} and {part}" if done else part
    return f"{done or '0 epochs'}" + (f" (step {step})" if step.isdigit() else "")


def samples_text(seed: str, texts: list[str]) -> str:
    """Several samples as `generate` prints them: each under a `--- sample k ---` line,
    its seed and its text."""
    return "".join(f"--- sample {k + 1} ---\n{seed}{text}\n" for k, text in enumerate(texts))


def pick_seed(cfg: GenerateConfig, rng: np.random.Generator, seq_len: int = 64) -> str:
    """--seed, else a random seq_len-character slice of --text-path (or the default corpus)."""
    if cfg.seed is not None:
        return cfg.seed
    text = read_text(cfg.text_path or default_corpus_path())
    start = int(rng.integers(0, max(1, len(text) - seq_len)))
    return text[start:start + seq_len]


def run_generate(model_cls: type[CharRNN], cfg: GenerateConfig, out: TextIO | None = None,
                 err: TextIO | None = None) -> list[str]:
    """The `generate` command: stream one sample to `out` as it is made, or print each of
    --num-samples after the batch finishes; a timing line goes to `err`."""
    check_sampling(cfg.temperature, cfg.top_k, cfg.top_p)
    loaded = load_for_generation(model_cls, cfg.checkpoint_path, cfg.device, cfg.threads,
                                 not cfg.cold_start, cfg.model)
    return generate_from(loaded.generator, loaded.source, cfg, out, err)


def generate_from(generator: Generator, source: str, cfg: GenerateConfig,
                  out: TextIO | None = None, err: TextIO | None = None) -> list[str]:
    """What `generate` does once the model is loaded (`source` says what from), the timing
    line included: also the benchmark's onnxruntime row's (benchmarks.onnx_row), whose
    generator drives an exported step graph."""
    out, err = out or sys.stdout, err or sys.stderr
    check_sampling(cfg.temperature, cfg.top_k, cfg.top_p)
    print(f"using {source}", file=err, flush=True)
    rng = np.random.default_rng(cfg.random_seed)
    seed = pick_seed(cfg, rng)
    generator.check_seed(seed)
    stream = cfg.num_samples == 1

    first_char_s = None

    def on_chars(chars: list[str]) -> None:
        nonlocal first_char_s
        if first_char_s is None:
            first_char_s = time.perf_counter() - start
        if stream:
            out.write(chars[0])
            out.flush()

    generator.warm_state()  # once per model, before the clock: not part of the rate
    if stream:
        out.write(seed)
        out.flush()
    start = time.perf_counter()
    texts = generator.generate(
        seed, cfg.length, rng, temperature=cfg.temperature, top_k=cfg.top_k, top_p=cfg.top_p,
        num_samples=cfg.num_samples, on_chars=on_chars)
    duration_s = time.perf_counter() - start
    if stream:
        shown = seed + texts[0] + "\n"
        out.write("\n")
    else:
        shown = samples_text(seed, texts)
        out.write(shown)
    out.flush()
    if cfg.output:
        atomic_write_text(cfg.output, shown)  # exactly what stdout showed
    # The benchmark parses this line; the rate counts every sample's characters, the
    # first step (which includes any compilation) is also reported on its own, and so is
    # the time the shared sampler and decoding took (the framework's share is the rest).
    total = cfg.length * cfg.num_samples
    print(f"generated {total} characters in {duration_s:.3f} s "
          f"({total / duration_s if duration_s else 0:.1f} chars/s; "
          f"first step {first_char_s or 0:.3f} s; "
          f"sampler {generator.sampler_s:.3f} s)", file=err, flush=True)
    return texts


REPL_SETTINGS = {"temperature": float, "top_k": int, "top_p": float, "length": int,
                 "num_samples": int}
REPL_ALIASES = {"top_n": "top_k"}  # the original suite's name
REPL_HELP = ("type a seed and press enter; settings: "
             + ", ".join(f":{name} VALUE" for name in REPL_SETTINGS) + "; :quit to exit")
HISTORY_PATH = Path.home() / ".charrnn_history"  # the repl's lines, as ~/.python_history


def run_repl(model_cls: type[CharRNN], cfg: GenerateConfig, inp: TextIO | None = None,
             out: TextIO | None = None, err: TextIO | None = None) -> None:
    """Read a line, print its completion(s), loop until end of input, :quit or Ctrl-C.

    At a terminal the line is edited and remembered by the standard library's
    readline (the arrows, Ctrl-R; kept in ~/.charrnn_history); a changed setting is
    confirmed on stderr. --num-samples N prints N completions of each line, generated
    as one batch (one streams as it is made)."""
    inp, out, err = inp or sys.stdin, out or sys.stdout, err or sys.stderr
    check_sampling(cfg.temperature, cfg.top_k, cfg.top_p)
    loaded = load_for_generation(model_cls, cfg.checkpoint_path, cfg.device, cfg.threads,
                                 not cfg.cold_start, cfg.model)
    interactive = inp.isatty() and inp is sys.stdin
    print(f"using {loaded.source}", file=err, flush=True)
    history = _LineHistory() if interactive else None
    if interactive:
        print(REPL_HELP, file=err, flush=True)
    rng = np.random.default_rng(cfg.random_seed)
    settings = cfg
    try:
        while True:
            try:
                line = input("> ") if history is not None else inp.readline()
            except (KeyboardInterrupt, EOFError):
                break
            if history is None and not line:
                break
            line = line.rstrip("\n")
            if line.startswith(":"):
                try:
                    changed = _repl_command(line, settings)
                except CharRnnError as exc:
                    print(f"error: {exc}", file=err, flush=True)
                    continue
                if changed is None:
                    break
                for name in REPL_SETTINGS:
                    if getattr(changed, name) != getattr(settings, name):
                        print(f"{name} = {getattr(changed, name)}", file=err, flush=True)
                settings = changed
                continue
            if not line:
                continue
            try:
                loaded.generator.check_seed(line)
            except CharRnnError as exc:
                print(f"error: {exc}", file=err, flush=True)
                continue
            _complete(loaded.generator, line, settings, rng, out)
    finally:
        if history is not None:
            history.save()
            err.write("\n")


def _complete(generator: Generator, line: str, settings: GenerateConfig,
              rng: np.random.Generator, out: TextIO) -> None:
    """The repl's completion(s) of `line`: one streamed, or each of num_samples after the
    batch, under a `--- sample k ---` line as `generate` prints them."""
    stream = settings.num_samples == 1
    if stream:
        out.write(line)
        out.flush()
    try:
        texts = generator.generate(
            line, settings.length, rng, temperature=settings.temperature,
            top_k=settings.top_k, top_p=settings.top_p, num_samples=settings.num_samples,
            on_chars=(lambda chars: (out.write(chars[0]), out.flush())) if stream else None)
    except KeyboardInterrupt:
        texts = None
    if stream or texts is None:
        out.write("\n")
    else:
        out.write(samples_text(line, texts))
    out.flush()


class _LineHistory:
    """readline's line editing and a history file, where the platform has readline."""

    def __init__(self):
        try:
            import readline
        except ImportError:  # no readline here: plain input() still works
            self.readline = None
            return
        self.readline = readline
        readline.set_history_length(1000)
        try:
            readline.read_history_file(HISTORY_PATH)
        except OSError:  # none yet, or unreadable: start empty
            pass

    def save(self) -> None:
        if self.readline is not None:
            try:
                self.readline.write_history_file(HISTORY_PATH)
            except OSError:  # a read-only home: the history is not worth an error
                pass


def _repl_command(line: str, settings: GenerateConfig) -> GenerateConfig | None:
    """Apply `:name value`; None for :quit."""
    parts = line[1:].split()
    if not parts or parts[0] in ("quit", "exit", "q"):
        return None if parts else settings
    name = parts[0].replace("-", "_")
    name = REPL_ALIASES.get(name, name)
    if name == "help":
        raise CharRnnError(REPL_HELP)
    if name not in REPL_SETTINGS or len(parts) != 2:
        raise CharRnnError(f"unknown command {line!r}; {REPL_HELP}")
    kind = REPL_SETTINGS[name].__name__
    try:
        value = REPL_SETTINGS[name](parts[1])
    except ValueError:
        raise CharRnnError(f":{name} needs a{'n' if kind[0] in 'aeiou' else ''} {kind}"
                           ) from None
    new = replace(settings, **{name: value})
    check_sampling(new.temperature, new.top_k, new.top_p)
    if new.length < 0:
        raise CharRnnError(":length must be >= 0")
    if new.num_samples < 1:
        raise CharRnnError(":num_samples must be >= 1")
    return new
