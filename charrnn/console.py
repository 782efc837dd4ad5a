"""The `charrnn` command (and `python -m charrnn`): every framework's command line in one.

    charrnn generate --seed "KING"                      # the NumPy reference (default)
    charrnn train --framework jax --text-path my.txt    # --framework anywhere on the line
    charrnn --framework keras[torch] repl
    charrnn serve --port 8000                           # the web page (docs/WEB.md)

The same commands and flags as `python <framework>_model.py` (docs/SPEC.md section 6),
plus `--framework NAME`; and `serve` (charrnn.serve), which needs no framework. Standard
library only until the framework is chosen: thread counts go into the environment before
NumPy or the framework loads.
"""

from __future__ import annotations

import os
import sys

from charrnn.common import registry
from charrnn.common.bootstrap import early_setup

DEFAULT_FRAMEWORK = "numpy"
USAGE = f"""usage: charrnn [--framework NAME] {{train,generate,repl,export}} [flags]
       charrnn serve [--port PORT] [--host HOST]

One character-level language model in every framework (char-rnn-bench).
--framework NAME   which framework runs the command (default {DEFAULT_FRAMEWORK}): {{names}}
serve              the model in a web page, served over HTTP (docs/WEB.md)
`charrnn COMMAND --help` lists the command's flags.
"""


def pop_framework(argv: list[str]) -> tuple[str | None, list[str]]:
    """(the --framework value or None, argv without it); a missing value is an error."""
    rest, framework = [], None
    args = iter(argv)
    for arg in args:
        if arg == "--framework":
            framework = next(args, None)
            if framework is None:
                _fail("--framework needs a value")
        elif arg.startswith("--framework="):
            framework = arg.split("=", 1)[1]
        else:
            rest.append(arg)
    return framework, rest


def _fail(message: str) -> None:
    print(f"charrnn: error: {message} (see --help)", file=sys.stderr)
    sys.exit(2)


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["serve"]:  # the page runs the model in the browser: no framework here
        from charrnn.serve import main as serve
        serve(argv[1:])
        return
    framework, argv = pop_framework(argv)
    framework = framework or DEFAULT_FRAMEWORK
    if framework not in registry.FRAMEWORKS:
        _fail(f"unknown framework {framework!r}; choose from {', '.join(registry.names())}")
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE.replace("{names}", ", ".join(registry.names())), end="")
        sys.exit(0 if argv else 2)
    entry = registry.FRAMEWORKS[framework]
    # The backend of this row (Keras'); a variant row's class comes from registry.load,
    # so CHARRNN_VARIANT, which the scripts read, must not pick one again.
    os.environ.update(entry.env_vars)
    os.environ.pop(registry.VARIANT_ENV, None)
    early_setup(entry.module)  # may re-execute under the framework's environment
    from charrnn.common.cli import main as run
    try:
        model_cls = registry.load(framework)
    except registry.Unavailable as exc:
        _fail(f"framework {framework}: {exc}")
    run(model_cls, argv, prog="charrnn")


if __name__ == "__main__":
    main()
