"""Run a command and measure its wall time and peak memory.

Two memory figures are taken, because sorters parallelise differently
(Snakemake runs jobs as separate processes, SpikeInterface uses process pools):

- ``peak_rss_mb``: the largest *sum* of resident memory over the whole process
  tree, sampled every ``poll_s`` seconds — what the machine must provide;
- ``max_process_rss_mb``: the largest single process, from the kernel's exact
  ``ru_maxrss`` of the command and every descendant it waited for
  (``os.wait4``); for Snakemake that is the largest job.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import psutil


@dataclass(frozen=True)
class Measurement:
    """Outcome of one measured command."""

    returncode: int
    wall_s: float
    cpu_s: float
    peak_rss_mb: float
    max_process_rss_mb: float
    timed_out: bool


def _tree_rss_bytes(root: psutil.Process) -> int:
    """Resident memory of ``root`` and all its descendants (0 for vanished ones)."""
    total = 0
    try:
        processes = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0
    for process in processes:
        try:
            total += process.memory_info().rss
        except psutil.Error:
            continue
    return total


def run_measured(
    command: list[str],
    *,
    log_path: Path,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    timeout_s: float | None = None,
    poll_s: float = 0.2,
) -> Measurement:
    """Run ``command`` (stdout and stderr to ``log_path``) and measure it.

    Parameters
    ----------
    command : list of str
        Program and arguments.
    log_path : Path
        File receiving the command's stdout and stderr.
    env, cwd
        Environment and working directory of the command.
    timeout_s : float, optional
        After this many seconds the command's whole process group is killed and
        ``timed_out`` is set.
    poll_s : float
        Sampling period of the process-tree memory.

    Returns
    -------
    Measurement
        Exit code (negative: killed by that signal), wall and CPU time, memory
        peaks.
    """
    if poll_s <= 0:
        raise ValueError(f"poll_s must be > 0, got {poll_s}")
    if timeout_s is not None and timeout_s <= 0:
        raise ValueError(f"timeout_s must be > 0 or None, got {timeout_s}")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    finished = threading.Event()
    timed_out = threading.Event()
    peak = [0]

    with open(log_path, "wb") as log:
        start = time.perf_counter()
        process = subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=cwd,
            start_new_session=True,
        )
        root = psutil.Process(process.pid)

        def sample() -> None:
            while not finished.wait(poll_s):
                peak[0] = max(peak[0], _tree_rss_bytes(root))

        def kill_on_timeout() -> None:
            if timeout_s is not None and not finished.wait(timeout_s):
                timed_out.set()
                try:
                    os.killpg(process.pid, signal.SIGKILL)
                except ProcessLookupError:  # ended meanwhile
                    pass

        threads = [
            threading.Thread(target=f, daemon=True) for f in (sample, kill_on_timeout)
        ]
        for thread in threads:
            thread.start()
        peak[0] = max(peak[0], _tree_rss_bytes(root))
        _, status, usage = os.wait4(process.pid, 0)
        wall_s = time.perf_counter() - start
        finished.set()
        for thread in threads:
            thread.join()
        process.returncode = os.waitstatus_to_exitcode(status)

    max_process_mb = usage.ru_maxrss / 1024.0  # Linux reports kilobytes
    return Measurement(
        returncode=process.returncode,
        wall_s=wall_s,
        cpu_s=usage.ru_utime + usage.ru_stime,
        peak_rss_mb=max(peak[0] / 2**20, max_process_mb),
        max_process_rss_mb=max_process_mb,
        timed_out=timed_out.is_set(),
    )
