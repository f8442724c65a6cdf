"""Running prefero under `accelerate launch` with 2 CPU processes, for the tests that check
N processes against one. `--cpu` would start a single process; `--multi_gpu` runs torchrun,
and prefero picks gloo on CPU. One intra-op thread per process: two processes share the
machine's cores."""

import os
import subprocess

from prefero.processes import launch_command

ONE_THREAD_ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def launch(command: str, args: list, launcher_args=("--multi_gpu",), processes: int = 2, check: bool = True):
    """`accelerate launch ... -m prefero COMMAND ARGS`; the finished process (asserted to
    have succeeded unless `check` is false)."""
    cmd = launch_command(command, args, processes, launcher_args)
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=ONE_THREAD_ENV)
    if check:
        assert r.returncode == 0, r.stderr[-3000:]
    return r
