"""Every framework by name, imported lazily, so a missing one is skipped with a reason.

    >>> sorted(FRAMEWORKS)[:3]
    ['chainer', 'jax', 'keras[jax]']

A name maps to its script, the environment that has its libraries, and any
environment variables it needs set before import (Keras picks its backend
from KERAS_BACKEND, the Keras way). A variant row ("chainer[nstep]") is a second
implementation in the same file, in its `VARIANTS` dict: the idiomatic API where the
plain name is the fastest conformant path. Its script picks it from CHARRNN_VARIANT.
Standard library only: `charrnn.common.bootstrap` reads it before a framework file imports
anything heavy.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from charrnn.common.paths import IN_CHECKOUT, PACKAGE, ROOT, env_python, slug

VARIANT_ENV = "CHARRNN_VARIANT"  # which of a script's VARIANTS its command line runs


@dataclass(frozen=True)
class Entry:
    name: str  # "pytorch", "keras[jax]"
    module: str  # "pytorch_model"
    env: str  # "modern", "legacy" or "any" (numpy runs in both)
    requires: str  # the import that tells whether this environment can run it
    env_vars: dict[str, str] = field(default_factory=dict)
    variant: str | None = None  # a key of the module's VARIANTS; None: its MODEL
    # Trains data-parallel under a launcher (docs/SPEC.md section 11); the others refuse
    # with a line saying what it would take (`CharRNN.data_parallel_refusal`).
    data_parallel: bool = False
    # The package extra that installs its libraries (`pip install char-rnn-bench[torch]`);
    # None: none does (Chainer and MXNet need the legacy environment's NumPy 1.x).
    extra: str | None = None

    @property
    def script(self) -> Path:
        return ROOT / f"{self.module}.py"

    @property
    def slug(self) -> str:
        """A directory name: "keras[jax]" -> "keras-jax"."""
        return slug(self.name)

    def python(self) -> Path:
        """The interpreter of this framework's environment (paths.env_python)."""
        return env_python(self.env)

    def process_env(self) -> dict[str, str]:
        """os.environ plus this entry's variables (and its variant, or none), for a
        subprocess running its script."""
        env = {**os.environ, **self.env_vars}
        env.pop(VARIANT_ENV, None)
        if self.variant:
            env[VARIANT_ENV] = self.variant
        return env


def _keras(backend: str) -> Entry:
    # Only the JAX backend trains data-parallel (keras.distribution.DataParallel).
    return Entry(f"keras[{backend}]", "keras_model", "modern", "keras",
                 {"KERAS_BACKEND": backend}, data_parallel=backend == "jax", extra="keras")


FRAMEWORKS: dict[str, Entry] = {e.name: e for e in [
    Entry("numpy", "numpy_model", "any", "safetensors"),  # common/ needs it too
    Entry("pytorch", "pytorch_model", "modern", "torch", data_parallel=True, extra="torch"),
    Entry("tensorflow", "tf_model", "modern", "tensorflow", data_parallel=True,
          extra="tensorflow"),
    _keras("tensorflow"),
    _keras("jax"),
    _keras("torch"),
    Entry("jax", "jax_model", "modern", "flax", data_parallel=True, extra="jax"),
    Entry("pytensor", "pytensor_model", "modern", "pytensor", extra="pytensor"),
    Entry("chainer", "chainer_model", "legacy", "chainer"),
    Entry("chainer[nstep]", "chainer_model", "legacy", "chainer", variant="nstep"),
    Entry("mxnet", "mxnet_model", "legacy", "mxnet"),
]}


class Unavailable(Exception):
    """This framework cannot run in this process; the message says why."""


def unavailable_reason(name: str) -> str | None:
    """Why `name` cannot be imported in this process, or None if it can."""
    entry = FRAMEWORKS[name]
    if importlib.util.find_spec(entry.requires) is None:
        if IN_CHECKOUT:
            where = f"the {entry.env} environment has it: make setup"
        elif entry.extra:
            where = f"pip install 'char-rnn-bench[{entry.extra}]'"
        else:
            where = "it needs NumPy 1.x: see requirements/legacy.txt in the repository"
        return f"{entry.requires} is not installed in this environment ({where})"
    for key, value in entry.env_vars.items():
        if os.environ.get(key, value) != value:
            return f"this process has {key}={os.environ[key]}, {name} needs {value}"
        if key == "KERAS_BACKEND" and "keras" in sys.modules:
            loaded = sys.modules["keras"].backend.backend()
            if loaded != value:
                return f"keras is already loaded with the {loaded} backend in this process"
    return None


def load(name: str):
    """The CharRNN subclass of framework `name`, importing its module now.

    Raises Unavailable (with the reason) when this process cannot run it.
    """
    if name not in FRAMEWORKS:
        raise Unavailable(f"unknown framework {name!r}; known: {', '.join(FRAMEWORKS)}")
    reason = unavailable_reason(name)
    if reason:
        raise Unavailable(reason)
    entry = FRAMEWORKS[name]
    for key, value in entry.env_vars.items():
        os.environ[key] = value
    quiet_import(entry.requires)
    try:
        module = importlib.import_module(f"charrnn.frameworks.{entry.module}")
    except ImportError as exc:
        raise Unavailable(f"{entry.module} failed to import: {exc}") from exc
    return module.VARIANTS[entry.variant] if entry.variant else module.MODEL


def declared_precisions(entry: Entry) -> tuple[str, ...]:
    """The --precision values `entry`'s class declares (`CharRNN.precisions`), read from its
    source file without importing it: the benchmark plans a row per framework and
    precision in a process that may not be able to import the framework (Chainer and MXNet
    live in the legacy environment, and importing TensorFlow takes seconds). The class is
    the module's MODEL (or its VARIANTS entry); the attribute is looked up through its
    bases in the same module, then CharRNN's default, fp32 alone. A name in the tuple is a
    constant of common.config (FP32, BF16_MIXED). A module not in charrnn/frameworks/ (a
    test's script) declares fp32."""
    from charrnn.common import config

    path = PACKAGE / "frameworks" / f"{entry.module}.py"
    if not path.is_file():
        return (config.FP32,)
    tree = ast.parse(path.read_text(encoding="utf-8"))
    classes = {n.name: n for n in tree.body if isinstance(n, ast.ClassDef)}
    name = _module_class_name(tree, entry.variant)

    def value(node: ast.expr) -> str:
        return node.value if isinstance(node, ast.Constant) else getattr(config, node.id)

    seen = set()
    while name in classes and name not in seen:
        seen.add(name)
        for node in classes[name].body:
            target = node.targets[0] if isinstance(node, ast.Assign) else getattr(
                node, "target", None)
            if isinstance(target, ast.Name) and target.id == "precisions" and node.value:
                if isinstance(node.value, ast.Name):  # precisions = PRECISIONS
                    return tuple(getattr(config, node.value.id))
                return tuple(value(e) for e in node.value.elts)
        bases = [b.id for b in classes[name].bases if isinstance(b, ast.Name)]
        name = next((b for b in bases if b in classes), None)
    return (config.FP32,)


def _module_class_name(tree: ast.Module, variant: str | None) -> str | None:
    """The class name a framework module's MODEL = ... (or VARIANTS = {variant: ...}) names."""
    for node in tree.body:
        if not (isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name)):
            continue
        if variant is None and node.targets[0].id == "MODEL" and isinstance(node.value,
                                                                             ast.Name):
            return node.value.id
        if variant is not None and node.targets[0].id == "VARIANTS" and isinstance(
                node.value, ast.Dict):
            for key, cls in zip(node.value.keys, node.value.values):
                if isinstance(key, ast.Constant) and key.value == variant:
                    return cls.id if isinstance(cls, ast.Name) else None
    return None


def pick_variant(model_cls, variants: dict | None):
    """The class a script's command line runs: `model_cls`, or the variant that
    CHARRNN_VARIANT names (set by `Entry.process_env`). Raises KeyError with the
    choices when the name is unknown."""
    name = os.environ.get(VARIANT_ENV)
    if not name:
        return model_cls
    if not variants or name not in variants:
        raise KeyError(f"{VARIANT_ENV}={name}: {model_cls.framework} has no such variant "
                       f"(it has: {', '.join(variants or {}) or 'none'})")
    return variants[name]


def entry_of_module(module: str) -> Entry:
    """The (first) entry whose script is `module`; the Keras rows share one."""
    for entry in FRAMEWORKS.values():
        if entry.module == module:
            return entry
    raise KeyError(f"{module} is not a registered framework module")


def names(env: str | None = None) -> list[str]:
    """Registered names, optionally only those of one environment ("any" counts for both)."""
    return [n for n, e in FRAMEWORKS.items() if env is None or e.env in (env, "any")]


# Frameworks whose native libraries print banners on stderr at import, below Python
# (TensorFlow's oneDNN notice ignores TF_CPP_MIN_LOG_LEVEL): imported with fd 2 muted.
QUIET_IMPORTS = ("tensorflow", "keras")


def quiet_import(module: str) -> None:
    """Import framework library `module` without its start-up banners on stderr, where
    it prints them (QUIET_IMPORTS); any other module is left to its first import."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's start-up chatter
    if module in QUIET_IMPORTS:
        _quiet_import(module)


def _quiet_import(module: str) -> None:
    """Import `module` with file descriptor 2 pointed at /dev/null.

    A failure is swallowed here: the framework file imports the module again right
    after, and that import raises the error with stderr intact.
    """
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        importlib.import_module(module)
    except Exception:  # reported by the real import that follows
        pass
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)
