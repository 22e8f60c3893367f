"""DLRMv2 over 2 gloo ranks on localhost equals one process: the cross
network data-parallel with the MLPs, the tables model-parallel with their
Adagrad state, on bags of the reference's per-table sizes, through the
trainer's own runtime (rendezvous, plan, reducer)."""

import torch
from test_dcn import BAG_SIZES
from test_distributed_units import run_ranks

from reference.config import Config
from reference.data.random_batches import RandomDataset, RandomSpec
from reference.distributed import runtime
from reference.distributed.launch import LaunchInfo
from reference.mlperf_log import MLPerfLogger
from reference.model import DLRM
from reference.trainer import Trainer

# 26 small tables: the planner keeps them whole over 2 ranks; table 20 takes bags of 100.
TABLES = [60, 3, 25, 7, 40, 3, 12, 5, 9, 50, 30, 20, 4, 11, 18, 6, 4, 8, 5, 45, 35, 40, 15, 10, 6, 5]
STEPS = 3


def dcn_config() -> Config:
    return Config.from_values(dict(
        embedding_dim=4, bottom_mlp=[13, 16, 4], top_mlp=[16, 8, 1], interaction="dcn", dcn_low_rank_dim=6,
        table_sizes=TABLES, data_mode="random", bag_sizes=BAG_SIZES, batch_size=40, optimizer="adagrad",
        learning_rate=0.05, adagrad_eps=1e-8, submission_benchmark="dlrm_dcnv2", submission_division="open",
        progress=False, dist_timeout=20.0, num_threads=1, seed=3), origin="test")


def dcn_rank(rank: int, world: int, port: int) -> None:
    torch.set_num_threads(1)  # the ranks share two cores
    cfg = dcn_config()
    data = RandomDataset(RandomSpec(TABLES, 13, bag_sizes=tuple(BAG_SIZES)), cfg.batch_size, STEPS, seed=9,
                         split="train")
    parallel = runtime.MultiProcess.start(cfg, LaunchInfo("test", rank, world, rank, world, "127.0.0.1", port))
    parallel.check_memory(cfg, TABLES)
    model = parallel.build_model(cfg, TABLES)
    ranks = Trainer(cfg, model, data, data, MLPerfLogger(None), parallel=parallel)
    whole = DLRM.from_config(cfg, TABLES, parallel.linear_kernel)
    one = Trainer(cfg, whole, data, data, MLPerfLogger(None))
    for step in range(STEPS):
        share = ranks.train_step(parallel.batch(data, step))
        loss = one.train_step(data.batch(step))
        [total] = parallel.global_losses(share.reshape(1))
        assert abs(total - loss.item()) <= 1e-5 * abs(loss.item()), (step, total, loss.item())

    # The replicated parameters (MLPs and cross network) after the Adagrad steps: as one process's.
    for (name, ours), theirs in zip(model.named_parameters(), whole.parameters(), strict=True):
        if name != "embeddings.weight":
            torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6, msg=name)
    assert any(n.startswith("interaction.cross.") for n, _ in model.named_parameters())
    # This rank's table rows and their element-wise Adagrad state: the same rows of one process's.
    emb, starts = model.embeddings, [sum(TABLES[:t]) for t in range(len(TABLES))]
    rows = torch.cat([torch.arange(starts[s.table] + s.lo, starts[s.table] + s.lo + s.rows) for s in emb.shards])
    torch.testing.assert_close(emb.weight.detach(), whole.embeddings.weight.detach()[rows], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ranks.optimizer.state[emb.weight]["sum"],
                               one.optimizer.state[whole.embeddings.weight]["sum"][rows], rtol=1e-5, atol=1e-9)
    assert ranks.optimizer.state[emb.weight]["sum"].shape == emb.weight.shape  # state only for its own rows
    parallel.close()


def test_two_ranks_train_dcnv2_as_one_process_does():
    run_ranks(dcn_rank, 2)
