"""Where and how a training process runs: device, mixed precision, and data parallelism.

One process trains on one device. Under ``torchrun --nproc_per_node=N -m fiqnn ...``
each of the N processes (ranks) is one replica, and :func:`setup` joins them into a
process group (gloo on CPU, NCCL on CUDA). The rules a run follows then:

- **Data.** ``--batch-size`` is the *global* batch. Every rank draws the same global
  batch a single process would draw (same seed, same order, same augmentation) and
  keeps every N-th image of it (``batch / N`` images), as ``DistributedSampler`` would,
  but in the single-process order: the images a step sees do not depend on N
  (:func:`fiqnn.data.batches` with ``rank`` and ``world``). On image folders each rank
  reads only its own images.
- **Gradients.** The trained modules are wrapped in ``DistributedDataParallel``, which
  averages gradients over ranks: every rank takes the same optimizer step, so the
  weights stay equal. BatchNorm statistics are each rank's own (on its slice of the
  batch; CPU has no SyncBatchNorm); before every validation rank 0's buffers are
  broadcast, so all ranks validate one network.
- **Decisions.** Validation (and test) accuracy is counted by every rank on its share
  of the images and the counts are summed across ranks: every rank gets the same
  number, so the PTL scheduler's decisions (best epoch, patience, stage advance) agree
  by construction. At the end of every phase the ranks compare a digest of their
  weights; a mismatch is an error, not a silent drift.
- **Files.** Rank 0 alone writes the run directory (config, log, metrics,
  checkpoints, model files) and shows progress bars.

Mixed precision (``amp``) runs the training forward pass under bfloat16 autocast
(no loss scaling needed); validation, calibration, the exact integer student and
everything after training stay in float32/float64 and integers.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import nn

from ._io import content_digest
from .errors import ConfigError

DEVICES = ("cpu", "cuda")


@dataclass(frozen=True)
class Runtime:
    """This process's device, precision, and place (``rank`` of ``world``) among the ranks."""

    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    amp: bool = False
    rank: int = 0
    world: int = 1
    channels_last: bool = False  # NHWC weights and activations (faster depthwise convs on CPU)

    @property
    def main(self) -> bool:
        """Rank 0: the process that writes files and logs."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1

    def check_batch(self, batch_size: int) -> None:
        if batch_size % self.world:
            raise ConfigError(f"batch size {batch_size} (the global batch) does not split over {self.world} "
                              f"processes; pass a multiple of {self.world}")

    def place(self, module: nn.Module) -> nn.Module:
        """``module`` on this device, its 4-D weights channels-last when ``channels_last`` is on
        (the activations follow the weights' layout through every convolution)."""
        if self.channels_last:
            return module.to(self.device, memory_format=torch.channels_last)
        return module.to(self.device)

    def to_device(self, t: torch.Tensor) -> torch.Tensor:
        return t.to(self.device, non_blocking=True) if self.device.type != "cpu" else t

    def sum(self, *values: float) -> list[float]:
        """Each value summed over all ranks (every rank gets the same result)."""
        if not self.distributed:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64, device=self._comm_device)
        dist.all_reduce(t)
        return t.tolist()

    def wrap(self, module: nn.Module) -> nn.Module:
        """``module`` as DistributedDataParallel across the ranks (itself in one process)."""
        if not self.distributed:
            return module
        ids = [self.device.index] if self.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(module, device_ids=ids)

    def autocast(self) -> contextlib.AbstractContextManager:
        """bfloat16 autocast for a training forward pass when ``amp`` is on."""
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp)

    def sync_buffers(self, modules: list[nn.Module]) -> None:
        """Give every rank rank 0's buffers (BatchNorm running statistics)."""
        if self.distributed:
            for m in modules:
                for b in m.buffers():
                    dist.broadcast(b.data, 0)

    def check_same(self, modules: list[nn.Module], what: str) -> None:
        """Raise if the ranks' parameters and buffers differ (compared by SHA-256 digest)."""
        if not self.distributed:
            return
        word = int(content_digest([m.state_dict() for m in modules])[:14], 16)  # 56 bits: fits int64
        lo = torch.tensor([word], dtype=torch.int64, device=self._comm_device)
        hi = lo.clone()
        dist.all_reduce(lo, dist.ReduceOp.MIN)
        dist.all_reduce(hi, dist.ReduceOp.MAX)
        if lo.item() != hi.item():
            raise RuntimeError(f"{what}: the {self.world} ranks hold different weights (rank {self.rank} "
                               f"digest {word:014x}); data-parallel training has diverged")

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    @property
    def _comm_device(self) -> torch.device:
        return self.device if self.device.type == "cuda" else torch.device("cpu")


def setup(device: str = "cpu", amp: bool = False, channels_last: bool = False) -> Runtime:
    """The runtime of this process; under torchrun (``WORLD_SIZE`` > 1 in the environment)
    joins the process group first (NCCL for ``cuda``, gloo for ``cpu``).

    Raises:
        ConfigError: an unknown device, or ``cuda`` without a visible CUDA device.
    """
    if device not in DEVICES:
        raise ConfigError(f"unknown device {device!r}; choose one of {', '.join(DEVICES)}")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if device == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("--device cuda: torch sees no CUDA device (is this a CPU build of torch?)")
        dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(dev)
        # Validation of the student runs its exact integer path; keep float32 math true float32.
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    else:
        dev = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo", rank=rank, world_size=world)
    return Runtime(dev, amp, rank, world, channels_last)


def teardown(ok: bool = True) -> None:
    """Leave the process group (if this process joined one).

    After a clean run (``ok``) the ranks first meet at a barrier, so they leave together:
    rank 0 still writes the run's files after the last collective, and a rank that
    destroyed its gloo connections and exited while rank 0 was still at work was seen to
    abort (SIGABRT, "terminate called without an active exception") once in CI. After an
    error there is no barrier (a failed rank never arrives; torchrun stops the others).
    """
    if dist.is_initialized():
        if ok:
            dist.barrier()
        dist.destroy_process_group()
