"""The ``shardsort`` command: describe the inputs, then let Snakemake sort.

::

    shardsort sort PATH... [--out DIR] [--cores N] [--profile P] [--configfile F...]
    shardsort check PATH... [--out DIR] [--configfile F...]
    shardsort report --out DIR [--output FILE]

``PATH`` is a SpikeGLX ``.ap.bin`` / ``.meta`` or run folder, an Open Ephys
folder / ``structure.oebin`` / ``continuous.dat``, an NWB file, a raw
``.bin``/``.dat``/``.raw`` file (with ``--sampling-rate-hz``,
``--n-channels``, ``--dtype``, ``--gain-to-uv``, ``--geometry``), or a
recordings table (``.tsv``). The command writes ``DIR/recordings.tsv`` (one
row per recording, absolute paths) and runs the packaged workflow with
``--directory DIR``: results land in ``DIR/results/<recording>/``. Anything
after ``--`` is passed to Snakemake unchanged.

This module only parses arguments and builds the table; the sort is the
Snakemake workflow (one ``python -m snakemake`` subprocess). Errors in the
inputs are one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import csv
import os
import re
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

#: What the workflow needs besides the package (copied into installed builds).
WORKFLOW_ITEMS = ("Snakefile", "rules", "scripts", "config", "report", "envs", "profiles")
#: Folder of the workflow inside an installed (non-editable) package.
PACKAGED_WORKFLOW = "workflow_files"
#: The table the command writes into the output folder.
TABLE_NAME = "recordings.tsv"
#: What ``sort`` records for ``report`` (configuration files, table).
RUN_RECORD = "shardsort-run.yaml"
#: Default output folder.
DEFAULT_OUT = "shardsort-results"
#: Suffixes of headerless binary files (which need the options below).
RAW_SUFFIXES = (".bin", ".dat", ".raw")
#: Options a raw binary needs, by table column.
RAW_OPTIONS = {
    "sampling_rate_hz": "--sampling-rate-hz",
    "n_channels": "--n-channels",
    "dtype": "--dtype",
    "gain_to_uv": "--gain-to-uv",
    "geometry": "--geometry",
}
#: Columns that hold paths (made absolute: the workflow runs in the output folder).
PATH_COLUMNS = ("path", "geometry", "ground_truth")
#: Error exit status.
EXIT_USAGE = 2


class CliError(Exception):
    """A problem with the command's inputs: reported as one line, exit status 2."""


def workflow_root() -> Path:
    """Folder holding the Snakefile and ``rules/``, ``scripts/``, ``config/`` ...

    The copy installed with the package (``shardsort/workflow_files/``), else
    the source tree the package was imported from (an editable install or a
    checkout on ``PYTHONPATH``).
    """
    package = Path(__file__).resolve().parent
    candidates = (package / PACKAGED_WORKFLOW, package.parents[1])
    for root in candidates:
        if (root / "Snakefile").is_file() and (root / "rules").is_dir():
            return root
    raise CliError(
        f"the shardsort workflow (Snakefile, rules/, ...) is in neither "
        f"{candidates[0]} nor {candidates[1]}: reinstall shardsort"
    )


# --------------------------------------------------------------------- inputs


@dataclass(frozen=True)
class Metadata:
    """Values given on the command line for every input (None: from the file)."""

    sampling_rate_hz: float | None = None
    n_channels: int | None = None
    dtype: str | None = None
    order: str | None = None
    gain_to_uv: float | None = None
    offset_bytes: int | None = None
    geometry: str | None = None
    ground_truth: str | None = None
    electrical_series: str | None = None

    def cells(self) -> dict[str, str]:
        """Table cells of these values ('' where not given), paths absolute."""
        out = {}
        from .recordings import COLUMNS, OPTIONAL_COLUMNS

        # Every column after name, path and format.
        for column in (*COLUMNS[3:], *OPTIONAL_COLUMNS):
            value = getattr(self, column)
            if value is None:
                out[column] = ""
            elif column in PATH_COLUMNS:
                out[column] = _absolute(value)
            else:
                out[column] = str(value)
        return out


def _absolute(path: str) -> str:
    return os.path.abspath(os.path.expanduser(path))


def _safe_name(text: str) -> str:
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_.")
    return name or "recording"


def _spikeglx_name(path: Path) -> str:
    name = path.name
    for suffix in (".bin", ".meta"):
        name = name.removesuffix(suffix)
    return name.removesuffix(".ap")


def _found_under(folder: Path) -> list[tuple[str, Path]]:
    """(format, path) of the recordings in a folder."""
    if (folder / "structure.oebin").is_file():
        return [("openephys", folder)]
    found = [("spikeglx", p) for p in sorted(folder.rglob("*.ap.bin"))]
    if found:
        return found
    oebins = sorted(folder.rglob("structure.oebin"))
    if len(oebins) > 1:
        raise CliError(
            f"{folder}: holds {len(oebins)} Open Ephys recordings "
            f"({', '.join(str(p.parent) for p in oebins[:4])}"
            f"{', ...' if len(oebins) > 4 else ''}): pass the one(s) to sort"
        )
    if oebins:
        return [("openephys", oebins[0].parent)]
    found = [("nwb", p) for p in sorted(folder.rglob("*.nwb"))]
    if found:
        return found
    raise CliError(
        f"{folder}: no SpikeGLX .ap.bin, Open Ephys structure.oebin or NWB file "
        "found in this folder"
    )


def classify(path: Path) -> list[tuple[str, Path]]:
    """(format, path) of each recording an input path stands for.

    ``format`` is one of the table's formats, or ``'table'`` for a ``.tsv``.
    """
    if not path.exists():
        raise CliError(f"{path}: no such file or folder")
    if path.is_dir():
        return _found_under(path)
    suffix = path.suffix.lower()
    if suffix == ".tsv":
        return [("table", path)]
    if suffix == ".nwb":
        return [("nwb", path)]
    if suffix == ".meta":
        return [("spikeglx", path.with_suffix(".bin"))]
    if path.name == "structure.oebin" or (
        path.name == "continuous.dat" and path.parent.parent.name == "continuous"
    ):
        return [("openephys", path)]
    if suffix in RAW_SUFFIXES:
        if path.with_suffix(".meta").is_file():
            return [("spikeglx", path)]
        return [("binary", path)]
    raise CliError(
        f"{path}: unknown kind of input (suffix {path.suffix or 'none'!r}): expected "
        "a SpikeGLX .ap.bin/.meta or run folder, an Open Ephys folder, an NWB "
        "(.nwb) file, a raw .bin/.dat/.raw file or a recordings table (.tsv)"
    )


def _check_format(fmt: str, path: Path, meta: Metadata) -> None:
    """Read the format's metadata now, so a problem is one line naming the file."""
    from .io.nwb import nwb_fields
    from .io.openephys import openephys_fields
    from .io.spikeglx import spikeglx_fields

    try:
        if fmt == "spikeglx":
            spikeglx_fields(path, with_geometry=False)
        elif fmt == "openephys":
            openephys_fields(path)
        elif fmt == "nwb":
            nwb_fields(
                path, electrical_series=meta.electrical_series, with_geometry=False
            )
    except (FileNotFoundError, ValueError) as error:
        raise CliError(f"{path}: not a readable {fmt} recording: {error}") from None


def _raw_row(path: Path, meta: Metadata) -> dict[str, str]:
    cells = meta.cells()
    missing = [option for column, option in RAW_OPTIONS.items() if not cells[column]]
    if missing:
        raise CliError(
            f"{path}: a raw binary carries no metadata: pass {' '.join(missing)} "
            "(sampling rate, channels stored per sample, numpy dtype, microvolts "
            "per stored unit, channel positions file)"
        )
    return cells


def _table_rows(path: Path) -> list[dict[str, str]]:
    """Rows of a user's table, validated, with paths made absolute."""
    from .recordings import RecordingError, load_recordings_table

    try:
        load_recordings_table(path)
    except RecordingError as error:
        raise CliError(str(error).replace("\n", "; ")) from None
    with open(path, encoding="utf-8", newline="") as handle:
        lines = [
            line
            for line in handle
            if line.strip() and not line.lstrip().startswith("#")
        ]
    rows = []
    for record in csv.DictReader(lines, delimiter="\t"):
        row = {k.strip(): (v or "").strip() for k, v in record.items()}
        for column in PATH_COLUMNS:
            if row.get(column):
                row[column] = _absolute(row[column])
        rows.append(row)
    return rows


def describe_inputs(
    paths: Sequence[str], meta: Metadata, *, name: str | None = None
) -> list[dict[str, str]]:
    """Rows of the recordings table for the given inputs.

    Parameters
    ----------
    paths : sequence of str
        Inputs as given on the command line.
    meta : Metadata
        Values given on the command line (applied to every recording read
        from a file; tables are taken as they are).
    name : str, optional
        Name of the recording (only with a single recording).

    Raises
    ------
    CliError
        A missing path, an unknown suffix, a raw binary without the options
        it needs, unreadable metadata, or duplicate names in tables.
    """
    rows: list[dict[str, str]] = []
    for given in paths:
        for fmt, path in classify(Path(given)):
            if fmt == "table":
                rows.extend(_table_rows(path))
                continue
            if fmt == "binary":
                cells = _raw_row(path, meta)
            else:
                _check_format(fmt, path, meta)
                cells = meta.cells()
            if fmt != "nwb" and cells["electrical_series"]:
                raise CliError(
                    f"{path}: --electrical-series applies to NWB files only"
                )
            if fmt == "spikeglx":
                stem = _spikeglx_name(path)
            elif fmt == "openephys":
                stem = (path if path.is_dir() else path.parent).name
            else:
                stem = path.stem
            rows.append(
                {"name": _safe_name(stem), "format": fmt, **cells, "path": _absolute(str(path))}
            )
    if name is not None:
        if len(rows) != 1:
            raise CliError(f"--name {name!r} needs exactly one recording, got {len(rows)}")
        rows[0]["name"] = name
    seen: dict[str, int] = {}
    for row in rows:
        base = row["name"]
        if base in seen:
            seen[base] += 1
            row["name"] = f"{base}-{seen[base]}"
        else:
            seen[base] = 1
    return rows


def write_table(rows: Sequence[dict[str, str]], out: Path) -> Path:
    """Write ``out/recordings.tsv`` (atomically) and validate it."""
    from .io.arrays import atomic_write_bytes
    from .recordings import COLUMNS, OPTIONAL_COLUMNS, RecordingError, load_recordings_table

    columns = list(COLUMNS) + list(OPTIONAL_COLUMNS)
    lines = ["\t".join(columns)]
    for row in rows:
        lines.append("\t".join(row.get(c, "") for c in columns))
    out.mkdir(parents=True, exist_ok=True)
    table = out / TABLE_NAME
    atomic_write_bytes(table, ("\n".join(lines) + "\n").encode())
    try:
        load_recordings_table(table)
    except RecordingError as error:
        raise CliError(str(error).replace("\n", "; ")) from None
    return table


# ------------------------------------------------------------------ snakemake


def _profile(profile: str | None, root: Path) -> list[str]:
    if profile is None:
        return []
    if os.path.isdir(profile):
        return ["--profile", _absolute(profile)]
    packaged = root / "profiles" / profile
    if packaged.is_dir():
        return ["--profile", str(packaged)]
    names = sorted(p.name for p in (root / "profiles").iterdir() if p.is_dir())
    raise CliError(
        f"--profile {profile!r}: expected a profile folder or one of {names}"
    )


def snakemake_command(
    out: Path,
    table: Path,
    *,
    cores: str | None = None,
    profile: str | None = None,
    configfiles: Sequence[str] = (),
    extra: Sequence[str] = (),
) -> list[str]:
    """The Snakemake command line that sorts ``table`` into ``out``."""
    root = workflow_root()
    for configfile in configfiles:
        if not os.path.isfile(configfile):
            raise CliError(f"--configfile {configfile!r}: no such file")
    command = [
        sys.executable,
        "-m",
        "snakemake",
        "--snakefile",
        str(root / "Snakefile"),
        "--directory",
        str(out),
        "--workflow-profile",
        str(root / "profiles" / "default"),
        *_profile(profile, root),
    ]
    if cores is not None:
        command += ["--cores", str(cores)]
    command += [
        "--configfile",
        str(root / "config" / "config.yaml"),
        *(_absolute(f) for f in configfiles),
        *extra,
        # --config takes every following word: last.
        "--config",
        f"recordings={table}",
    ]
    return command


def _environment() -> dict[str, str]:
    """This interpreter's scripts first on PATH (jobs run with the same Python)."""
    bin_dir = str(Path(sys.executable).parent)
    return dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")


def _run(command: list[str], *, capture: bool = False) -> subprocess.CompletedProcess:
    return subprocess.run(
        command, env=_environment(), capture_output=capture, text=True, check=False
    )


def _metadata(args: argparse.Namespace) -> Metadata:
    return Metadata(
        sampling_rate_hz=args.sampling_rate_hz,
        n_channels=args.n_channels,
        dtype=args.dtype,
        order=args.order,
        gain_to_uv=args.gain_to_uv,
        offset_bytes=args.offset_bytes,
        geometry=args.geometry,
        ground_truth=args.ground_truth,
        electrical_series=args.electrical_series,
    )


def prepare(
    paths: Sequence[str], meta: Metadata, out: str | os.PathLike, *, name: str | None = None
) -> tuple[Path, Path]:
    """Describe the inputs and write the output folder's table: (out, table)."""
    rows = describe_inputs(paths, meta, name=name)
    folder = Path(_absolute(os.fspath(out)))
    if folder.exists() and not folder.is_dir():
        raise CliError(f"--out {os.fspath(out)!r}: exists and is not a folder")
    return folder, write_table(rows, folder)


def run_sort(
    paths: Sequence[str],
    out: str | os.PathLike,
    *,
    meta: Metadata = Metadata(),
    name: str | None = None,
    cores: str | int | None = "all",
    profile: str | None = None,
    configfiles: Sequence[str] = (),
    extra: Sequence[str] = (),
    log: str | os.PathLike | None = None,
) -> tuple[int, Path]:
    """Sort the inputs into ``out``: (Snakemake's exit status, results folder).

    What ``shardsort sort`` does, for callers in Python (``log``: a file that
    receives Snakemake's output instead of the terminal).
    """
    folder, table = prepare(paths, meta, out, name=name)
    command = snakemake_command(
        folder,
        table,
        cores=None if cores is None else str(cores),
        profile=profile,
        configfiles=configfiles,
        extra=extra,
    )
    record = {"configfiles": [_absolute(f) for f in configfiles], "recordings": str(table)}
    (folder / RUN_RECORD).write_text(yaml.safe_dump(record, sort_keys=False))
    if log is None:
        result = _run(command)
    else:
        with open(log, "w", encoding="utf-8") as stream:
            result = subprocess.run(
                command, env=_environment(), stdout=stream, stderr=subprocess.STDOUT,
                check=False,
            )
    return result.returncode, folder / "results"


def sort(args: argparse.Namespace, extra: Sequence[str]) -> int:
    """``shardsort sort``: build the table, run the workflow."""
    status, results = run_sort(
        args.paths,
        args.out,
        meta=_metadata(args),
        name=args.name,
        cores=args.cores,
        profile=args.profile,
        configfiles=args.configfile,
        extra=extra,
    )
    if status == 0:
        print(f"shardsort: results in {results}", file=sys.stderr)
    return status


def job_counts(output: str) -> dict[str, int]:
    """Jobs per rule from the "Job stats" table of a dry run (empty: nothing to do)."""
    lines = output.splitlines()
    if "Job stats:" not in lines:
        return {}
    counts = {}
    for line in lines[lines.index("Job stats:") + 3 :]:
        words = line.split()
        if len(words) != 2 or words[0] == "total":
            break
        counts[words[0]] = int(words[1])
    return counts


def _merged_config(root: Path, configfiles: Sequence[str], table: Path) -> dict:
    """The configuration Snakemake builds: defaults, then each file, then the table."""

    def merge(base: dict, layer: dict) -> dict:
        for key, value in layer.items():
            if isinstance(value, dict) and isinstance(base.get(key), dict):
                merge(base[key], value)
            else:
                base[key] = value
        return base

    config: dict = {}
    for path in (root / "config" / "config.yaml", *configfiles):
        with open(path, encoding="utf-8") as handle:
            merge(config, yaml.safe_load(handle) or {})
    config["recordings"] = str(table)
    return config


def plan_summary(root: Path, configfiles: Sequence[str], table: Path) -> list[str]:
    """One paragraph per recording: what the file says and how it is cut into jobs."""
    from .workflow import load_context

    context = load_context(_merged_config(root, configfiles, table))
    lines = []
    for name, spec in context.recordings.items():
        plan = context.plans[name]
        lines += [
            f"{name}: {spec.format} {spec.path}",
            f"  {spec.n_channels} channels x {spec.n_samples} samples at "
            f"{spec.sampling_rate_hz:g} Hz ({spec.duration_s:.1f} s), {spec.dtype}, "
            f"{spec.gain_to_uv:.6g} uV per unit, geometry from {spec.geometry_source}",
            f"  {plan.n_chunks} time chunks of {plan.chunk_samples} samples "
            f"({plan.chunk_samples / plan.sampling_rate_hz:.1f} s), "
            f"{len(plan.channel_shards)} channel shards, "
            f"{len(plan.channel_groups)} channel groups",
        ]
    return lines


def check(args: argparse.Namespace, extra: Sequence[str]) -> int:
    """``shardsort check``: validate, print the plan and the jobs a sort would run."""
    out, table = prepare(args.paths, _metadata(args), args.out, name=args.name)
    root = workflow_root()
    command = snakemake_command(
        out, table, cores="1", configfiles=args.configfile, extra=["-n", *extra]
    )
    result = _run(command, capture=True)
    if result.returncode != 0:
        sys.stderr.write(result.stdout[-4000:] + result.stderr[-8000:])
        print("shardsort: the workflow's dry run failed (above)", file=sys.stderr)
        return result.returncode
    for line in plan_summary(root, args.configfile, table):
        print(line)
    counts = job_counts(result.stdout + "\n" + result.stderr)
    if not counts:
        print("nothing to run: the results are up to date")
        return 0
    width = max(len(rule) for rule in counts)
    print(f"jobs to run ({sum(counts.values())} in all):")
    for rule, count in counts.items():
        print(f"  {rule:<{width}} {count}")
    return 0


def report(args: argparse.Namespace, extra: Sequence[str]) -> int:
    """``shardsort report``: ``snakemake --report`` of an earlier ``sort`` run."""
    out = Path(_absolute(args.out))
    record_path = out / RUN_RECORD
    if not record_path.is_file():
        raise CliError(
            f"{out}: no shardsort run here (expected {RUN_RECORD}, written by "
            "`shardsort sort ... --out DIR`)"
        )
    record = yaml.safe_load(record_path.read_text())
    output = _absolute(args.output) if args.output else str(out / "report.html")
    command = snakemake_command(
        out,
        Path(record["recordings"]),
        cores="1",
        configfiles=record["configfiles"],
        extra=["--report", output, *extra],
    )
    result = _run(command)
    if result.returncode == 0:
        print(f"shardsort: report in {output}", file=sys.stderr)
    return result.returncode


# --------------------------------------------------------------------- parser


def _input_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "paths",
        nargs="+",
        metavar="PATH",
        help="SpikeGLX .ap.bin/.meta or run folder, Open Ephys folder, NWB file, "
        "raw .bin/.dat/.raw file, or recordings table (.tsv)",
    )
    parser.add_argument(
        "--out", default=DEFAULT_OUT, metavar="DIR",
        help=f"output folder (default: {DEFAULT_OUT}); results in DIR/results/<name>/",
    )
    parser.add_argument(
        "--configfile", nargs="+", default=[], metavar="F",
        help="YAML files layered over the default science parameters",
    )
    parser.add_argument("--name", help="recording name (one recording only)")
    raw = parser.add_argument_group(
        "metadata", "needed for raw binaries; for other formats they must agree "
        "with the file (--geometry overrides the file's positions)"
    )
    raw.add_argument("--sampling-rate-hz", type=float, metavar="HZ")
    raw.add_argument("--n-channels", type=int, metavar="N",
                     help="channels stored per sample")
    raw.add_argument("--dtype", help="numpy dtype of the samples, e.g. int16")
    raw.add_argument("--order", choices=("samples", "channels"),
                     help="samples: (n_samples, n_channels) C-order (default)")
    raw.add_argument("--gain-to-uv", type=float, metavar="UV",
                     help="microvolts per stored unit")
    raw.add_argument("--offset-bytes", type=int, metavar="B",
                     help="header bytes before the first sample")
    raw.add_argument("--geometry", metavar="FILE",
                     help="channel positions: .npy, .txt/.csv or probeinterface .json")
    raw.add_argument("--ground-truth", metavar="NPZ",
                     help="ground-truth spikes (sample_index, unit_index): adds "
                     "ground_truth.tsv")
    raw.add_argument("--electrical-series", metavar="NAME",
                     help="NWB: the ElectricalSeries in /acquisition to sort")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="shardsort",
        description="Spike sorting cut into many small Snakemake jobs. "
        "Arguments after `--` go to Snakemake unchanged.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sort_parser = commands.add_parser(
        "sort", help="sort recordings", description="Sort recordings into DIR/results/."
    )
    _input_options(sort_parser)
    sort_parser.add_argument("--cores", default="all", metavar="N",
                             help="cores to use (default: all)")
    sort_parser.add_argument("--profile", metavar="P",
                             help="Snakemake profile: a folder, or local, slurm, generic")
    sort_parser.set_defaults(run=sort)
    check_parser = commands.add_parser(
        "check",
        help="validate inputs, print the shard plan and the jobs a sort would run",
        description="Validate the inputs and print the shard plan and job counts "
        "(a Snakemake dry run; nothing is sorted).",
    )
    _input_options(check_parser)
    check_parser.set_defaults(run=check)
    report_parser = commands.add_parser(
        "report", help="write the HTML report of a sort",
        description="Write the self-contained HTML report (snakemake --report).",
    )
    report_parser.add_argument("--out", required=True, metavar="DIR",
                               help="output folder of an earlier `shardsort sort`")
    report_parser.add_argument("--output", metavar="FILE",
                               help="report file (default: DIR/report.html)")
    report_parser.set_defaults(run=report)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``shardsort`` command; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    extra: list[str] = []
    if "--" in argv:
        at = argv.index("--")
        argv, extra = argv[:at], argv[at + 1 :]
    args = build_parser().parse_args(argv)
    try:
        return args.run(args, extra)
    except CliError as error:
        print(f"shardsort: error: {error}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
