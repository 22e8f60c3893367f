"""Checkpoints: saved by every rank into one folder, complete or absent, and
loaded into any world size; no pickled code runs on load.

- folder.py: the checkpoint folder (step folders, LATEST) and its atomic save;
- save.py: what is saved (the tables by rows from every rank, the rest once);
- restore.py: loading any checkpoint (a folder, a version-1 single file, an
  original dlrm_s_pytorch.py file) into a model of any placement;
- rows.py: reading only the rows a process holds from mapped files;
- placement.py: where a process's rows are; original.py: the original format;
- files.py: one file's streamed save and safe load; policy.py: when to save.
"""

from .files import FORMAT, CheckpointError, load_file, save_streamed
from .policy import CheckpointPolicy
from .restore import load_weights, resume
from .save import save

__all__ = ["FORMAT", "CheckpointError", "CheckpointPolicy", "load_file", "load_weights", "resume", "save",
           "save_streamed"]
