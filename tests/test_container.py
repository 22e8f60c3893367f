"""Build the image and run it for real (podman), where podman is installed."""
import os
import shutil
import subprocess

import pytest

from conftest import ROOT


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("podman") is None,
                    reason="podman is not installed (apt-get install podman runc debootstrap); "
                           "scripts/container_test.sh builds and runs the image where it is")
@pytest.mark.skipif(os.geteuid() != 0, reason="scripts/container_test.sh runs podman as root")
def test_image_builds_runs_the_embedded_default_and_trains_two_ranks_under_mpirun():
    proc = subprocess.run(["scripts/container_test.sh"], cwd=ROOT, capture_output=True, text=True, timeout=1800)
    output = proc.stdout + proc.stderr
    if "SKIP:" in proc.stdout:
        pytest.skip(proc.stdout.split("SKIP:", 1)[1].strip())
    assert proc.returncode == 0, output[-4000:]
    assert "container test: PASS" in proc.stdout
    assert "compliance check: SUCCESS" in proc.stdout
    assert "ranks=2" in proc.stdout  # 2-rank training under mpirun inside the image
