"""Which GPU a process uses, from the device asked for and the launcher's view.

Launchers expose GPUs in two ways: every rank of a machine sees all of them
(torchrun, plain mpirun), and takes the one of its local rank; or each rank
sees only its own (``srun --gpus-per-task=1``, ``--gpu-bind``, MPI wrappers
that set ``CUDA_VISIBLE_DEVICES`` per rank), and takes device 0. The choice
is a pure function of (device, local rank, local world size, visible GPUs)
so it is tested for every launcher without a GPU; :func:`check_distinct`
then catches, from the GPUs' UUIDs, ranks that a wrapper stacked on one GPU.
"""

from __future__ import annotations

from .launch import LaunchError


def parse_device(device: str) -> int | None:
    """The N of ``cuda:N``; None for plain ``cuda``."""
    return int(device[5:]) if device.startswith("cuda:") else None


def gpu_index(device: str, rank: int, local_rank: int, local_world_size: int, visible: int,
              cuda_visible_devices: str | None) -> int:
    """The CUDA device index (among the visible ones) this process binds to.

    ``visible`` is ``torch.cuda.device_count()``; ``cuda_visible_devices`` the
    variable as this process sees it (None: unset), for the decision between
    "one GPU per rank" and "one GPU for all" and for the error messages.
    """
    shown = "unset" if cuda_visible_devices is None else repr(cuda_visible_devices)
    where = f"rank {rank} (local rank {local_rank} of {local_world_size})"
    if visible < 1:
        raise LaunchError(f"{where}: device={device} but no GPU is visible (CUDA_VISIBLE_DEVICES {shown})")
    asked = parse_device(device)
    if asked is not None:
        if local_world_size > 1:
            raise LaunchError(f"{where}: device={device} names one GPU, but {local_world_size} ranks run on this "
                              f"machine; use device=cuda (each rank takes the GPU of its local rank, or the one "
                              f"GPU the launcher shows it)")
        if asked >= visible:
            raise LaunchError(f"{where}: device={device} but only {visible} GPU(s) are visible "
                              f"(CUDA_VISIBLE_DEVICES {shown}); GPUs are numbered 0..{visible - 1}")
        return asked
    if local_world_size == 1:
        return 0
    if visible >= local_world_size:
        return local_rank
    if visible == 1 and cuda_visible_devices is not None:
        return 0  # the launcher gave this rank its own GPU (check_distinct confirms they differ)
    raise LaunchError(f"{where}: {local_world_size} ranks on this machine but {visible} GPU(s) visible to each "
                      f"(CUDA_VISIBLE_DEVICES {shown}); every rank needs its own GPU: start at most {visible} "
                      f"ranks per machine, or let the launcher give each rank one (srun --gpus-per-task=1)")


def check_distinct(bound: list[tuple[int, str, str]]) -> None:
    """``bound``: (rank, host, GPU UUID) of every rank. Two ranks on one GPU
    would contend for its memory (and NCCL refuses them): name them."""
    owner: dict[tuple[str, str], int] = {}
    for rank, host, uuid in sorted(bound):
        other = owner.setdefault((host, uuid), rank)
        if other != rank:
            raise LaunchError(f"ranks {other} and {rank} were bound to the same GPU ({uuid} on {host}); the "
                              f"launcher's CUDA_VISIBLE_DEVICES gives them one GPU: give each rank its own")
