"""Data-parallel training across processes and machines, through accelerate.

`accelerate launch … -m ti train-embedding …` starts one process per device; each loads the
model, caches every image's latents and holds the same trained tensors. Every optimizer step:

- the step's global micro-batch has batch_size × num_processes samples; process r takes samples
  r·batch_size … (r+1)·batch_size − 1 of it. Each sample's noise, timestep and template line come
  from a generator seeded by (seed, step, micro-batch, index in the global micro-batch) (seeds.py),
  so the split changes nothing: two processes with batch 1 each compute exactly the samples one
  process with batch 2 would;
- after the backward passes the gradients are averaged over the processes (one all-reduce), so
  every process takes the same optimizer step and the tensors stay identical;
- the loss, the NaN check and the stop request are decided once for all (averaged, or the main
  process's answer broadcast), so no process stops alone and leaves the others waiting;
- only the main process writes: the trained file, copies, previews, the loss CSV and settings.

On one process (no launcher, or a single device) SINGLE_PROCESS does nothing at all. The
collectives are accelerate's (`accelerate.utils.reduce`, `broadcast`, `broadcast_object_list`,
`gather_object`) over torch.distributed, set up by accelerate's PartialState: NCCL between GPUs,
gloo between CPU processes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch import nn

from ti.errors import TrainingError


@dataclass
class DataParallel:
    """Which process this is, of how many, and the few collectives the loop needs.

    The base class is the single-process case: every collective is the identity.
    """

    num_processes: int = 1
    process_index: int = 0
    device: torch.device | None = None  # this process's device, as the launcher assigned it

    @property
    def is_main(self) -> bool:
        """Only the main process writes files and shows progress."""
        return self.process_index == 0

    @property
    def is_distributed(self) -> bool:
        return self.num_processes > 1

    def share(self, global_batch_size: int) -> slice:
        """This process's positions in a global micro-batch of global_batch_size samples."""
        per_process = global_batch_size // self.num_processes
        return slice(self.process_index * per_process, (self.process_index + 1) * per_process)

    def mean_gradients(self, parameters: list[nn.Parameter]) -> None:
        """Average the parameters' gradients over the processes, in place (see AccelerateParallel)."""

    def mean(self, values: list[float]) -> list[float]:
        """Each value averaged over the processes."""
        return list(values)

    def main_decides(self, value: bool) -> bool:
        """The main process's value, on every process (e.g. 'stop now': only main has the UI/Ctrl-C)."""
        return value

    def same_everywhere(self, value: object, what: str) -> None:
        """Raise TrainingError unless every process has the same value (e.g. the start step)."""

    def copy_from_main(self, parameters: list[nn.Parameter]) -> None:
        """Overwrite the parameters with the main process's (so all processes start identical)."""


SINGLE_PROCESS = DataParallel()


class AccelerateParallel(DataParallel):
    """The collectives of a run started by `accelerate launch` with more than one process."""

    def __init__(self, state):
        super().__init__(num_processes=state.num_processes, process_index=state.process_index, device=state.device)

    def mean_gradients(self, parameters: list[nn.Parameter]) -> None:
        """One all-reduce over every gradient, flattened, plus a flag per parameter saying whether
        it got a gradient at all: a parameter that got one on any process gets the mean (where a
        process had none, it counts as zeros, exactly as samples that do not reach it in a single
        process's batch); one that got none anywhere keeps None, so the optimizer skips it as it
        would on one process."""
        from accelerate.utils import reduce

        if not parameters:
            return
        device = parameters[0].device
        flat_parts, has_gradient = [], []
        for parameter in parameters:
            gradient = parameter.grad
            has_gradient.append(1.0 if gradient is not None else 0.0)
            flat_parts.append((gradient if gradient is not None else torch.zeros_like(parameter)).reshape(-1).float())
        flat_parts.append(torch.tensor(has_gradient, device=device))
        averaged = reduce(torch.cat(flat_parts), reduction="mean")
        offset = 0
        flags = averaged[-len(parameters):]
        for index, parameter in enumerate(parameters):
            count = parameter.numel()
            if float(flags[index]) > 0:
                parameter.grad = averaged[offset:offset + count].view_as(parameter).to(parameter.dtype)
            else:
                parameter.grad = None
            offset += count

    def mean(self, values: list[float]) -> list[float]:
        from accelerate.utils import reduce

        tensor = torch.tensor(values, dtype=torch.float64, device=self.device)
        return [float(value) for value in reduce(tensor, reduction="mean")]

    def main_decides(self, value: bool) -> bool:
        from accelerate.utils import broadcast_object_list

        return bool(broadcast_object_list([value], from_process=0)[0])

    def same_everywhere(self, value: object, what: str) -> None:
        from accelerate.utils import gather_object

        values = gather_object([value])
        if len(set(map(repr, values))) > 1:
            raise TrainingError(f"the {self.num_processes} training processes disagree about {what} "
                                f"({', '.join(map(str, values))}): every machine must see the same files, "
                                f"e.g. on a shared folder")

    def copy_from_main(self, parameters: list[nn.Parameter]) -> None:
        from accelerate.utils import broadcast

        with torch.no_grad():
            for parameter in parameters:
                parameter.copy_(broadcast(parameter.detach().clone(), from_process=0))


def launched_processes() -> int:
    """How many processes the launcher (accelerate launch, torchrun, mpirun) started: 1 without one."""
    for variable in ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE"):
        value = os.environ.get(variable, "")
        if value.isdigit():
            return int(value)
    return 1


def launcher_mixed_precision() -> str | None:
    """"bf16" or "fp16" when accelerate launch was told so (`--mixed_precision`, or its config
    file); None otherwise. Its "no" is not taken as float32: that is accelerate's default, and
    would quietly turn off half precision on GPUs."""
    value = os.environ.get("ACCELERATE_MIXED_PRECISION", "").lower()
    return value if value in ("bf16", "fp16") else None


def data_parallel_from_environment(device: str | None = None) -> DataParallel:
    """SINGLE_PROCESS, or the accelerate state of a multi-process launch (which joins the process
    group: every process must call this). `device` is the --device flag: "cpu" (or no CUDA on this
    machine) makes the processes talk over gloo on the CPU."""
    if launched_processes() <= 1:
        return SINGLE_PROCESS
    from accelerate import PartialState

    on_cpu = ((device or "").startswith("cpu") or not torch.cuda.is_available()
              or os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes"))
    state = PartialState(cpu=on_cpu)
    if state.num_processes <= 1:
        return SINGLE_PROCESS
    return AccelerateParallel(state)
