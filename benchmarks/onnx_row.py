"""The onnxruntime row of the benchmark: an inference engine, measured as the frameworks'
generation is. Two commands, each a child process of the runner (benchmarks.child):

    python -m benchmarks.onnx_row prepare --init-from init.safetensors --out RUN_DIR \\
        --threads 2 --num-samples 1,64 --text-path tinyshakespeare.txt --random-seed 42
    python -m benchmarks.onnx_row generate --intra-op-threads 1 --optimization all \\
        --checkpoint-path RUN_DIR/model.step.onnx --length 1024 --num-samples 64 ...

`prepare` exports the run's initial weights to ONNX (charrnn.common.onnx_export: the
sequence graph and, beside it, the step graph that generation runs), then measures the
session options on the step graph, for each --num-samples: intra-op threads 1 and
--threads, graph optimisation basic, extended and all, each a `Generator` over a fresh
session (so that no idle session's threads spin beside the one measured) making
TUNE_CHARS characters from the warm state as `generate` does, the options taking turns
for TUNE_ROUNDS rounds; the fastest median is kept. It writes RUN_DIR/session.json (the
versions, the model, every measurement and the choice per --num-samples).

`generate` takes `generate`'s own flags (common.config.GenerateConfig) and the session
options, and runs the shared generation code (common.generate.generate_from: the warm
state, the seed, the sampler, the timing line the runner parses) with
`OnnxStepModel` in place of a framework's model. Generation does not depend on the
weights' values, so untrained weights time it as well as trained ones would; its text
is noise.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from charrnn.common import cli
from charrnn.common.config import GenerateConfig
from charrnn.common.errors import CharRnnError
from charrnn.common.generate import Generator, generate_from, pick_seed
from charrnn.common.onnx_export import step_path

OPTIMIZATIONS = ("basic", "extended", "all")  # onnx_export.session's graph optimisation levels
TUNE_CHARS = 16_384  # characters of one measurement, all streams (at most --length a stream)
TUNE_ROUNDS = 3  # the options take turns this many times; the median rate counts
SESSION_NAME = "session.json"  # what `prepare` writes beside the graphs
EXPORT_NAME = "model.onnx"  # the sequence graph
STEP_GRAPH = step_path(EXPORT_NAME).name  # the step graph beside it, which generation runs


def measure_options(step_graph: Path, threads: list[int], num_samples: int, seed: str,
                    cfg: GenerateConfig, chars: int = TUNE_CHARS,
                    rounds: int = TUNE_ROUNDS) -> list[dict]:
    """chars/s of generation with each session option (intra-op threads x optimisation
    level): `rounds` rounds, each option once a round in turn, each time a fresh session
    whose warm-up is not timed. A dict per option, its median rate and every round's."""
    from charrnn.common.onnx_export import OnnxStepModel

    length = max(1, min(cfg.length, chars // num_samples))
    options = [(t, level) for t in threads for level in OPTIMIZATIONS]
    rates: dict[tuple[int, str], list[float]] = {o: [] for o in options}
    for _ in range(rounds):
        for t, level in options:
            model = OnnxStepModel(step_graph, threads=t, optimization=level)
            generator = Generator(model, model.vocab, warm_start=not cfg.cold_start)
            generator.warm_state()
            rng = np.random.default_rng(cfg.random_seed)
            start = time.perf_counter()
            generator.generate(seed, length, rng, temperature=cfg.temperature,
                               top_k=cfg.top_k, top_p=cfg.top_p, num_samples=num_samples)
            rates[t, level].append(length * num_samples / (time.perf_counter() - start))
            del generator, model  # its session and threads, before the next is built
    return [{"num_samples": num_samples, "intra_op_threads": t, "optimization": level,
             "length": length, "chars_per_s": statistics.median(rates[t, level]),
             "rounds": rates[t, level]} for t, level in options]


def best_options(measured: list[dict]) -> dict[str, dict]:
    """The fastest option of each --num-samples: {"64": {"intra_op_threads": 1,
    "optimization": "all", "chars_per_s": ...}}."""
    best: dict[str, dict] = {}
    for m in measured:
        key = str(m["num_samples"])
        if key not in best or m["chars_per_s"] > best[key]["chars_per_s"]:
            best[key] = {k: m[k] for k in ("intra_op_threads", "optimization", "chars_per_s")}
    return best


def prepare(init_from: Path, out: Path, threads: int, samples: list[int],
            cfg: GenerateConfig) -> dict:
    """Export `init_from` to out/model.onnx (+ model.step.onnx), measure the session options
    for each of `samples`; what out/session.json holds."""
    import onnx
    import onnxruntime

    from charrnn.common.onnx_export import export_onnx
    from charrnn.common.weights import load_portable

    portable = load_portable(init_from)
    _, step_graph = export_onnx(out / EXPORT_NAME, portable)
    seed = pick_seed(cfg, np.random.default_rng(cfg.random_seed))
    thread_choices = sorted({1, threads})
    measured = [m for n in samples
                for m in measure_options(step_graph, thread_choices, n, seed, cfg)]
    return {"versions": {"onnxruntime": onnxruntime.__version__, "onnx": onnx.__version__},
            "python": platform.python_version(), "device": "cpu", "threads": threads,
            "model_config": json.loads(portable.config.to_json()),
            "num_params": portable.config.num_params(), "vocab_size": portable.vocab.size,
            "step_graph": STEP_GRAPH, "tune_rounds": TUNE_ROUNDS,
            "measured": measured, "chosen": best_options(measured)}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="python -m benchmarks.onnx_row",
                                     description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prepare", help="export the initial weights, measure session options")
    p.add_argument("--init-from", type=Path, required=True, help="portable .safetensors file")
    p.add_argument("--out", type=Path, required=True, help="the row's run directory")
    p.add_argument("--threads", type=int, default=1, help="the most intra-op threads tried")
    p.add_argument("--num-samples", default="1", help="streams to measure, e.g. 1,64")
    p.add_argument("--length", type=int, default=GenerateConfig.length,
                   help="characters a stream at most, as generate's --length")
    p.add_argument("--text-path", help="the seed's text, as generate's --text-path")
    p.add_argument("--random-seed", type=int, default=GenerateConfig.random_seed)
    g = sub.add_parser("generate", help="generate's flags, through an onnxruntime session",
                       add_help=False)
    g.add_argument("--intra-op-threads", type=int, default=1)
    g.add_argument("--optimization", choices=OPTIMIZATIONS, default="all")
    args, rest = parser.parse_known_args(argv)
    try:
        if args.command == "prepare":
            if rest:
                parser.error(f"unrecognized arguments: {' '.join(rest)}")
            cfg = GenerateConfig(text_path=args.text_path, length=args.length,
                                 random_seed=args.random_seed)
            samples = [int(n) for n in args.num_samples.split(",") if n.strip()]
            args.out.mkdir(parents=True, exist_ok=True)
            session = prepare(args.init_from, args.out, args.threads, samples, cfg)
            (args.out / SESSION_NAME).write_text(json.dumps(session, indent=1) + "\n")
            for key, choice in session["chosen"].items():
                print(f"{key} stream(s): intra-op threads {choice['intra_op_threads']}, "
                      f"optimization {choice['optimization']} "
                      f"({choice['chars_per_s']:,.0f} chars/s)", file=sys.stderr)
            return 0
        from charrnn.common.onnx_export import OnnxStepModel
        cfg = cli.parse_args(["generate", *rest], "python -m benchmarks.onnx_row generate")[1]
        if cfg.device == "gpu":
            raise CharRnnError("--device gpu: the onnxruntime row runs onnxruntime's CPU "
                               "provider only")
        model = OnnxStepModel(cfg.checkpoint_path, threads=args.intra_op_threads,
                              optimization=args.optimization)
        source = (f"{cfg.checkpoint_path} (onnxruntime, intra-op threads "
                  f"{args.intra_op_threads}, optimization {args.optimization})")
        generate_from(Generator(model, model.vocab, not cfg.cold_start), source, cfg)
        return 0
    except CharRnnError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
