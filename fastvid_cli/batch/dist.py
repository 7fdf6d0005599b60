"""Data-parallel batch runs (`torchrun --nproc_per_node N` / `accelerate launch`): this process's place in the run,
and the shard file each process appends to (merged into the output, in CSV order, by the main process).
"""

from __future__ import annotations

import datetime
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DIST_TIMEOUT_S = 7 * 24 * 3600


@dataclass
class Dist:
    """This process's place in a data-parallel run (torchrun / accelerate launch); world 1 = a plain run."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    state: Any = None  # accelerate PartialState when world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.state is None or self.world <= 1:
            return
        import torch.distributed as td

        if td.is_initialized() and td.get_backend() == "gloo":
            # accelerate's wait_for_everyone passes device_ids=[local rank] whenever CUDA is visible; a CPU run with
            # more processes than GPUs then names a GPU that does not exist ("invalid device ordinal", seen with
            # 2 processes on a 1-GPU host). A gloo barrier needs no device.
            td.barrier()
        else:
            self.state.wait_for_everyone()

    def device(self, device: str) -> str:
        """The device this process loads onto: cuda:<local rank> on GPUs, else cpu."""
        if self.world <= 1:
            return device
        return "cpu" if _wants_cpu(device) else f"cuda:{self.local_rank}"


def _wants_cpu(device: str) -> bool:
    from fastvid_cli.models.loading import resolve_device

    d = device.strip().lower()
    return d == "cpu" or (d == "auto" and resolve_device("auto") == "cpu")


def init_dist(device: str) -> Dist:
    """A Dist from the launcher's environment: WORLD_SIZE > 1 starts accelerate's PartialState (cpu=True, hence
    gloo, when running on CPU)."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    except ValueError:
        world = 1
    if world <= 1:
        return Dist()
    from accelerate import PartialState

    # The closing barrier waits for the slowest process, which can be hours behind on a big batch: the default
    # collective timeout (10-30 min) would kill a healthy run. A crashed process is torchrun's to handle.
    state = PartialState(cpu=_wants_cpu(device), timeout=datetime.timedelta(seconds=DIST_TIMEOUT_S))
    return Dist(rank=state.process_index, world=state.num_processes, local_rank=state.local_process_index,
                state=state)


def shard_path(output: Path, rank: int, world: int) -> Path:
    """The file process `rank` of `world` appends to, next to `output`."""
    return output.with_name(f"{output.name}.rank{rank}-of-{world}")


def shard_files(output: Path) -> list[Path]:
    """Every shard file of `output`, whatever the number of processes that wrote it, in a stable order."""
    pat = re.compile(re.escape(output.name) + r"\.rank(\d+)-of-(\d+)$")
    found = []
    if output.parent.is_dir():
        for p in output.parent.iterdir():
            m = pat.match(p.name)
            if m and p.is_file():
                found.append((int(m.group(2)), int(m.group(1)), p))
    return [p for *_, p in sorted(found)]

