"""What a benchmark run records: one JSON line per run and per framework, and nothing else.

    >>> machine_slug({"cpu": "Intel(R) Xeon(R) Platinum 8375C CPU @ 2.90GHz", "cores": 8,
    ...               "isa": ["avx2", "avx512f"]})
    'intel-xeon-platinum-8375c-avx512-8core'

`records.jsonl` holds a "run" record (settings, machine, load average), then one
"framework" record per framework and repeat (and sweep point: its "point" field,
benchmarks.sweep; and data-parallel world: its "world_size" field, the scaling
profile), appended as each finishes (with the
matmul peak measured right before and right after it, its load average at start
and end, its training log's header and epochs, and its generation timings); the
report reads only this file. Records are meant to be committed (the reference
results), so they name no directory of the machine: a path inside the checkout is
written relative to it, a path outside it (the corpus in $CHARRNN_DATA_DIR, a
temporary directory) by its file name only, and the hostname is not recorded.
Standard library only.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import re
import signal
import subprocess
from pathlib import Path

from benchmarks.sweep import point_key
from charrnn.common.logs import read_jsonl
from charrnn.common.paths import ROOT

RECORDS_NAME = "records.jsonl"
# A user's runs: ignored by git, one directory per profile.
RESULTS_ROOT = ROOT / "benchmarks" / "results"
# The committed reference results docs/RESULTS.md shows: <machine slug>/<profile>/, written
# only by `make reference-results` (python -m benchmarks.report DIR --reference).
REFERENCE_ROOT = ROOT / "benchmarks" / "reference"


# ---------------------------------------------------------------------------------------
# Portable values
# ---------------------------------------------------------------------------------------


def portable(path) -> str:
    """`path` relative to the checkout when inside it, else its file name (see above).

    Anything that is not an absolute path (a flag, a number) comes back unchanged, so
    this can map every word of a command.
    """
    p = Path(path)
    if not p.is_absolute():
        return str(path)
    try:
        return p.relative_to(ROOT).as_posix()
    except ValueError:
        return p.name


def now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def loadavg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


# ---------------------------------------------------------------------------------------
# The machine
# ---------------------------------------------------------------------------------------


def _proc_field(path: str, key: str) -> str | None:
    """The value of the first `key:` line of a /proc file, if there is one."""
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith(key):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


# The vector and matrix extensions that decide which kernels a framework can reach (as
# /proc/cpuinfo names them), and the kind of CPU they make, best first: a reference is
# published per kind (machine_slug), since the ranking of the frameworks moves between them.
ISA_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16")
ISA_TIERS = (("amx", "amx_bf16"), ("avx512bf16", "avx512_bf16"), ("avx512", "avx512f"),
             ("avx2", "avx2"))


def machine_info() -> dict:
    """CPU (model, family and model numbers, ISA extensions), core counts, memory and OS (no
    hostname: records are committed)."""
    mem_kb = _proc_field("/proc/meminfo", "MemTotal")
    flags = set((_proc_field("/proc/cpuinfo", "flags") or "").split())
    return {"cpu": _proc_field("/proc/cpuinfo", "model name") or platform.processor() or None,
            "cpu_family": _proc_field("/proc/cpuinfo", "cpu family"),
            "cpu_model": _proc_field("/proc/cpuinfo", "model\t"),
            "isa": [f for f in ISA_FLAGS if f in flags],
            "cores": os.cpu_count(), "usable_cores": len(os.sched_getaffinity(0)),
            "memory_gb": round(int(mem_kb.split()[0]) / 1024 ** 2, 1) if mem_kb else None,
            "os": platform.platform(), "machine": platform.machine(),
            "runner_python": platform.python_version()}


def isa_tier(machine: dict) -> str | None:
    """The best of ISA_TIERS this machine has ("amx", "avx512bf16", "avx512", "avx2"); None
    for a record made before machines recorded their extensions."""
    isa = machine.get("isa")
    if isa is None:
        return None
    return next((tier for tier, flag in ISA_TIERS if flag in isa), "base")


def machine_slug(machine: dict) -> str:
    """The reference directory of a machine kind: CPU model, its best ISA tier and core
    count, as one lowercase word ("AMD EPYC" with AVX-512, 2 cores ->
    "amd-epyc-avx512-2core"); trademarks, "CPU" and the clock are left out. Records from
    before the tier was recorded give no tier ("amd-epyc-2core")."""
    cpu = re.sub(r"\((R|TM)\)|\bCPU\b|\bProcessor\b|@.*", " ", machine.get("cpu") or "unknown",
                 flags=re.IGNORECASE)
    words = re.sub(r"[^a-z0-9]+", "-", cpu.lower()).strip("-")
    tier = isa_tier(machine)
    return f"{words}{'-' + tier if tier else ''}-{machine.get('cores') or 0}core"


def git_info() -> dict:
    def git(*args):
        try:
            out = subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True,
                                 timeout=30)
            return out.stdout.strip() if out.returncode == 0 else None
        except (OSError, subprocess.SubprocessError):
            return None
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": git("rev-parse", "HEAD"),
            "dirty": bool(status) if status is not None else None}


# ---------------------------------------------------------------------------------------
# Building records
# ---------------------------------------------------------------------------------------


def run_record(**fields) -> dict:
    """The "run" record: `fields` (settings, peak, ...) plus the machine, git and load."""
    return {"kind": "run", "started": now(), **fields, "machine": machine_info(),
            "git": git_info(), "loadavg": loadavg()}


def framework_record(name: str, repeat: int, env: str, script, python, **fields) -> dict:
    """A framework record as it starts: status "ok" until something fails."""
    return {"kind": "framework", "framework": name, "repeat": repeat, "status": "ok",
            "stage": None, "error": None, "env": env, "script": portable(script),
            "python": portable(python), **fields}


def skipped_record(name: str, env: str, script, python, reason: str) -> dict:
    record = framework_record(name, 0, env, script, python, finished=now())
    record.update(status="skipped", error=reason)
    return record


def record_failure(record: dict, stage: str, proc, stderr_line: str, timeout_s: float | None,
                   why_if_exit_0: str) -> None:
    """Mark `record` failed (or timed out) at `stage`, with the reason a user can act on.

    `proc` is the child's `Finished`; `stderr_line` the last line it printed.
    """
    record["status"] = "timeout" if proc.timed_out else "failed"
    record["stage"] = stage
    last = f" (last stderr line: {stderr_line})" if stderr_line else ""
    if proc.timed_out:
        why = f"timed out after {timeout_s:.0f} s{last}"
    elif proc.returncode is not None and proc.returncode < 0:  # a signal: its last line is not why
        why = exit_reason(proc.returncode) + last
    elif proc.returncode == 0:
        why = why_if_exit_0
    else:
        why = stderr_line or exit_reason(proc.returncode)
    # A child's message may name a file of the checkout by its absolute path (records are
    # committed: see above).
    record["error"] = why.replace(f"{ROOT}/", "")


def exit_reason(returncode: int | None) -> str:
    """"exit status 1", or for a child killed by a signal its name, with the usual cause of
    a SIGKILL nobody sent: the kernel's out-of-memory killer."""
    if returncode is None or returncode >= 0:
        return f"exit status {returncode}"
    try:
        name = signal.Signals(-returncode).name
    except ValueError:
        name = f"signal {-returncode}"
    return f"killed by {name}" + (" (out of memory?)" if -returncode == signal.SIGKILL else "")


def run_key(framework: str, point: str = "") -> str:
    """What a framework's run is known by in progress estimates: its name, and its cell,
    sweep point and world size (`where_key`: "pytorch rnn256-batch64", "pytorch w2")."""
    return f"{framework} {point}" if point else framework


def run_seconds(record: dict) -> float | None:
    """Wall-clock seconds of a framework record, start to finish (whole seconds)."""
    try:
        return (datetime.datetime.fromisoformat(record["finished"])
                - datetime.datetime.fromisoformat(record["started"])).total_seconds()
    except (KeyError, TypeError, ValueError):
        return None


def session_choice(record: dict) -> str | None:
    """An engine row's session options, as chosen for each number of streams: "1 stream:
    1 intra-op thread, optimisation all; 64 streams: ..."; None for other rows."""
    session = record.get("session")
    chosen = session.get("chosen") if isinstance(session, dict) else None
    if not chosen:
        return None
    return "; ".join(f"{n} stream{'s' if n != '1' else ''}: {c['intra_op_threads']} intra-op "
                     f"thread{'s' if c['intra_op_threads'] != 1 else ''}, optimisation "
                     f"{c['optimization']}" for n, c in chosen.items())


def finish(record: dict) -> dict:
    record["finished"] = now()
    record["loadavg_end"] = loadavg()
    return record


# ---------------------------------------------------------------------------------------
# The file
# ---------------------------------------------------------------------------------------


def append_record(path: Path, record: dict) -> None:
    """One JSON line, flushed to disk before the next framework starts."""
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record, ensure_ascii=False, default=str) + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_records(path: Path) -> list[dict]:
    """The records of `path`; none when it does not exist yet."""
    return read_jsonl(path) if path.exists() else []


def where_key(cell: str | None, point: str = "", world_size: int | None = None) -> str:
    """What sets a framework's run apart besides its name and repeat: the cell of a run
    over --cells, the point of a sweep and the world size of a scaling run ("gru",
    "rnn256-batch64", "gru rnn256-batch64", "w2"); "" for a run of the default LSTM
    alone."""
    return " ".join(filter(None, (cell or "", point, f"w{world_size}" if world_size else "")))


def record_where(record: dict) -> str:
    """`where_key` of a framework record."""
    return where_key(record.get("cell"), point_key(record), record.get("world_size"))


def done_runs(records: list[dict]) -> set[tuple[str, int, str]]:
    """(framework, repeat, `where_key`) of the runs already finished: ok, failed or timed
    out (not skipped)."""
    return {(r["framework"], r.get("repeat", 0), record_where(r)) for r in records
            if r.get("kind") == "framework" and r.get("status") in ("ok", "failed", "timeout")}


def record_runs(records: list[dict]) -> list[dict | None]:
    """The run record of each record: the last "run" record before it (None before any). A
    run's framework records follow its run record, and so do those of a merged file
    (benchmarks.report DIR DIR ...: the directories' records one after the other), so each
    framework record keeps the machine it was measured on."""
    out, run = [], None
    for r in records:
        if r.get("kind") == "run":
            run = r
        out.append(run)
    return out


def record_machines(records: list[dict]) -> list[str | None]:
    """The machine of each record: `machine_slug` of its run record (record_runs)."""
    return [None if run is None else machine_slug(run.get("machine") or {})
            for run in record_runs(records)]


def bf16_units(machine: dict) -> str | None:
    """What a machine has for bf16 products, as its ISA list says: "AMX" (its matrix
    tiles), "AVX512-BF16" (bf16 dot products in the vector units), or "" for neither (a
    framework then emulates them, in float32 arithmetic); None for a record made before
    machines recorded their extensions."""
    isa = machine.get("isa")
    if isa is None:
        return None
    return "AMX" if "amx_bf16" in isa else "AVX512-BF16" if "avx512_bf16" in isa else ""


def previous_settings(records: list[dict]) -> dict | None:
    runs = [r for r in records if r.get("kind") == "run"]
    return runs[0].get("settings") if runs else None
