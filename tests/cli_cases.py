"""Run CLI invocations of one framework and report exit codes and output.

In-process (`run_cases`) when this process can import the framework, else as a
worker in the framework's own environment, one process for all cases:

    python -m tests.cli_cases keras[jax] CASES.json   # prints one JSON list

Each case is an argv list for `<framework>_model.py`, optionally with stdin
text; the result has `code`, `stdout`, `stderr` and `exception` (the traceback
of anything that escaped `main`, which must never happen).
"""

from __future__ import annotations

import contextlib
import io
import json
import sys
import traceback
from pathlib import Path

from charrnn.common.cli import main


class _Stdin(io.StringIO):
    def isatty(self):
        return False


def run_case(model_cls, argv: list[str], stdin: str = "") -> dict:
    out, err = io.StringIO(), io.StringIO()
    code, exception = 0, None
    old_stdin = sys.stdin
    sys.stdin = _Stdin(stdin)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            main(model_cls, argv)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
        if isinstance(exc.code, str):
            err.write(exc.code + "\n")
    except BaseException:  # any escape is a test failure, reported whole
        code, exception = 1, traceback.format_exc()
    finally:
        sys.stdin = old_stdin
    return {"argv": argv, "code": code, "stdout": out.getvalue(), "stderr": err.getvalue(),
            "exception": exception}


def run_cases(model_cls, cases: list[dict]) -> list[dict]:
    return [run_case(model_cls, case["argv"], case.get("stdin", "")) for case in cases]


if __name__ == "__main__":
    from charrnn.common import registry
    cases = json.loads(Path(sys.argv[2]).read_text())
    print(json.dumps(run_cases(registry.load(sys.argv[1]), cases)))
