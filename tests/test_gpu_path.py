"""The GPU path on a machine without one: device binding from launcher
environments, GPU memory checks against a mocked ``mem_get_info``,
initialisation on a device equal to the host's, and the CUDA-only checks,
which skip with the reason where torch sees no GPU."""

import pytest
import torch

from reference.distributed import runtime
from reference.distributed.gpu_binding import check_distinct, gpu_index
from reference.distributed.launch import LaunchError, detect

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device: torch sees no GPU here")


# --- device binding --------------------------------------------------------------------


def srun_env(rank, tasks=8, gpu=None):
    """srun --ntasks-per-node=8 --gpus-per-task=1: SLURM shows each task only its own GPU."""
    env = {"SLURM_PROCID": str(rank), "SLURM_STEP_NUM_TASKS": str(tasks), "SLURM_LOCALID": str(rank),
           "SLURM_STEP_TASKS_PER_NODE": str(tasks), "SLURM_JOB_NODELIST": "gpu01", "SLURM_JOB_ID": "9"}
    if gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = gpu
    return env


@pytest.mark.parametrize("rank", range(8))
def test_srun_gpus_per_task_each_rank_takes_its_one_visible_gpu(rank):
    env = srun_env(rank, gpu=str(rank))
    info = detect(env)
    assert info.local_world_size == 8
    assert gpu_index("cuda", info.rank, info.local_rank, info.local_world_size, 1,
                     env["CUDA_VISIBLE_DEVICES"]) == 0


@pytest.mark.parametrize("local_rank", range(8))
def test_one_node_with_eight_visible_gpus_binds_by_local_rank(local_rank):
    env = {"RANK": str(8 + local_rank), "WORLD_SIZE": "16", "LOCAL_RANK": str(local_rank),
           "LOCAL_WORLD_SIZE": "8", "MASTER_ADDR": "n0"}
    info = detect(env)
    assert gpu_index("cuda", info.rank, info.local_rank, info.local_world_size, 8, None) == local_rank
    assert gpu_index("cuda", info.rank, info.local_rank, info.local_world_size, 8, "0,1,2,3,4,5,6,7") == local_rank


def test_cuda_n_names_the_gpu_of_a_single_process():
    assert gpu_index("cuda:3", 0, 0, 1, 4, None) == 3
    assert gpu_index("cuda", 0, 0, 1, 4, None) == 0
    assert gpu_index("cuda:0", 0, 0, 1, 1, "5") == 0   # the one GPU CUDA_VISIBLE_DEVICES=5 shows
    with pytest.raises(LaunchError, match=r"device=cuda:4 but only 4 GPU\(s\) are visible .*0\.\.3"):
        gpu_index("cuda:4", 0, 0, 1, 4, None)
    # One rank per machine of a multi-machine job: cuda:N still names its GPU.
    assert gpu_index("cuda:2", 5, 0, 1, 8, None) == 2


def test_cuda_n_with_several_ranks_per_machine_is_refused_not_ignored():
    with pytest.raises(LaunchError, match="device=cuda:1 names one GPU, but 4 ranks run on this machine"):
        gpu_index("cuda:1", 2, 2, 4, 4, None)


@pytest.mark.parametrize("visible, env", [(2, None), (2, "0,1"), (1, None)])
def test_too_few_gpus_is_a_clear_error_not_ranks_stacked_on_one(visible, env):
    # mpirun -np 4 on a machine showing 2 GPUs (or 1, to everyone): local_rank % gpus would share them.
    with pytest.raises(LaunchError, match=rf"rank 3 \(local rank 3 of 4\): 4 ranks on this machine but "
                                          rf"{visible} GPU\(s\) visible"):
        gpu_index("cuda", 3, 3, 4, visible, env)
    with pytest.raises(LaunchError, match="no GPU is visible"):
        gpu_index("cuda", 0, 0, 1, 0, "")


def test_ranks_stacked_on_one_gpu_by_a_wrapper_are_named():
    check_distinct([(0, "a", "GPU-1"), (1, "a", "GPU-2"), (2, "b", "GPU-1")])  # same UUID, other host: fine
    with pytest.raises(LaunchError, match=r"ranks 1 and 3 were bound to the same GPU \(GPU-2 on a\)"):
        check_distinct([(0, "a", "GPU-1"), (1, "a", "GPU-2"), (3, "a", "GPU-2")])


def test_single_process_cuda_n_sets_the_current_device(monkeypatch):
    calls = []
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: calls.append(d))
    cfg = runtime.Config()
    cfg.device = "cuda:2"  # validate() would refuse it without a GPU; the binding itself is what is tested
    assert runtime.bind_device(cfg, env={}) == torch.device("cuda", 2)
    assert calls == [torch.device("cuda", 2)]
