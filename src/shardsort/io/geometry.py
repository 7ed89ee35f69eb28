"""Channel positions: load them from files, or fall back to a default layout.

Positions are float64 arrays ``(n_channels, 2)`` with columns (x, y) in
micrometres, row ``i`` being recording channel ``i``.

Supported files
---------------
* ``.npy``: a ``(n_channels, 2)`` numeric array.
* ``.txt``, ``.csv``, ``.tsv``: one ``x y`` pair per line, separated by
  whitespace and/or a comma. Blank lines and lines starting with ``#`` are
  skipped, and so is a first line that is not numeric (a header like ``x,y``).
* ``.json``: a probeinterface file (read with
  ``probeinterface.read_probeinterface``). Contacts of all probes are taken
  in order; when device channel indices are set, contacts are ordered by
  them and contacts wired to no channel (index -1) are dropped.
"""

from __future__ import annotations

import os
import re

import numpy as np
import numpy.typing as npt

#: File suffixes :func:`load_geometry` understands.
GEOMETRY_SUFFIXES = (".npy", ".txt", ".csv", ".tsv", ".json")
#: Default layout: horizontal distance between the two columns (um).
DEFAULT_X_PITCH_UM = 32.0
#: Default layout: vertical distance between rows (um).
DEFAULT_Y_PITCH_UM = 20.0
#: Distance (um) added between neighbouring shanks in the positions the sort
#: uses: beyond every neighbourhood radius, so none spans two shanks.
SHANK_SEPARATION_UM = 1000.0


def default_geometry(n_channels: int) -> npt.NDArray[np.float64]:
    """Two-column, Neuropixels-like layout used when no geometry is known.

    Channel ``i`` sits at ``x = 32 * (i % 2)`` um, ``y = 20 * (i // 2)`` um:
    pairs of channels side by side, rows 20 um apart.

    Parameters
    ----------
    n_channels : int
        Number of channels (0 gives an empty ``(0, 2)`` array).

    Returns
    -------
    numpy.ndarray of float64, shape (n_channels, 2)
    """
    if not isinstance(n_channels, (int, np.integer)) or n_channels < 0:
        raise ValueError(f"n_channels must be an integer >= 0, got {n_channels!r}")
    index = np.arange(n_channels)
    return np.column_stack(
        [DEFAULT_X_PITCH_UM * (index % 2), DEFAULT_Y_PITCH_UM * (index // 2)]
    ).astype(np.float64)


def separate_shanks(
    positions_um: npt.ArrayLike,
    shank_ids: npt.ArrayLike,
    *,
    separation_um: float = SHANK_SEPARATION_UM,
) -> npt.NDArray[np.float64]:
    """Move shanks apart: shank of rank ``k`` (by id) ``k * separation_um`` right.

    Distances within a shank are unchanged; channels of different shanks end
    up more than ``separation_um`` apart (the shanks' own pitch adds to it),
    so the sort's radius-based neighbourhoods (detection, features, local
    reference, whitening, bad channels) never mix shanks.

    Parameters
    ----------
    positions_um : array_like, shape (n_channels, 2)
    shank_ids : array_like, shape (n_channels,)
        Any integer labels; ranked in increasing order.
    separation_um : float
        Extra distance between neighbouring shanks, > 0.

    Returns
    -------
    numpy.ndarray of float64, shape (n_channels, 2)
    """
    positions = check_positions(positions_um)
    ids = np.asarray(shank_ids)
    if ids.shape != (positions.shape[0],):
        raise ValueError(
            f"shank_ids must hold one shank per channel, n_channels="
            f"{positions.shape[0]}, got shape {ids.shape}"
        )
    if not separation_um > 0:
        raise ValueError(f"separation_um must be > 0, got {separation_um!r}")
    _, rank = np.unique(ids, return_inverse=True)
    moved = positions.copy()
    moved[:, 0] += rank * float(separation_um)
    return moved


def check_positions(
    positions_um: npt.ArrayLike,
    n_channels: int | None = None,
    *,
    source: str = "positions_um",
) -> npt.NDArray[np.float64]:
    """Validate positions and return them as float64 ``(n, 2)``.

    Parameters
    ----------
    positions_um : array_like
        Candidate positions.
    n_channels : int, optional
        Required number of rows.
    source : str
        What the positions came from, for error messages.

    Raises
    ------
    ValueError
        If the array is not ``(n, 2)`` numeric, holds non-finite values, or has
        a number of rows other than ``n_channels``.
    """
    try:
        positions = np.asarray(positions_um, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise ValueError(
            f"{source} must be numeric (x, y) pairs, got {positions_um!r}"
        ) from error
    if positions.ndim != 2 or positions.shape[1] != 2:
        raise ValueError(
            f"{source} must have shape (n_channels, 2) with columns (x, y), "
            f"got shape {positions.shape}"
        )
    if not np.all(np.isfinite(positions)):
        raise ValueError(f"{source} must hold finite numbers, got NaN or inf")
    if n_channels is not None and positions.shape[0] != n_channels:
        raise ValueError(
            f"{source} has {positions.shape[0]} rows, expected n_channels={n_channels}"
        )
    return positions


def _read_text(path: str) -> np.ndarray:
    rows = []
    header_allowed = True
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            text = line.strip()
            if not text or text.startswith("#"):
                continue
            fields = [f for f in re.split(r"[,\s]+", text) if f]
            try:
                values = [float(f) for f in fields]
            except ValueError:
                if header_allowed:
                    header_allowed = False
                    continue
                raise ValueError(
                    f"geometry file {path!r} line {number}: expected two numbers "
                    f"'x y', got {text!r}"
                ) from None
            header_allowed = False
            if len(values) != 2:
                raise ValueError(
                    f"geometry file {path!r} line {number}: expected two numbers "
                    f"'x y', got {len(values)} values"
                )
            rows.append(values)
    return np.array(rows, dtype=np.float64).reshape(-1, 2)


def _read_probeinterface(path: str) -> np.ndarray:
    import probeinterface

    group = probeinterface.read_probeinterface(path)
    positions = []
    for probe in group.probes:
        if probe.ndim != 2:
            raise ValueError(
                f"geometry file {path!r}: probe has ndim={probe.ndim}, "
                "expected a 2-D probe"
            )
        positions.append(np.asarray(probe.contact_positions, dtype=np.float64))
    positions = np.concatenate(positions) if positions else np.zeros((0, 2))
    if all(probe.device_channel_indices is None for probe in group.probes):
        return positions

    wiring = group.get_global_device_channel_indices()["device_channel_indices"]
    connected = wiring >= 0
    channels = wiring[connected]
    if not np.array_equal(np.sort(channels), np.arange(channels.size)):
        raise ValueError(
            f"geometry file {path!r}: device_channel_indices must number the wired "
            f"contacts 0..{channels.size - 1} once each, "
            f"got {sorted(channels.tolist())}"
        )
    return positions[connected][np.argsort(channels)]


def load_geometry(
    path: str | os.PathLike, n_channels: int | None = None
) -> npt.NDArray[np.float64]:
    """Load channel positions from a ``.npy``, text or probeinterface file.

    Parameters
    ----------
    path : str or os.PathLike
        Geometry file; the suffix selects the reader (see the module docstring).
    n_channels : int, optional
        When given, the file must describe exactly this many channels.

    Returns
    -------
    numpy.ndarray of float64, shape (n_channels, 2)
        Columns (x, y) in micrometres; row ``i`` is channel ``i``.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ValueError
        For an unknown suffix, malformed content, or a row count other than
        ``n_channels``.
    """
    path = os.fspath(path)
    suffix = os.path.splitext(path)[1].lower()
    if suffix not in GEOMETRY_SUFFIXES:
        raise ValueError(
            f"geometry file {path!r} has suffix {suffix!r}, "
            f"expected one of {GEOMETRY_SUFFIXES}"
        )
    if not os.path.isfile(path):
        raise FileNotFoundError(f"geometry file {path!r} does not exist")
    if suffix == ".npy":
        positions = np.load(path, allow_pickle=False)
    elif suffix == ".json":
        positions = _read_probeinterface(path)
    else:
        positions = _read_text(path)
    return check_positions(positions, n_channels, source=f"geometry file {path!r}")


def neuropixels_like_geometry(n_channels: int) -> npt.NDArray[np.float64]:
    """Channel positions of a Neuropixels 1.0-like checkerboard probe.

    Two sites per row, rows 20 um apart; x cycles through 43, 11, 59, 27 um,
    so consecutive rows are staggered by 16 um. Channels are ordered by depth.

    Parameters
    ----------
    n_channels : int
        Number of channels (>= 1).

    Returns
    -------
    positions_um : ndarray of float64, shape (n_channels, 2)
        Columns (x, y) in micrometres.
    """
    if isinstance(n_channels, bool) or not isinstance(n_channels, (int, np.integer)):
        raise ValueError(f"n_channels must be an integer, got {n_channels!r}")
    if n_channels < 1:
        raise ValueError(f"n_channels must be >= 1, got {n_channels}")
    channel = np.arange(n_channels)
    x = np.array([43.0, 11.0, 59.0, 27.0])[channel % 4]
    y = 20.0 * (channel // 2)
    return np.column_stack([x, y])
