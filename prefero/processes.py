"""The processes a pipeline stage runs on, and how it shares its work among them.

`prefero generate|judge|revise|eval` run as one process, or as several under a launcher
(`accelerate launch` / `torchrun`, `WORLD_SIZE` > 1), where accelerate sets up the process
group (gloo on CPU, one GPU per process on CUDA). Work is cut into batches by input
position, the same batches for any number of processes; process p takes batches p, p+P,
p+2P, ... and appends its rows to its own partial file, and process 0 merges them in input
order (prefero.pipeline_io.StageOutput). A batch is also the unit a judge or a sampler sees
at once, so the rows do not depend on how many processes made them.
"""

from __future__ import annotations

import os
import socket
import sys
from dataclasses import dataclass
from typing import Any, Callable

from prefero.log import get_logger

log = get_logger(__name__)


@dataclass(frozen=True)
class Processes:
    """This process among the stage's: `rank` of `world`, the barrier they all enter
    together (None for one process) and the device this one computes on (None when the
    stage needs no torch)."""

    rank: int = 0
    world: int = 1
    barrier: Callable[[], None] | None = None
    device: Any = None

    @property
    def main(self) -> bool:
        return self.rank == 0

    def mine(self, batches: int) -> list[int]:
        """The batches (by position) this process works on."""
        return list(range(self.rank, batches, self.world))

    def pending(self, batches: list, done, key: Callable[[Any], Any] = lambda item: item) -> list[int]:
        """This process's batches (by position) that still hold an item whose `key` is not in
        `done`: what is left of its share after a resume."""
        return [b for b in self.mine(len(batches)) if any(key(item) not in done for item in batches[b])]

    def say(self, line: str) -> None:
        """A line on stdout from process 0 only (one per run, not one per process); stderr
        stays for the one line of an error."""
        if self.main:
            log.info(line)

    def describe(self) -> str:
        """'1 process' / '2 processes' and where they compute, for a run's first line."""
        where = f" on {self.device.type}" if getattr(self.device, "type", None) else ""
        return f"{self.world} process{'es' if self.world > 1 else ''}{where}"


def stage_processes(needs_torch: bool = True) -> Processes:
    """The processes of this run. Several only under a launcher (WORLD_SIZE > 1); a stage
    that computes nothing itself (a server's judge or sampler) and runs alone imports no torch."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        import torch
        from accelerate import PartialState

        state = PartialState(cpu=not torch.cuda.is_available())
        return Processes(state.process_index, state.num_processes, state.wait_for_everyone, state.device)
    if not needs_torch:
        return Processes()
    import torch

    return Processes(device=torch.device("cuda" if torch.cuda.is_available() else "cpu"))


def position_batches(total: int, size: int) -> list[list[int]]:
    """Positions 0..total-1 cut into batches of `size`, in order."""
    return [list(range(s, min(s + size, total))) for s in range(0, total, size)]


def launch_command(command: str, args, processes: int = 2, launcher_args=("--multi_gpu",)) -> list[str]:
    """The command line that runs `prefero COMMAND ARGS` as `processes` processes on this
    machine under `accelerate launch` (`--multi_gpu` runs torchrun: gloo on CPU, one GPU per
    process on CUDA), on a free local port; what the tests and benchmarks that compare N
    processes with one start."""
    accelerate = os.path.join(os.path.dirname(sys.executable), "accelerate")
    return [accelerate, "launch", "--num_processes", str(processes), "--num_machines", "1", "--mixed_precision",
            "no", "--dynamo_backend", "no", "--main_process_port", str(free_port()), *launcher_args,
            "-m", "prefero", command, *map(str, args)]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
