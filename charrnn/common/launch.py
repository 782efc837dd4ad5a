"""Start a data-parallel world of N processes on this machine, for any framework.

    python -m charrnn.common.launch --nproc 2 jax_model.py train --batch-size 64
    torchrun --nproc-per-node 2 pytorch_model.py train --batch-size 64   # the same, PyTorch's way

PyTorch has torchrun; JAX and TensorFlow leave starting the processes to the user (or
to Slurm). This does what torchrun does on one machine and nothing more: it sets
torchrun's variables (WORLD_SIZE, RANK, LOCAL_RANK, MASTER_ADDR, MASTER_PORT, which
`common.distributed.world_from_env` reads for every framework), runs the same command
in each process, passes SIGINT, SIGTERM and SIGHUP on to all of them, and when one
fails stops the others after a grace period. Its exit status is the first failure's.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time

GRACE_S = 30.0  # after a rank fails, how long the others get to notice and exit themselves


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def world_env(rank: int, nproc: int, port: int) -> dict[str, str]:
    """torchrun's variables for `rank` of a one-machine world of `nproc`."""
    return {"WORLD_SIZE": str(nproc), "RANK": str(rank), "LOCAL_RANK": str(rank),
            "LOCAL_WORLD_SIZE": str(nproc), "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port)}


def launch(command: list[str], nproc: int, port: int | None = None,
           env: dict[str, str] | None = None) -> int:
    """Run `command` as ranks 0..nproc-1; returns 0, or the first failing rank's status."""
    port = port or free_port()
    base = dict(os.environ if env is None else env)
    procs = [subprocess.Popen(command, env={**base, **world_env(rank, nproc, port)})
             for rank in range(nproc)]

    def forward(signum, frame):
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signum)

    previous = {sig: signal.signal(sig, forward)
                for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        status, failed_at = 0, None
        while any(proc.poll() is None for proc in procs):
            for proc in procs:
                code = proc.poll()
                if code and not status:
                    status, failed_at = code, time.monotonic()
            if failed_at is not None and time.monotonic() - failed_at > GRACE_S:
                for proc in procs:
                    if proc.poll() is None:
                        proc.kill()
            time.sleep(0.05)
        for proc in procs:
            if proc.returncode and not status:
                status = proc.returncode
        return status if status >= 0 else 128 - status  # killed by a signal: 128 + signum
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m charrnn.common.launch",
        description="Run one training command as N data-parallel processes on this machine.")
    parser.add_argument("--nproc", type=int, required=True, help="number of processes")
    parser.add_argument("--port", type=int, default=None,
                        help="rank 0's rendezvous port (default: a free one)")
    parser.add_argument("script", help="a <framework>_model.py")
    parser.add_argument("args", nargs=argparse.REMAINDER, help="its command and flags")
    args = parser.parse_args(argv)
    if args.nproc < 1:
        parser.error(f"--nproc {args.nproc} must be >= 1")
    sys.exit(launch([sys.executable, args.script, *args.args], args.nproc, args.port))


if __name__ == "__main__":
    main()
