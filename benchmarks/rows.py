"""The rows of the benchmark's tables: every framework of the registry in each precision
its class declares, and the inference engine that only generates.

    >>> row_name("pytorch", "bf16-mixed"), row_name("keras[jax]", "bf16-mixed")
    ('pytorch[bf16]', 'keras[jax,bf16]')
    >>> fp32_name("keras[jax,bf16]"), fp32_name("chainer[nstep]")
    ('keras[jax]', 'chainer[nstep]')

A framework row trains, then generates from what it trained (benchmarks.child). A bf16
row ("pytorch[bf16]") is its framework trained with `--precision bf16-mixed` (docs/SPEC.md
section 12). There is one for every framework whose class declares that precision
(`CharRNN.precisions`, read from its source by `registry.declared_precisions`), so a
framework that gains a bf16 path gains a row without an edit here. A bf16 row generates
nothing: generation runs in float32 from the float32 weights whatever the training
precision (section 12), which the framework's fp32 row already measures.

The inference engine row ("onnxruntime") trains nothing: it generates from the run's
initial weights exported to ONNX (charrnn.common.onnx_export), one stream and 64 streams
as the frameworks do, with the session options it measured fastest (benchmarks.onnx_row).
Standard library only.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from charrnn.common import registry
from charrnn.common.config import BF16_MIXED, FP32
from charrnn.common.paths import slug
from charrnn.common.registry import Entry

# The tag of a precision in a row's name ("pytorch[bf16]"); fp32 rows have none.
TAGS = {BF16_MIXED: "bf16"}
# Frameworks whose bf16-mixed path is an emulation in float32 arithmetic: no row unless
# --frameworks names it ("numpy[bf16]"), since its time is the emulation's, not bf16's.
EMULATED = {"numpy": "the reference emulates bf16-mixed exactly: every operand rounded by a "
                     "NumPy pass, then float32 GEMMs (docs/SPEC.md section 12)"}
# The engine: where its module is (its `script`, for the records), its environment and the
# import that tells whether that environment can run it.
ENGINE_MODULE = "benchmarks.onnx_row"
ENGINES = {"onnxruntime": Entry("onnxruntime", ENGINE_MODULE.replace(".", "/"), "modern",
                                "onnxruntime", extra="onnx")}


def row_name(framework: str, precision: str = FP32) -> str:
    """"pytorch", "pytorch[bf16]", "keras[jax,bf16]": the tag joins a variant's brackets."""
    if precision == FP32:
        return framework
    tag = TAGS[precision]
    return f"{framework[:-1]},{tag}]" if framework.endswith("]") else f"{framework}[{tag}]"


def fp32_name(name: str) -> str:
    """The fp32 row of a row's name: "pytorch[bf16]" -> "pytorch", "keras[jax,bf16]" ->
    "keras[jax]" (row_name the other way)."""
    for tag in TAGS.values():
        if name.endswith(f"[{tag}]"):
            return name[:-len(tag) - 2]
        if name.endswith(f",{tag}]"):
            return name[:-len(tag) - 2] + "]"
    return name


@dataclass(frozen=True)
class Row:
    """One row: a framework's entry in one precision, or an inference engine."""

    entry: Entry  # the framework it runs (registry); for an engine, its ENGINES entry
    precision: str = FP32  # --precision of its training (docs/SPEC.md section 12)
    engine: bool = False  # an inference engine: generates only, from the initial weights

    @property
    def name(self) -> str:
        return row_name(self.entry.name, self.precision)

    @property
    def slug(self) -> str:
        """A directory name: "keras[jax,bf16]" -> "keras-jax-bf16"."""
        return slug(self.name)

    @property
    def env(self) -> str:
        return self.entry.env

    @property
    def requires(self) -> str:
        return self.entry.requires

    @property
    def script(self) -> Path:
        return self.entry.script

    @property
    def data_parallel(self) -> bool:
        return self.entry.data_parallel and not self.engine

    def python(self) -> Path:
        return self.entry.python()

    def process_env(self) -> dict[str, str]:
        return self.entry.process_env()

    def generations(self, planned: tuple[int, ...]) -> tuple[int, ...]:
        """The --num-samples of the generations this row measures of a plan's `planned`:
        all of them, but none for a bf16 row (it would measure its fp32 row again)."""
        return planned if self.precision == FP32 else ()


def all_rows() -> dict[str, Row]:
    """Every row --frameworks can name: each framework in each precision it declares
    (the emulated ones too), then the engines."""
    rows = {}
    for entry in registry.FRAMEWORKS.values():
        for precision in registry.declared_precisions(entry):
            row = Row(entry, precision)
            rows[row.name] = row
    rows.update({name: Row(entry, engine=True) for name, entry in ENGINES.items()})
    return rows


def default_rows(precisions: tuple[str, ...] = (FP32,), paired: bool = False,
                 engines: tuple[str, ...] = (), data_parallel: bool = False) -> list[Row]:
    """A profile's rows without --frameworks: each framework in each of `precisions` it
    declares (not EMULATED ones), its fp32 row first and the others right after it, so
    that they run in the same minutes; with `paired` only the frameworks that declare
    every one of them (a comparison of precisions); with `data_parallel` only those with a
    data-parallel path; then the `engines`."""
    rows = []
    for entry in registry.FRAMEWORKS.values():
        if data_parallel and not entry.data_parallel:
            continue
        declared = [p for p in precisions if p in registry.declared_precisions(entry)
                    and (p == FP32 or entry.name not in EMULATED)]
        if paired and len(declared) < len(precisions):
            continue
        rows += [Row(entry, p) for p in declared]
    return rows + [Row(ENGINES[name], engine=True) for name in engines]


def select_rows(text: str) -> list[Row]:
    """The rows --frameworks names, comma-separated, in that order; one line for an unknown
    name (a precision its framework has no path for says so) or one named twice.

        >>> [r.name for r in select_rows("pytorch[bf16], keras[jax,bf16],onnxruntime")]
        ['pytorch[bf16]', 'keras[jax,bf16]', 'onnxruntime']
    """
    # Commas between names, not those inside a name's brackets ("keras[jax,bf16]").
    names = [n.strip() for n in re.split(r",(?![^\[\]]*\])", text) if n.strip()]
    known = all_rows()
    for name in names:
        if name in known:
            continue
        untagged = {row_name(e.name, p): e.name for e in registry.FRAMEWORKS.values()
                    for p in TAGS}
        if name in untagged:
            framework = untagged[name]
            declared = registry.declared_precisions(registry.FRAMEWORKS[framework])
            raise SystemExit(f"error: --frameworks {name}: {framework} has no "
                             f"{', '.join(p for p in TAGS if p not in declared)} path (its "
                             f"class declares {', '.join(declared)}: docs/FRAMEWORKS.md)")
        raise SystemExit(f"error: --frameworks: unknown {name}; known: {', '.join(known)}")
    if len(set(names)) != len(names):
        raise SystemExit("error: --frameworks: a framework is named twice")
    return [known[n] for n in names]
