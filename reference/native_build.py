"""Compiling and loading the package's C kernels (row_kernels.c, dot_kernels.c)
at start-up, for this CPU.

Each library is compiled when a run first needs it (well under a second),
with ``-march=native``, into a temporary folder that is removed once it is
loaded: nothing is cached, so nothing compiled for one machine is loaded on
another. It needs a C compiler with OpenMP (``$CC``, else ``cc``). The
libraries are loaded after torch, so the libgomp.so.1 they need is the one
torch has loaded and their parallel regions run in torch's thread pool.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

FLAGS = ["-O3", "-march=native", "-fopenmp", "-fno-math-errno", "-shared", "-fPIC"]


class NativeKernelError(RuntimeError):
    """The native kernels could not be built or loaded here."""


def compiler() -> str:
    return os.environ.get("CC") or "cc"


def _compile(source: Path, library: str) -> None:
    cc = compiler()
    if shutil.which(cc) is None:
        raise NativeKernelError(f"no C compiler: {cc!r} is not on PATH (set CC to one with OpenMP, e.g. gcc)")
    try:
        done = subprocess.run([cc, *FLAGS, str(source), "-o", library], capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:
        raise NativeKernelError(f"{cc} took over 120 s to compile {source}") from None
    except OSError as e:  # found, but the system cannot run it (not a program for this machine)
        raise NativeKernelError(f"could not run the C compiler {cc!r}: {e}") from None
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines() or ["(no message)"]
        first_error = next((line for line in lines if "error" in line), lines[0])
        raise NativeKernelError(f"{cc} failed to compile {source.name} (exit {done.returncode}): {first_error}\n"
                                f"{cc} {' '.join(FLAGS)} {source}:\n" + "\n".join(lines))


def load_library(source: Path) -> ctypes.CDLL:
    """``source`` compiled for this CPU and loaded; raises NativeKernelError where it cannot be."""
    with tempfile.TemporaryDirectory(prefix=f"dlrm-{source.stem}-") as folder:
        library = os.path.join(folder, source.with_suffix(".so").name)
        _compile(source, library)
        try:
            return ctypes.CDLL(library)
        except OSError as e:
            raise NativeKernelError(f"compiled {source.name} but could not load it: {e}") from None
