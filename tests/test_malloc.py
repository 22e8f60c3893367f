import os
import platform
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != "glibc",
                                reason=f"not glibc ({platform.libc_ver()}): the settings are glibc's")

# In a fresh process: 40 blocks of 8 MB are allocated, then freed; prints the RSS (MB) before the
# allocation, after the free, and after release_freed_memory().
MEASURE = """
import sys
import numpy as np
from reference.malloc import keep_freed_memory, release_freed_memory
def rss_mb():
    return int(open("/proc/self/statm").read().split()[1]) * 4096 / 2**20
if sys.argv[1] == "keep":
    assert keep_freed_memory()
before = rss_mb()
blocks = [np.ones(8 << 20, np.uint8) for _ in range(40)]
del blocks
freed = rss_mb()
assert release_freed_memory()
print(before, freed, rss_mb())
"""


def rss_after_freeing(mode: str) -> tuple[float, float, float]:
    out = subprocess.run([sys.executable, "-c", MEASURE, mode], capture_output=True, text=True, check=True).stdout
    before, freed, released = (float(x) for x in out.split())
    return before, freed, released


def test_freed_blocks_stay_in_the_process_only_with_the_settings():
    # glibc's default serves 8 MB with mmap and unmaps it on free: the 320 MB leave at once.
    before, freed, _ = rss_after_freeing("default")
    assert freed - before < 100, (before, freed)
    # With keep_freed_memory() they come from the heap and stay there for the next block to reuse.
    before, freed, _ = rss_after_freeing("keep")
    assert freed - before > 250, (before, freed)


def test_freed_heap_memory_goes_back_to_the_system_on_release():
    _, kept, released = rss_after_freeing("keep")
    assert kept - released > 250, (kept, released)


# In a fresh process: a tiny training run through reference.train, then the same 40 blocks of 8 MB.
TRAIN_THEN_MEASURE = """
import os, sys
import numpy as np
from reference import train
from reference.config import Config
def rss_mb():
    return int(open("/proc/self/statm").read().split()[1]) * 4096 / 2**20
cfg = Config.from_sources("configs/random.yaml", ["table_sizes=30-20", "embedding_dim=4", "bottom_mlp=13-8-4",
                          "top_mlp=8-1", "batch_size=32", "eval_batch_size=64", "random_train_batches=2",
                          "random_eval_batches=1", "progress=false", "num_threads=1",
                          "results_dir=" + sys.argv[1]])
assert train.run(cfg, out=open(os.devnull, "w")).steps == 2
before = rss_mb()
blocks = [np.ones(8 << 20, np.uint8) for _ in range(40)]
del blocks
print(before, rss_mb())
"""


def test_a_training_run_keeps_freed_memory(tmp_path):
    # A step's activations and gradients are freed and allocated again every step (reference/train.py).
    out = subprocess.run([sys.executable, "-c", TRAIN_THEN_MEASURE, str(tmp_path)], capture_output=True, text=True,
                         check=True, cwd=ROOT).stdout
    before, freed = (float(x) for x in out.split())
    assert freed - before > 250, (before, freed)
