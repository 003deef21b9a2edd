import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402

# honour OMP_NUM_THREADS when set; otherwise use the cores this process may run on (at most 2)
_threads = int(os.environ.get("OMP_NUM_THREADS") or min(2, len(os.sched_getaffinity(0))))
torch.set_num_threads(max(1, _threads))


# ----------------------------------------------------------------------------- SLURM tests
# Tests marked `slurm` need the one-node cluster from slurm/ci-up.sh. Where it is not reachable they
# are skipped with the reason (listed by -ra), and the header says so; with SENSEFLOW_REQUIRE_SLURM=1
# (set by .ci/run) they run anyway and fail, so CI never passes without them by accident.
def _slurm_state() -> tuple[bool, str]:
    import shutil
    import subprocess

    if shutil.which("sinfo") is None:
        return False, "sinfo is not on PATH (start the test cluster: bash slurm/ci-up.sh)"
    try:
        ping = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, timeout=15)
        if "UP" not in ping.stdout:  # instant, where sinfo would retry for ~10 s
            line = (ping.stdout or ping.stderr).strip().splitlines()
            return False, f"{line[0] if line else 'scontrol ping failed'}; start the test cluster: bash slurm/ci-up.sh"
        r = subprocess.run(["sinfo", "-h", "-o", "%P %t"], capture_output=True, text=True, timeout=15)
    except (OSError, subprocess.SubprocessError) as e:
        return False, f"sinfo failed ({e}); start the test cluster: bash slurm/ci-up.sh"
    states = r.stdout.split()
    if r.returncode != 0 or not any(s in ("idle", "mix", "mixed", "alloc", "allocated") for s in states[1::2]):
        msg = (r.stderr or r.stdout).strip().splitlines()
        return False, f"no usable SLURM node ({msg[0] if msg else 'sinfo printed nothing'}); bash slurm/ci-up.sh"
    return True, "cluster up: " + " ".join(states)


_SLURM: tuple[bool, str] | None = None


def _slurm() -> tuple[bool, str]:
    global _SLURM
    if _SLURM is None:
        _SLURM = _slurm_state()
    return _SLURM


def pytest_report_header(config):
    if "not slurm" in (config.getoption("markexpr") or ""):
        return None
    up, why = _slurm()
    return f"slurm: {why}" if up else f"slurm: tests marked slurm will be skipped: {why}"


def pytest_collection_modifyitems(config, items):
    import pytest

    marked = [it for it in items if it.get_closest_marker("slurm")]
    if not marked:
        return
    up, why = _slurm()
    if up or os.environ.get("SENSEFLOW_REQUIRE_SLURM") == "1":
        return
    for it in marked:
        it.add_marker(pytest.mark.skip(reason=f"SLURM: {why}"))
