"""Fixtures that run the real workflow on small generated recordings."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
SNAKEMAKE = str(Path(sys.executable).parent / "snakemake")


def write_small_recording(folder: Path, *, name: str, n_channels=32, duration_s=20.0,
                          n_units=10, seed=7, **synth) -> Path:
    """Generate a small ground-truth recording and its recordings table.

    ``synth`` passes further :class:`shardsort.synth.SynthParams` fields
    (e.g. ``drift_um``).
    """
    from shardsort.synth import SynthParams, ground_truth_arrays, write_recording

    folder.mkdir(parents=True, exist_ok=True)
    params = SynthParams(
        n_channels=n_channels, duration_s=duration_s, n_units=n_units, seed=seed, **synth
    )
    write_recording(folder / f"{name}.bin", params)
    gt = ground_truth_arrays(params)
    gt["sample_index"] = gt.pop("spike_sample_index")
    gt["unit_index"] = gt.pop("spike_unit_index")
    np.save(folder / f"{name}_geometry.npy", gt["positions_um"])
    np.savez(folder / f"{name}_gt.npz", **gt)
    table = folder / f"{name}.tsv"
    table.write_text(
        "name\tpath\tformat\tsampling_rate_hz\tn_channels\tdtype\torder\tgain_to_uv\t"
        "offset_bytes\tgeometry\tground_truth\n"
        f"{name}\t{folder / (name + '.bin')}\tbinary\t{params.sampling_rate_hz}\t"
        f"{n_channels}\tint16\tsamples\t{gt['gain_to_uv']}\t0\t"
        f"{folder / (name + '_geometry.npy')}\t{folder / (name + '_gt.npz')}\n"
    )
    return table


def run_snakemake(workdir: Path, *args: str, config: dict | None = None,
                  overrides: dict | None = None, check=True) -> subprocess.CompletedProcess:
    """Run the repository's workflow with ``workdir`` as working directory.

    ``config`` holds top-level ``--config`` values; ``overrides`` nested
    settings, written to a YAML file layered over the default configuration.
    """
    configfiles = [str(REPO / "config" / "config.yaml")]
    if overrides:
        extra = Path(workdir) / "overrides.yaml"
        extra.write_text(yaml.safe_dump(overrides))
        configfiles.append(str(extra))
    cmd = [
        SNAKEMAKE,
        "--snakefile", str(REPO / "Snakefile"),
        "--configfile", *configfiles,
        "--directory", str(workdir),
        *args,
    ]
    if config:
        cmd += ["--config"] + [f"{k}={v}" for k, v in config.items()]
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    proc = subprocess.run(cmd, cwd=workdir, capture_output=True, text=True, env=env)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"snakemake failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}"
        )
    return proc


@pytest.fixture(scope="session")
def small_recording(tmp_path_factory):
    folder = tmp_path_factory.mktemp("small data")  # a path with a space
    return write_small_recording(folder, name="small")


@pytest.fixture(scope="session")
def sorted_small(tmp_path_factory, small_recording):
    """The small recording sorted once with --cores 2 (shared by several tests).

    It keeps its intermediates (keep_intermediates: true), so that tests of what
    a changed setting reruns see the preprocessed chunks; the sorts of
    test_same_result_for_cores_and_chunk_sizes run with the defaults.
    """
    work = tmp_path_factory.mktemp("run_cores2")
    run_snakemake(work, "--cores", "2", config={"recordings": small_recording},
                  overrides={"keep_intermediates": True})
    return work


def dry_run_rules(output: str) -> set[str]:
    """Rule names in the "Job stats" table of a dry run (empty if up to date)."""
    lines = output.splitlines()
    if "Job stats:" not in lines:
        assert "Nothing to be done" in output, output[-3000:]
        return set()
    rules = set()
    for line in lines[lines.index("Job stats:") + 3 :]:
        name = line.split()[0]
        if name == "total":
            return rules
        rules.add(name)
    raise AssertionError(f"unterminated Job stats table:\n{output[-3000:]}")


def copy_tree(src: Path, dst: Path) -> None:
    shutil.copytree(src, dst, dirs_exist_ok=True)
