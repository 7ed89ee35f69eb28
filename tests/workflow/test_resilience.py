"""Crash safety and stage reruns of the workflow on the small recording.

A sort killed with SIGKILL mid-way (snakemake and its running jobs, as when a
machine goes down) must, after ``--unlock`` and a rerun, give byte-identical
outputs to an uninterrupted sort. Changing a detection parameter on a finished
sort must rerun detection and what follows, never preprocessing.
"""

from __future__ import annotations

import fnmatch
import os
import signal
import subprocess
import time
from pathlib import Path
from types import SimpleNamespace

import h5py
import psutil
import pytest
import yaml

from .conftest import REPO, SNAKEMAKE, copy_tree, dry_run_rules

pytestmark = pytest.mark.workflow

NAME = "small"
PREPROCESS_RULES = {"filter", "noise_stats", "whitening", "preprocess"}
# Rules that must rerun after a detection change (reports and other consumers of
# the final outputs rerun too).
DETECTION_AND_DOWNSTREAM = {
    "feature_basis",
    "detect",
    "merge_spikes",
    "cluster",
    "merge_clusters",
    "template_sums",
    "templates",
    "deconvolve",
    "merge_units",
    "metrics",
    "export_phy",
    "export_nwb",
    "ground_truth",
}
# atomic_path's temporary names: .<name>.<random>.tmp<suffix>
TEMP_PATTERN = "*.tmp*"


def _command(workdir: Path, *args: str, table: Path, configfiles=()) -> list[str]:
    return [
        SNAKEMAKE,
        "--snakefile",
        str(REPO / "Snakefile"),
        "--configfile",
        str(REPO / "config" / "config.yaml"),
        *map(str, configfiles),
        "--directory",
        str(workdir),
        *args,
        "--config",
        f"recordings={table}",
    ]


def _run(workdir: Path, *args: str, table: Path, configfiles=()) -> str:
    proc = subprocess.run(
        _command(workdir, *args, table=table, configfiles=configfiles),
        cwd=workdir,
        capture_output=True,
        text=True,
        env=_env(),
        check=False,
    )
    if proc.returncode != 0:
        raise AssertionError(
            f"snakemake {' '.join(args)} failed ({proc.returncode}):\n"
            f"{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
        )
    return proc.stdout + proc.stderr


def _env() -> dict[str, str]:
    return dict(os.environ, PATH=f"{Path(SNAKEMAKE).parent}:{os.environ['PATH']}")


def _temp_files(folder: Path) -> list[str]:
    found = []
    for root, _, files in os.walk(folder):
        found += [
            os.path.relpath(os.path.join(root, f), folder)
            for f in fnmatch.filter(files, TEMP_PATTERN)
        ]
    return sorted(found)


def _wait_until_group_gone(pgid: int, timeout_s: float = 30.0) -> None:
    """Wait until no live process of process group ``pgid`` remains."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        alive = []
        for p in psutil.process_iter(["status"]):
            try:
                if (
                    os.getpgid(p.pid) == pgid
                    and p.info["status"] != psutil.STATUS_ZOMBIE
                ):
                    alive.append(p.pid)
            except (ProcessLookupError, psutil.NoSuchProcess):
                continue
        if not alive:
            return
        time.sleep(0.1)
    raise AssertionError(f"processes {alive} of the killed sort are still running")


def _kill_mid_sort(workdir: Path, table: Path) -> bool:
    """Start a sort and SIGKILL it (snakemake and its jobs) at the first write of
    a preprocessed chunk, or just after the first chunk is written.

    Returns whether the kill landed while that chunk file was being written.
    """
    chunks = workdir / "results" / NAME / "preprocess" / "chunks"
    with open(workdir / "killed_run.log", "w") as log:
        proc = subprocess.Popen(
            _command(workdir, "--cores", "2", table=table),
            cwd=workdir,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=_env(),
            start_new_session=True,  # its own process group, jobs included
        )
        try:
            deadline = time.monotonic() + 600
            while True:
                assert proc.poll() is None, "the sort ended before it could be killed"
                assert time.monotonic() < deadline, "no preprocessed chunk after 600 s"
                names = os.listdir(chunks) if chunks.is_dir() else []
                mid_write = bool(fnmatch.filter(names, TEMP_PATTERN))
                if mid_write or fnmatch.filter(names, "t*.bin"):
                    break
                time.sleep(0.01)
        finally:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    _wait_until_group_gone(proc.pid)
    return mid_write


@pytest.fixture(scope="module")
def resumed(tmp_path_factory, small_recording):
    """A sort killed mid-way, then unlocked and rerun with --rerun-incomplete."""
    work = tmp_path_factory.mktemp("killed")
    mid_write = _kill_mid_sort(work, small_recording)
    assert not (work / "results" / NAME / "sorting.h5").exists()
    stale = _temp_files(work / "results")
    _run(work, "--unlock", table=small_recording)
    _run(work, "--cores", "2", "--rerun-incomplete", table=small_recording)
    return SimpleNamespace(
        work=work, killed_mid_write=mid_write, stale_after_kill=stale
    )


def test_killed_sort_resumes_to_identical_outputs(resumed, sorted_small):
    got, want = (w / "results" / NAME for w in (resumed.work, sorted_small))
    with (
        h5py.File(got / "sorting.h5", "r") as a,
        h5py.File(want / "sorting.h5", "r") as b,
    ):
        spikes, reference = a["spikes"][()], b["spikes"][()]
    assert len(reference) > 0
    assert spikes.dtype == reference.dtype
    assert spikes.tobytes() == reference.tobytes()
    for part in ("spike_times.npy", "spike_clusters.npy"):
        assert (got / "phy" / part).read_bytes() == (
            want / "phy" / part
        ).read_bytes(), part


def test_resume_writes_no_partial_file(resumed):
    """Every temporary file after the rerun was already left by the kill itself."""
    leftover = _temp_files(resumed.work / "results")
    assert set(leftover) <= set(resumed.stale_after_kill), leftover


def test_resume_removes_temporary_file_of_killed_write(resumed):
    if not resumed.killed_mid_write:
        pytest.skip("the kill did not land while a chunk file was being written")
    assert resumed.stale_after_kill
    assert _temp_files(resumed.work / "results") == []


@pytest.fixture(scope="module")
def finished(tmp_path_factory, sorted_small):
    """A private copy of the finished sort (copy2 keeps the modification times)."""
    work = tmp_path_factory.mktemp("finished")
    copy_tree(sorted_small, work)
    return work


def test_finished_sort_is_up_to_date(finished, small_recording):
    out = _run(
        finished, "-n", "--cores", "2", "--quiet", "rules", table=small_recording
    )
    assert dry_run_rules(out) == set()


@pytest.mark.parametrize(
    "key",
    [
        "radius_um",
        "threshold",
    ],
)
def test_detection_change_reruns_detection_only(
    finished, small_recording, tmp_path, key
):
    default = yaml.safe_load((REPO / "config" / "config.yaml").read_text())["detect"]
    # A second config file: --config detect='{threshold: 5.5}' would reach the
    # schema as the string '5.5' (snakemake reads nested --config values as text).
    override = tmp_path / "override.yaml"
    override.write_text(yaml.safe_dump({"detect": {key: default[key] * 1.25}}))
    out = _run(
        finished,
        "-n",
        "--cores",
        "2",
        "--quiet",
        "rules",
        table=small_recording,
        configfiles=[override],
    )
    rules = dry_run_rules(out)
    assert not rules & PREPROCESS_RULES, sorted(rules & PREPROCESS_RULES)
    assert DETECTION_AND_DOWNSTREAM <= rules, sorted(DETECTION_AND_DOWNSTREAM - rules)
