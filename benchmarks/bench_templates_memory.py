"""Peak memory of the ``templates`` job against the number of clusters (issue 17).

The global ``templates`` job holds one template per cluster (before cleaning
and merging): its memory follows the number of clusters the clustering jobs
found, which grows with the recording (384 channels, 150 units: 670 clusters
at 2 min, 786 at 5 min; ``bench_long.py`` logs them). This benchmark feeds the
job's script synthetic inputs in the real file formats
(:func:`bench_global_memory.synthesize`: 384 channels, 6-s chunks, the same
spikes shared among more or fewer clusters) at several cluster counts and
records its peak resident memory (``VmHWM`` of a fresh process), for the
current code and, with ``--baseline REV``, for a git revision, comparing their
outputs (``same_output``).

    python benchmarks/bench_templates_memory.py --baseline e479abc
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np

import bench_global_memory as gm
from benchlib import REPO, Table

CLUSTERS = (150, 600, 1200)
N_SPIKES = 300_000
NOTE = (
    "templates job (scripts/templates.py) on synthetic inputs: 384 channels, 6-s chunks, "
    f"{N_SPIKES:,} spikes (200 s at 1,500 spikes/s) shared among n_clusters clusters, 4 noise "
    "segments; peak_MB: VmHWM of a fresh process running the script; MB_per_100_clusters: "
    "least-squares slope over the cluster counts; same_output: templates.h5 and the "
    "deconvolution basis equal those of the baseline revision. The synthetic sums are stored "
    "plain (a baseline before the row-block packing cannot read that), so the current code "
    "reads every chunk's whole sums once per block of clusters: its wall times here overstate "
    "what it takes on template_sums' own files, which it reads a block of rows at a time."
)


def measure(work: Path, clusters: tuple[int, ...], code: dict[str, Path], log=print) -> list[dict]:
    rows = []
    for n_clusters in clusters:
        gm.N_UNITS = n_clusters  # the synthetic inputs' cluster (and unit) count
        folder = work / f"c{n_clusters}"
        shutil.rmtree(folder, ignore_errors=True)
        inputs = gm.synthesize(folder / "inputs", N_SPIKES)
        shared = inputs["folder"] / "shared"
        shared.mkdir()
        # The spike table the templates job reads (merge_spikes' output).
        gm.run_job("merge_spikes", inputs, folder / "merge_spikes", REPO)
        for path in (folder / "merge_spikes").iterdir():
            if path.suffix == ".h5":
                shutil.copy(path, shared / path.name)
        outs = {}
        for label, root in code.items():
            out = folder / label.replace(" ", "_")
            result = gm.run_job("templates", inputs, out, root)
            outs[label] = out
            rows.append({"code": label, "n_clusters": n_clusters, **result})
            log(f"{n_clusters} clusters [{label}]: {result['peak_MB']:.0f} MB, "
                f"{result['wall_s']:.1f} s")
        if len(outs) > 1:
            same = gm.same_outputs(*outs.values())
            for row in rows[-len(outs):]:
                row["same_output"] = same
        shutil.rmtree(folder, ignore_errors=True)
    return rows


def summarize(rows: list[dict]) -> list[dict]:
    out = []
    for label in dict.fromkeys(r["code"] for r in rows):
        mine = [r for r in rows if r["code"] == label]
        slope, intercept = np.polyfit([r["n_clusters"] / 100 for r in mine],
                                      [r["peak_MB"] for r in mine], 1)
        row = {"code": label}
        for r in mine:
            row[f"peak_MB_{r['n_clusters']}"] = round(r["peak_MB"], 1)
        row.update(MB_per_100_clusters=round(float(slope), 1),
                   MB_at_0_clusters=round(float(intercept)),
                   clusters_within_1GB=int((1000 - intercept) / slope * 100) if slope > 0 else None)
        if "same_output" in mine[0]:
            row["same_output"] = all(r["same_output"] for r in mine)
        out.append(row)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", default=None, help="git revision to compare with")
    parser.add_argument("--clusters", default=",".join(map(str, CLUSTERS)))
    parser.add_argument("--results", type=Path, default=REPO / "benchmarks" / "results")
    parser.add_argument("--work", type=Path, default=Path(__file__).resolve().parent / "work")
    args = parser.parse_args(argv)
    work = args.work / "templates_memory"
    work.mkdir(parents=True, exist_ok=True)
    code = {"current": REPO}
    if args.baseline:
        code[f"baseline {args.baseline}"] = gm.checkout(args.baseline, work)
    t0 = time.perf_counter()
    rows = measure(work, tuple(int(c) for c in args.clusters.split(",")), code)
    summary = summarize(rows)
    tables = (Table("templates_memory", "Peak memory of the templates job against clusters",
                    summary, NOTE),
              Table("templates_memory_runs", "Every run", rows, ""))
    args.results.mkdir(parents=True, exist_ok=True)
    for table in tables:
        table.write_csv(args.results / f"{table.key}.csv")
    (args.results / "templates_memory.md").write_text("\n".join(t.markdown() for t in tables))
    (args.results / "templates_memory.json").write_text(
        json.dumps({"rows": rows, "summary": summary, "wall_s": time.perf_counter() - t0},
                   indent=2) + "\n")
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
