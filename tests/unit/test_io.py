"""Readers, geometry, sidecar arrays and chunked recordings (shardsort.io)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from shardsort.io.arrays import (
    ChunkedRecording,
    atomic_path,
    atomic_write_bytes,
    compression_of,
    read_array,
    read_rows,
    read_rows_into,
    write_array_rows,
    read_sidecar,
    round_mantissa,
    write_array,
)
from shardsort.io.geometry import default_geometry, load_geometry
from shardsort.io.openephys import openephys_fields
from shardsort.io.raw import Recording
from shardsort.io.spikeglx import read_meta, spikeglx_fields
from shardsort.tables import PEAK_DTYPE

N_SAMPLES, N_CHANNELS = 200, 6


def make_data(
    dtype: str, n_samples: int = N_SAMPLES, n_channels: int = N_CHANNELS
) -> np.ndarray:
    """Distinct values per (sample, channel), spanning the dtype's range."""
    rng = np.random.default_rng(0)
    info = np.iinfo(dtype) if np.dtype(dtype).kind in "iu" else None
    if info is None:
        return rng.normal(0.0, 100.0, (n_samples, n_channels)).astype(dtype)
    low, high = max(info.min, -(2**40)), min(info.max, 2**40)
    return rng.integers(low, high, (n_samples, n_channels), endpoint=True).astype(dtype)


def write_raw(path: Path, data: np.ndarray, order: str, offset_bytes: int = 0) -> None:
    stored = data if order == "samples" else data.T
    path.write_bytes(b"\xab" * offset_bytes + np.ascontiguousarray(stored).tobytes())


def expected_uv(data: np.ndarray, gain: float) -> np.ndarray:
    mid = 2 ** (8 * data.dtype.itemsize - 1) if data.dtype.kind == "u" else 0
    return ((data.astype(np.float64) - mid) * gain).astype(np.float32)


# ----------------------------------------------------------------------- raw reader


@pytest.mark.parametrize("dtype", ["int16", "uint16", "int32", "float32", "float64"])
@pytest.mark.parametrize("order", ["samples", "channels"])
def test_recording_reads_windows_and_channel_subsets(tmp_path, dtype, order):
    data = make_data(dtype)
    path = tmp_path / "with space" / "rec ording.dat"
    path.parent.mkdir()
    write_raw(path, data, order, offset_bytes=24)
    gain = 0.195
    rec = Recording(
        path,
        n_channels=N_CHANNELS,
        dtype=dtype,
        sampling_rate_hz=30000.0,
        order=order,
        gain_to_uv=gain,
        offset_bytes=24,
    )
    assert (rec.n_samples, rec.n_channels, rec.dtype) == (
        N_SAMPLES,
        N_CHANNELS,
        np.dtype(dtype),
    )
    full = expected_uv(data, gain)
    for start, stop, channels in [
        (0, N_SAMPLES, None),
        (17, 93, None),
        (5, 6, [3]),
        (40, 120, [4, 1, 5]),  # unordered subset
        (40, 120, [2, 3, 4]),  # contiguous run (read as a slice)
        (0, 0, None),
        (10, 20, []),
    ]:
        out = rec.get_traces(start, stop, channels)
        cols = slice(None) if channels is None else channels
        assert out.dtype == np.float32 and out.flags.c_contiguous
        np.testing.assert_allclose(out, full[start:stop][:, cols], rtol=1e-6)


def test_unsigned_samples_are_centred_on_the_mid_value(tmp_path):
    data = np.array([[0, 32768, 65535]], dtype=np.uint16)
    path = tmp_path / "u.bin"
    write_raw(path, data, "samples")
    rec = Recording(
        path, n_channels=3, dtype="uint16", sampling_rate_hz=1000.0, gain_to_uv=2.0
    )
    np.testing.assert_array_equal(rec.get_traces(0, 1), [[-65536.0, 0.0, 65534.0]])


def test_trailing_file_channels_are_skipped(tmp_path):
    data = make_data("int16", n_channels=5)  # 4 neural + 1 sync word
    path = tmp_path / "r.bin"
    write_raw(path, data, "samples")
    rec = Recording(
        path, n_channels=4, n_file_channels=5, dtype="int16", sampling_rate_hz=1.0
    )
    np.testing.assert_array_equal(
        rec.get_traces(3, 9), data[3:9, :4].astype(np.float32)
    )
    with pytest.raises(
        ValueError, match=r"channels must lie in \[0, 4\), got values from 4 to 4"
    ):
        rec.get_traces(0, 1, [4])


def test_recording_rejects_windows_outside_the_file(tmp_path):
    path = tmp_path / "r.bin"
    write_raw(path, make_data("int16"), "samples")
    rec = Recording(path, n_channels=N_CHANNELS, dtype="int16", sampling_rate_hz=1.0)
    with pytest.raises(
        ValueError, match=r"window \[-1, 5\) must lie within \[0, 200\)"
    ):
        rec.get_traces(-1, 5)
    with pytest.raises(
        ValueError, match=r"window \[190, 201\) must lie within \[0, 200\)"
    ):
        rec.get_traces(190, 201)
    with pytest.raises(ValueError, match="stop must be >= start, got start=5, stop=4"):
        rec.get_traces(5, 4)
    with pytest.raises(
        ValueError, match="start must be an integer sample index, got 1.5"
    ):
        rec.get_traces(1.5, 4)


def test_recording_rejects_partial_samples_and_bad_parameters(tmp_path):
    path = tmp_path / "r.bin"
    path.write_bytes(b"\0" * 26)
    with pytest.raises(
        ValueError, match=r"26 bytes, not a multiple of .* 4 x 2 = 8 bytes"
    ):
        Recording(path, n_channels=4, dtype="int16", sampling_rate_hz=1.0)
    with pytest.raises(
        ValueError, match="dtype must be a numpy integer or float dtype.*'complex64'"
    ):
        Recording(path, n_channels=1, dtype="complex64", sampling_rate_hz=1.0)
    with pytest.raises(ValueError, match="order must be one of .*got 'rows'"):
        Recording(path, n_channels=1, dtype="int16", sampling_rate_hz=1.0, order="rows")
    with pytest.raises(ValueError, match="sampling_rate_hz must be > 0, got -5"):
        Recording(path, n_channels=1, dtype="int16", sampling_rate_hz=-5)


def test_reading_leaves_the_input_file_unchanged(tmp_path):
    data = make_data("int16")
    path = tmp_path / "r.bin"
    write_raw(path, data, "channels")
    before = (path.read_bytes(), os.stat(path).st_mtime_ns)
    rec = Recording(
        path,
        n_channels=N_CHANNELS,
        dtype="int16",
        sampling_rate_hz=1.0,
        order="channels",
    )
    traces = rec.get_traces(0, N_SAMPLES)
    traces += 1.0  # the output is a private copy
    assert (path.read_bytes(), os.stat(path).st_mtime_ns) == before


# ------------------------------------------------------------------------- geometry


def test_default_geometry_is_two_columns_32um_apart_20um_pitch():
    np.testing.assert_array_equal(
        default_geometry(5), [[0, 0], [32, 0], [0, 20], [32, 20], [0, 40]]
    )
    assert default_geometry(0).shape == (0, 2)


def test_geometry_from_npy_and_text(tmp_path):
    positions = np.array([[0.0, 0.0], [16.5, 20.0], [-8.0, 40.0]])
    np.save(tmp_path / "g.npy", positions)
    (tmp_path / "g.txt").write_text("# x y\n0 0\n16.5\t20\n\n-8 40\n")
    (tmp_path / "g.csv").write_text("x,y\n0,0\n16.5, 20\n-8,40\n")
    for name in ("g.npy", "g.txt", "g.csv"):
        loaded = load_geometry(tmp_path / name, n_channels=3)
        assert loaded.dtype == np.float64
        np.testing.assert_array_equal(loaded, positions)


def test_geometry_from_probeinterface_orders_by_device_channel(tmp_path):
    from probeinterface import (
        ProbeGroup,
        generate_multi_columns_probe,
        write_probeinterface,
    )

    probe = generate_multi_columns_probe(
        num_columns=2, num_contact_per_column=3, xpitch=20, ypitch=25
    )
    contacts = probe.contact_positions.copy()
    wiring = np.array([3, -1, 0, 4, 1, 2])  # contact 1 is not wired
    probe.set_device_channel_indices(wiring)
    group = ProbeGroup()
    group.add_probe(probe)
    path = tmp_path / "probe.json"
    write_probeinterface(path, group)

    loaded = load_geometry(path, n_channels=5)
    expected = np.empty((5, 2))
    for contact, channel in enumerate(wiring):
        if channel >= 0:
            expected[channel] = contacts[contact]
    np.testing.assert_array_equal(loaded, expected)


def test_geometry_errors_name_file_and_values(tmp_path):
    np.save(tmp_path / "g.npy", np.zeros((3, 2)))
    with pytest.raises(ValueError, match=r"g\.npy' has 3 rows, expected n_channels=4"):
        load_geometry(tmp_path / "g.npy", n_channels=4)
    np.save(tmp_path / "three.npy", np.zeros((3, 3)))
    with pytest.raises(
        ValueError, match=r"shape \(n_channels, 2\).*got shape \(3, 3\)"
    ):
        load_geometry(tmp_path / "three.npy")
    with pytest.raises(ValueError, match=r"suffix '\.prb', expected one of"):
        load_geometry(tmp_path / "g.prb")
    with pytest.raises(FileNotFoundError, match="nope.npy"):
        load_geometry(tmp_path / "nope.npy")
    (tmp_path / "bad.txt").write_text("0 0\n1 2 3\n")
    with pytest.raises(
        ValueError, match="line 2: expected two numbers 'x y', got 3 values"
    ):
        load_geometry(tmp_path / "bad.txt")


# ------------------------------------------------------------------- sidecar arrays


@pytest.mark.parametrize(
    "array",
    [
        np.arange(24, dtype=np.float32).reshape(4, 6),
        np.arange(-5, 5, dtype=np.int16),
        np.zeros((0, 7), dtype=np.float64),
        np.array(3.5),
        np.zeros(4, dtype=PEAK_DTYPE),
    ],
    ids=["f32-2d", "i16-1d", "empty", "0d", "structured"],
)
def test_write_array_roundtrip(tmp_path, array):
    path = tmp_path / "a.bin"
    write_array(
        path, array, sampling_rate_hz=30000.0, start_sample=np.int64(120), note="x"
    )
    for mmap in (True, False):
        back = read_array(path, mmap=mmap)
        assert back.dtype == array.dtype and back.shape == array.shape
        np.testing.assert_array_equal(back, array)
    side = read_sidecar(path)
    assert side["order"] == "C" and side["sampling_rate_hz"] == 30000.0
    assert (side["start_sample"], side["note"]) == (120, "x")
    assert sorted(os.listdir(tmp_path)) == ["a.bin", "a.bin.yaml"]  # no temporary left


def test_read_array_memmap_is_read_only_and_c_order(tmp_path):
    path = tmp_path / "a.f32"
    data = np.arange(12, dtype=np.float32).reshape(3, 4)
    write_array(path, data.T)  # a non-contiguous input is written C-order
    back = read_array(path)
    assert isinstance(back, np.memmap) and not back.flags.writeable
    np.testing.assert_array_equal(back, data.T)


def test_write_array_rejects_reserved_attrs_and_bad_rate(tmp_path):
    with pytest.raises(ValueError, match=r"reserved sidecar keys \['shape'\]"):
        write_array(tmp_path / "a.bin", np.zeros(2), shape=(3,))
    with pytest.raises(
        ValueError, match="sampling_rate_hz must be a finite number > 0 or None, got 0"
    ):
        write_array(tmp_path / "a.bin", np.zeros(2), sampling_rate_hz=0)


def test_read_array_detects_a_truncated_file(tmp_path):
    path = tmp_path / "a.bin"
    write_array(path, np.zeros((10, 2), dtype=np.float32))
    with open(path, "r+b") as handle:
        handle.truncate(40)
    with pytest.raises(
        ValueError, match="holds 40 bytes but its sidecar describes 80 bytes"
    ):
        read_array(path)


# ------------------------------------------------------------- compressed arrays


def noise_int16(n_samples: int, n_channels: int, steps_per_sd: float = 32.0) -> np.ndarray:
    """Preprocessed-like chunk: Gaussian noise in int16 steps, a few saturated values."""
    rng = np.random.default_rng(5)
    data = np.rint(rng.standard_normal((n_samples, n_channels)) * steps_per_sd)
    data[::97, 0] = 32767
    data[::89, -1] = -32767
    return np.clip(data, -32767, 32767).astype(np.int16)


@pytest.mark.parametrize("compression", ["lz4", "zstd"])
@pytest.mark.parametrize(
    ("dtype", "shape", "block_rows"),
    [
        ("int16", (1000, 7), 64),  # 15 full blocks and a partial one
        ("int16", (128, 3), 64),  # exactly two blocks
        ("int16", (5, 3), 2048),  # one short block
        ("int16", (0, 4), 16),  # empty: no block
        ("float32", (300, 2), 50),
        ("int16", (77,), 10),  # 1-D
    ],
)
def test_compressed_array_roundtrip_is_exact(tmp_path, compression, dtype, shape, block_rows):
    data = (noise_int16(shape[0], shape[1] if len(shape) > 1 else 1).reshape(shape)
            if dtype == "int16" else make_data(dtype, *shape))
    path = tmp_path / "c.bin"
    write_array(path, data, compression=compression, block_rows=block_rows,
                sampling_rate_hz=30000.0, start_sample=7, scale=1 / 32)
    side = read_sidecar(path)
    assert side["compression"]["cname"] == compression and compression_of(side) == compression
    assert (side["start_sample"], side["scale"], side["shape"]) == (7, 1 / 32, shape)
    assert side["compression"]["file_bytes"] == os.path.getsize(path)
    for mmap in (True, False):
        back = read_array(path, mmap=mmap)
        assert back.dtype == data.dtype and back.shape == data.shape
        np.testing.assert_array_equal(back, data)
    assert sorted(os.listdir(tmp_path)) == ["c.bin", "c.bin.yaml"]


def test_compressed_int16_noise_is_smaller_than_plain(tmp_path):
    data = noise_int16(30000, 16)
    write_array(tmp_path / "c.bin", data, compression="lz4")
    write_array(tmp_path / "p.bin", data)
    assert compression_of(read_sidecar(tmp_path / "p.bin")) == "none"
    ratio = os.path.getsize(tmp_path / "c.bin") / os.path.getsize(tmp_path / "p.bin")
    assert ratio < 0.7  # ~0.57 at 32 steps per noise SD


def test_read_rows_decodes_any_window_of_blocks(tmp_path):
    data = noise_int16(200, 3)
    write_array(tmp_path / "c.bin", data, compression="lz4", block_rows=16)
    write_array(tmp_path / "p.bin", data)
    for start, stop in [(0, 200), (0, 1), (15, 17), (16, 32), (31, 33), (190, 200),
                        (50, 50), (0, 16), (199, 200), (37, 151)]:
        for name in ("c.bin", "p.bin"):
            np.testing.assert_array_equal(
                read_rows(tmp_path / name, start, stop), data[start:stop]
            )
    with pytest.raises(ValueError, match=r"rows \[190, 201\) of .*c\.bin' must lie within"):
        read_rows(tmp_path / "c.bin", 190, 201)


def test_read_rows_into_equals_read_rows_times_scale(tmp_path):
    """Block-wise conversion gives the values of the whole read, columns and
    scale applied, for compressed and plain files, across block borders."""
    data = noise_int16(200, 5)
    write_array(tmp_path / "c.bin", data, compression="lz4", block_rows=16)
    write_array(tmp_path / "p.bin", data)
    columns = np.array([4, 0, 2])
    for start, stop in [(0, 200), (15, 17), (16, 32), (37, 151), (50, 50), (199, 200)]:
        for name in ("c.bin", "p.bin"):
            for cols, scale in ((None, 1.0), (columns, 1 / 32), (None, 0.37)):
                width = 5 if cols is None else len(cols)
                out = np.full((stop - start, width), np.nan, dtype=np.float32)
                read_rows_into(tmp_path / name, start, stop, out, columns=cols, scale=scale)
                expected = read_rows(tmp_path / name, start, stop).astype(np.float32)
                if cols is not None:
                    expected = expected[:, cols]
                if scale != 1.0:
                    expected *= np.float32(scale)
                np.testing.assert_array_equal(out, expected)
    with pytest.raises(ValueError, match=r"out must have shape \(10, columns\)"):
        read_rows_into(tmp_path / "c.bin", 0, 10, np.zeros((9, 5), np.float32))


def test_chunked_recording_of_compressed_chunks_equals_the_plain_one(tmp_path):
    """Windows across block and chunk borders read the same from compressed
    chunks, plain chunks and the concatenated array (also a mix of both)."""
    data = noise_int16(300, 5)
    lengths = [100, 37, 0, 163]
    (tmp_path / "plain").mkdir()
    plain = write_chunks(tmp_path / "plain", data, lengths, scale=1 / 32)
    packed, start = [], 0
    (tmp_path / "packed").mkdir()
    for index, length in enumerate(lengths):
        path = tmp_path / "packed" / f"t{index:05d}.bin"
        write_array(path, data[start : start + length], compression="lz4", block_rows=16,
                    sampling_rate_hz=1000.0, start_sample=start, scale=1 / 32)
        packed.append(path)
        start += length
    whole = data.astype(np.float32) / 32
    recordings = [ChunkedRecording(plain), ChunkedRecording(packed),
                  ChunkedRecording([packed[0], plain[1], packed[2], plain[3]]),
                  ChunkedRecording(packed[1:], n_samples=300)]
    for start, stop in [(0, 300), (-20, 20), (90, 140), (99, 101), (100, 137),
                        (136, 138), (15, 17), (290, 320), (131, 260)]:
        expected = padded_slice(whole, start, stop)
        for rec in recordings[:3]:
            np.testing.assert_array_equal(rec.get_traces(start, stop), expected)
            np.testing.assert_array_equal(rec.get_traces(start, stop, channels=[4, 1]),
                                          expected[:, [4, 1]])
        if start >= 100:
            np.testing.assert_array_equal(recordings[3].get_traces(start, stop), expected)


def flip_byte(path: Path, position: int) -> None:
    with open(path, "r+b") as handle:
        handle.seek(position)
        byte = handle.read(1)
        handle.seek(position)
        handle.write(bytes([byte[0] ^ 0xFF]))


def test_corrupted_or_truncated_compressed_file_names_the_file(tmp_path):
    data = noise_int16(500, 4)
    path = tmp_path / "t00003.bin"
    write_array(path, data, compression="lz4", block_rows=64, start_sample=0)
    size = os.path.getsize(path)
    flip_byte(path, size - 10)  # inside the last block
    rec = ChunkedRecording([path], n_samples=500)
    np.testing.assert_array_equal(rec.get_traces(0, 64), data[:64])  # other blocks fine
    with pytest.raises(ValueError, match=r"t00003\.bin'.*block 7 .*checksum"):
        rec.get_traces(400, 500)
    with pytest.raises(ValueError, match=r"t00003\.bin'.*block 7 .*checksum"):
        read_array(path)

    write_array(path, data, compression="lz4", block_rows=64)
    with open(path, "r+b") as handle:
        handle.truncate(size - 100)
    with pytest.raises(ValueError, match=r"t00003\.bin' holds .* bytes but its sidecar "
                                         r"describes a compressed file of"):
        read_array(path)

    write_array(path, data, compression="lz4", block_rows=64)
    flip_byte(path, 0)  # the header
    with pytest.raises(ValueError, match="does not start with the compressed-array header"):
        read_array(path)


def test_sidecar_and_data_that_disagree_are_reported(tmp_path):
    data = noise_int16(100, 2)
    path = tmp_path / "a.bin"
    write_array(path, data, compression="zstd", block_rows=10)
    packed_side = (tmp_path / "a.bin.yaml").read_text()
    write_array(path, data, compression="none")  # sidecar says plain, file plain
    plain_size = os.path.getsize(path)
    (tmp_path / "a.bin.yaml").write_text(packed_side)  # now the sidecar says compressed
    with pytest.raises(ValueError, match=r"a\.bin' holds 400 bytes but its sidecar describes a "
                                         "compressed file"):
        read_array(path)
    side = read_sidecar(path)
    side["compression"]["file_bytes"] = plain_size
    side["dtype"] = side["dtype"].str
    side["shape"] = list(side["shape"])
    import yaml

    (tmp_path / "a.bin.yaml").write_text(yaml.safe_dump(side))
    with pytest.raises(ValueError, match="does not start with the compressed-array header"):
        read_array(path)
    # A plain sidecar over a compressed file: the size check names it.
    write_array(path, data, compression="lz4", start_sample=0)
    write_array(tmp_path / "b.bin", data, start_sample=0)
    os.replace(tmp_path / "b.bin.yaml", tmp_path / "a.bin.yaml")
    with pytest.raises(ValueError, match=r"a\.bin' holds \d+ bytes but its sidecar describes 400"):
        ChunkedRecording([path]).get_traces(0, 10)


def test_round_mantissa_keeps_the_relative_error_below_half_a_step():
    rng = np.random.default_rng(1)
    values = (rng.standard_normal(20000) * 10.0 ** rng.uniform(-3, 3, 20000)).astype(np.float32)
    for bits in (5, 7, 12):
        rounded = round_mantissa(values, bits=bits)
        assert rounded.dtype == np.float32
        relative = np.abs(rounded.astype(np.float64) - values) / np.abs(values)
        assert relative.max() <= 2.0 ** -(bits + 1)
        assert not (rounded.view(np.uint32) & np.uint32((1 << (23 - bits)) - 1)).any()
        np.testing.assert_array_equal(round_mantissa(rounded, bits=bits), rounded)  # idempotent
    exact = np.array([1.0, 1.0 + 2**-8, 1.0 + 3 * 2**-9, -2.0 - 2**-8, 0.0, -0.0, np.inf, np.nan],
                     np.float32)
    np.testing.assert_array_equal(
        round_mantissa(exact, bits=7),
        np.array([1.0, 1.0, 1.0 + 2**-7, -2.0, 0.0, -0.0, np.inf, np.nan], np.float32),
    )  # ties to even; zeros, infinities and NaN unchanged
    np.testing.assert_array_equal(round_mantissa(values, bits=23), values)
    with pytest.raises(ValueError, match=r"bits must be an integer in \[1, 23\], got 0"):
        round_mantissa(values, bits=0)


def test_write_array_rounds_float32_mantissas_when_asked(tmp_path):
    data = make_data("float32", 500, 4)
    path = tmp_path / "f.f32"
    write_array(path, data, compression="lz4", mantissa_bits=7, start_sample=0)
    assert read_sidecar(path)["compression"]["mantissa_bits"] == 7
    np.testing.assert_array_equal(read_array(path), round_mantissa(data, bits=7))
    write_array(tmp_path / "exact.f32", data, compression="lz4")
    assert os.path.getsize(path) < 0.6 * os.path.getsize(tmp_path / "exact.f32")
    with pytest.raises(ValueError, match="mantissa_bits needs compression and a float32 array"):
        write_array(path, data, mantissa_bits=7)
    with pytest.raises(ValueError, match="got compression='lz4' and dtype int16"):
        write_array(path, noise_int16(10, 2), compression="lz4", mantissa_bits=7)


def test_write_array_rejects_bad_compression(tmp_path):
    with pytest.raises(ValueError, match=r"compression must be one of \['none', 'lz4', "
                                         r"'zstd'\] or None, got 'gzip'"):
        write_array(tmp_path / "a.bin", np.zeros((4, 2), np.int16), compression="gzip")
    with pytest.raises(ValueError, match="a compressed array must be at least 1-D"):
        write_array(tmp_path / "a.bin", np.array(3), compression="lz4")
    with pytest.raises(ValueError, match="block_rows must be an integer >= 1, got 0"):
        write_array(tmp_path / "a.bin", np.zeros((4, 2), np.int16), compression="lz4",
                    block_rows=0)


def test_failed_write_keeps_the_previous_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "out.tsv"
    atomic_write_bytes(path, b"old")
    with pytest.raises(RuntimeError, match="boom"), atomic_path(path) as tmp:
        Path(tmp).write_bytes(b"half-written")
        raise RuntimeError("boom")
    assert path.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["out.tsv"]
    with atomic_path(path) as tmp:
        assert os.path.dirname(tmp) == str(tmp_path) and tmp != str(path)
        Path(tmp).write_bytes(b"new")
    assert path.read_bytes() == b"new"


def test_atomic_path_works_with_writers_that_append_a_suffix(tmp_path):
    with atomic_path(tmp_path / "parts.npz") as tmp:
        np.savez(tmp, x=np.arange(3))
    with np.load(tmp_path / "parts.npz") as loaded:
        np.testing.assert_array_equal(loaded["x"], [0, 1, 2])
    assert os.listdir(tmp_path) == ["parts.npz"]


def test_interrupted_write_array_never_leaves_a_complete_looking_pair(
    tmp_path, monkeypatch
):
    path = tmp_path / "a.bin"
    write_array(path, np.zeros(3, dtype=np.int16))
    real_replace, calls = os.replace, []

    def replace_then_die(src, dst):
        calls.append(dst)
        if str(dst) == str(path):  # the final rename of the data file
            raise KeyboardInterrupt
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace_then_die)
    with pytest.raises(KeyboardInterrupt):
        write_array(path, np.ones(5, dtype=np.float32))
    assert calls == [str(path) + ".yaml", str(path)]  # sidecar first, data last
    assert sorted(os.listdir(tmp_path)) == ["a.bin.yaml"]  # no data file, no temp


def test_overwriting_an_array_replaces_data_and_sidecar(tmp_path):
    path = tmp_path / "a.bin"
    write_array(path, np.zeros(3, dtype=np.int16))
    write_array(path, np.ones((2, 2), dtype=np.float64), sampling_rate_hz=10.0)
    np.testing.assert_array_equal(read_array(path), np.ones((2, 2)))


# ---------------------------------------------------------------- chunked recording


def write_chunks(
    folder: Path, data: np.ndarray, lengths: list[int], **attrs
) -> list[Path]:
    paths, start = [], 0
    for index, length in enumerate(lengths):
        path = folder / f"t{index:05d}.bin"
        write_array(
            path,
            data[start : start + length],
            sampling_rate_hz=1000.0,
            start_sample=start,
            **attrs,
        )
        paths.append(path)
        start += length
    return paths


def padded_slice(data: np.ndarray, start: int, stop: int) -> np.ndarray:
    out = np.zeros((stop - start, data.shape[1]), dtype=np.float32)
    lo, hi = max(start, 0), min(stop, len(data))
    if lo < hi:
        out[lo - start : hi - start] = data[lo:hi]
    return out


def test_chunked_recording_equals_slicing_the_concatenated_array(tmp_path):
    data = make_data("float32", n_samples=100, n_channels=4)
    paths = write_chunks(tmp_path, data, [30, 1, 0, 29, 40])
    rec = ChunkedRecording(list(reversed(paths)))  # any order
    assert (rec.n_samples, rec.n_channels, rec.sampling_rate_hz) == (100, 4, 1000.0)
    for start, stop in [
        (0, 100),
        (25, 35),
        (29, 31),
        (30, 31),
        (-10, 5),
        (95, 120),
        (-5, 105),
        (-20, -10),
        (100, 110),
        (60, 60),
    ]:
        np.testing.assert_array_equal(
            rec.get_traces(start, stop), padded_slice(data, start, stop)
        )
    np.testing.assert_array_equal(
        rec.get_traces(20, 70, channels=[3, 0]), data[20:70][:, [3, 0]]
    )


def test_chunked_recording_applies_int16_scale(tmp_path):
    stored = make_data("int16", n_samples=50, n_channels=3)
    write_chunks(tmp_path, stored, [20, 30], scale=0.5)
    rec = ChunkedRecording.from_directory(tmp_path)
    np.testing.assert_array_equal(
        rec.get_traces(-3, 53), padded_slice(stored * 0.5, -3, 53)
    )


def test_chunked_recording_pad_none_raises_outside(tmp_path):
    rec = ChunkedRecording(write_chunks(tmp_path, np.ones((10, 2), np.float32), [10]))
    with pytest.raises(ValueError, match=r"window \[-1, 5\) reaches outside \[0, 10\)"):
        rec.get_traces(-1, 5, pad=None)
    with pytest.raises(ValueError, match="pad must be 'zero' or None, got 'edge'"):
        rec.get_traces(0, 5, pad="edge")


def test_chunked_recording_rejects_gaps_and_overlaps(tmp_path):
    data = np.zeros((30, 2), np.float32)
    write_array(tmp_path / "a.bin", data[:10], start_sample=0)
    write_array(tmp_path / "b.bin", data[:10], start_sample=12)
    with pytest.raises(
        ValueError,
        match=r"gap between .*a\.bin' \(ends at sample 10\) and "
        r".*b\.bin' \(start_sample=12\)",
    ):
        ChunkedRecording.from_directory(tmp_path)
    write_array(tmp_path / "b.bin", data[:10], start_sample=8)
    with pytest.raises(ValueError, match=r"overlap between .*start_sample=8"):
        ChunkedRecording.from_directory(tmp_path)
    write_array(tmp_path / "b.bin", np.zeros((10, 3), np.float32), start_sample=10)
    with pytest.raises(ValueError, match="has 3 channels, expected 2"):
        ChunkedRecording.from_directory(tmp_path)


# ------------------------------------------------------------------------- SpikeGLX


def write_spikeglx(
    folder: Path, data: np.ndarray, meta: dict[str, str], stem="run_g0_t0.imec0.ap"
) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    bin_path = folder / f"{stem}.bin"
    bin_path.write_bytes(data.astype(np.int16).tobytes())
    lines = {"fileSizeBytes": str(bin_path.stat().st_size), **meta}
    (folder / f"{stem}.meta").write_text(
        "".join(f"{k}={v}\n" for k, v in lines.items())
    )
    return bin_path


def np1_meta(n_ap: int, gains=None) -> dict[str, str]:
    gains = gains or [500] * n_ap
    imro = f"(0,{n_ap})" + "".join(f"({c} 0 0 {g} 250 1)" for c, g in enumerate(gains))
    geom = "(NP1000,1,0,70)" + "".join(
        f"(0:{11 + 16 * (c % 2)}:{20 * (c // 2)}:1)" for c in range(n_ap)
    )
    return {
        "typeThis": "imec",
        "imSampRate": "30000.5",
        "nSavedChans": str(n_ap + 1),
        "snsApLfSy": f"{n_ap},0,1",
        "snsSaveChanSubset": "all",
        "imAiRangeMax": "0.6",
        "imMaxInt": "512",
        "imDatPrb_type": "0",
        "~imroTbl": imro,
        "~snsGeomMap": geom,
    }


def test_spikeglx_np1_fields_exclude_the_sync_channel(tmp_path):
    data = make_data("int16", n_samples=40, n_channels=5)
    bin_path = write_spikeglx(tmp_path / "sp ace", data, np1_meta(4))
    for given in (bin_path, bin_path.with_suffix(".meta")):
        fields = spikeglx_fields(given)
        assert fields.data_path == str(bin_path)
        assert (
            fields.n_channels,
            fields.n_file_channels,
            fields.dtype,
            fields.order,
        ) == (4, 5, "int16", "samples")
        assert fields.sampling_rate_hz == 30000.5
        assert fields.gain_to_uv == pytest.approx(0.6 / 512 / 500 * 1e6)
        # probeinterface's NP 1.0 geometry (no imDatPrb_pn: read from ~imroTbl),
        # not the toy ~snsGeomMap; electrodes 0-3, staggered rows 20 um apart.
        np.testing.assert_array_equal(
            fields.positions_um, [[16, 0], [48, 0], [0, 20], [32, 20]]
        )
        np.testing.assert_allclose(fields.sample_shifts, [0, 0, 1 / 13, 1 / 13])
        assert fields.shank_ids is None
    rec = Recording(
        fields.data_path,
        n_channels=4,
        n_file_channels=5,
        dtype="int16",
        sampling_rate_hz=fields.sampling_rate_hz,
        gain_to_uv=fields.gain_to_uv,
    )
    np.testing.assert_allclose(
        rec.get_traces(0, 40), data[:, :4] * fields.gain_to_uv, rtol=1e-6
    )
    assert read_meta(bin_path.with_suffix(".meta"))["imroTbl"].startswith("(0,4)")


def test_spikeglx_np2_one_shank_of_four_and_fixed_gain(tmp_path):
    meta = {
        "imSampRate": "30000",
        "nSavedChans": "3",
        "snsApLfSy": "2,0,1",
        "imAiRangeMax": "0.5",
        "imMaxInt": "8192",
        "imDatPrb_type": "24",
        "~imroTbl": "(24,2)(0 1 0 1 0)(1 1 0 1 1)",
        "~snsShankMap": "(4,2,640)(1:0:0:1)(1:1:3:1)",
    }
    fields = spikeglx_fields(write_spikeglx(tmp_path, np.zeros((4, 3)), meta))
    assert fields.gain_to_uv == pytest.approx(0.5 / 8192 / 80 * 1e6)
    # Both channels on shank 1 (x offset by the 250 um shank pitch): one
    # shank in use, so no shank ids.
    np.testing.assert_array_equal(fields.positions_um, [[250, 0], [282, 0]])
    assert fields.shank_ids is None
    np.testing.assert_allclose(fields.sample_shifts, [0, 0])


def test_spikeglx_saved_subset_uses_the_saved_channels_gains(tmp_path):
    meta = np1_meta(4, gains=[1000, 500, 500, 500])
    meta.update(
        {"snsApLfSy": "2,0,1", "nSavedChans": "3", "snsSaveChanSubset": "2:3,768"}
    )
    meta.pop("~snsGeomMap")
    fields = spikeglx_fields(write_spikeglx(tmp_path, np.zeros((4, 3)), meta))
    assert fields.gain_to_uv == pytest.approx(0.6 / 512 / 500 * 1e6)
    np.testing.assert_array_equal(fields.positions_um, [[0, 20], [32, 20]])
    np.testing.assert_allclose(fields.sample_shifts, [1 / 13, 1 / 13])


def test_spikeglx_errors(tmp_path):
    with pytest.raises(
        ValueError, match=r"different amplifier gains \[500.0, 1000.0\]"
    ):
        spikeglx_fields(
            write_spikeglx(tmp_path / "a", np.zeros((2, 3)), np1_meta(2, [500, 1000]))
        )
    meta = np1_meta(2)
    path = write_spikeglx(tmp_path / "b", np.zeros((2, 3)), meta)
    with open(path, "ab") as handle:
        handle.write(b"\0\0")
    with pytest.raises(
        ValueError, match="holds 14 bytes but its meta says fileSizeBytes=12"
    ):
        spikeglx_fields(path)
    meta["nSavedChans"] = "4"
    with pytest.raises(
        ValueError, match="snsApLfSy=2,0,1 sums to 3, expected nSavedChans=4"
    ):
        spikeglx_fields(write_spikeglx(tmp_path / "c", np.zeros((2, 3)), meta))
    path.unlink()
    with pytest.raises(FileNotFoundError, match=r"run_g0_t0\.imec0\.ap\.bin"):
        spikeglx_fields(path.with_suffix(".meta"))


def test_spikeglx_nidq_gain(tmp_path):
    meta = {
        "typeThis": "nidq",
        "niSampRate": "25000",
        "nSavedChans": "3",
        "snsMnMaXaDw": "2,0,0,1",
        "niAiRangeMax": "5",
        "niMaxInt": "32768",
        "niMNGain": "200",
    }
    fields = spikeglx_fields(
        write_spikeglx(tmp_path, np.zeros((2, 3)), meta, stem="run_g0_t0.nidq")
    )
    assert (fields.n_channels, fields.n_file_channels) == (2, 3)
    assert fields.gain_to_uv == pytest.approx(5 / 32768 / 200 * 1e6)


# ----------------------------------------------------------------------- Open Ephys


def write_openephys(
    root: Path, streams: list[tuple[str, np.ndarray, list[dict]]]
) -> Path:
    continuous = []
    for folder, data, channels in streams:
        (root / "continuous" / folder).mkdir(parents=True)
        (root / "continuous" / folder / "continuous.dat").write_bytes(
            data.astype(np.int16).tobytes()
        )
        continuous.append(
            {
                "folder_name": folder + "/",
                "stream_name": folder.split("-")[0],
                "sample_rate": 30000.0,
                "num_channels": data.shape[1],
                "channels": channels,
            }
        )
    oebin = root / "structure.oebin"
    oebin.write_text(json.dumps({"GUI version": "0.6.0", "continuous": continuous}))
    return oebin


def neural(n: int, bit_volts: float = 0.195) -> list[dict]:
    return [
        {"channel_name": f"CH{i + 1}", "bit_volts": bit_volts, "units": "uV"}
        for i in range(n)
    ]


def test_openephys_first_stream_and_stream_selection(tmp_path):
    adc = [{"channel_name": "ADC1", "bit_volts": 0.00015, "units": "V"}]
    a = make_data("int16", n_samples=30, n_channels=4)
    b = make_data("int16", n_samples=20, n_channels=2)
    oebin = write_openephys(
        tmp_path,
        [
            ("Rhythm_FPGA-100.0", a, neural(3) + adc),
            ("Probe-B-101.0", b, neural(2, 0.5)),
        ],
    )
    for given in (oebin, tmp_path):
        fields = openephys_fields(given)
        assert fields.data_path == str(
            tmp_path / "continuous" / "Rhythm_FPGA-100.0" / "continuous.dat"
        )
        assert (fields.n_channels, fields.n_file_channels, fields.gain_to_uv) == (
            3,
            4,
            0.195,
        )
        assert (fields.sampling_rate_hz, fields.dtype, fields.positions_um) == (
            30000.0,
            "int16",
            None,
        )
    second = tmp_path / "continuous" / "Probe-B-101.0" / "continuous.dat"
    for fields in (
        openephys_fields(oebin, stream="Probe-B-101.0"),
        openephys_fields(second),
    ):
        assert (fields.data_path, fields.n_channels, fields.gain_to_uv) == (
            str(second),
            2,
            0.5,
        )
    rec = Recording(
        fields.data_path,
        n_channels=2,
        dtype="int16",
        sampling_rate_hz=30000.0,
        gain_to_uv=fields.gain_to_uv,
    )
    np.testing.assert_array_equal(rec.get_traces(0, 20), b * 0.5)
    with pytest.raises(
        ValueError,
        match=r"stream must be one of "
        r"\['Rhythm_FPGA-100.0', 'Probe-B-101.0'\].*got 'C'",
    ):
        openephys_fields(oebin, stream="C")


def test_openephys_errors(tmp_path):
    oebin = write_openephys(
        tmp_path, [("S-1", np.zeros((3, 2)), neural(1) + neural(1, 0.1))]
    )
    with pytest.raises(ValueError, match=r"different bit_volts \[0.1, 0.195\]"):
        openephys_fields(oebin)
    with pytest.raises(FileNotFoundError, match="structure.oebin"):
        openephys_fields(tmp_path / "elsewhere")


def test_chunked_recording_partial_run_of_chunks(tmp_path):
    """A job opens only the chunks around its own and still pads at the edges."""
    from shardsort.io.arrays import ChunkedRecording, write_array

    rng = np.random.default_rng(3)
    full = rng.standard_normal((100, 3)).astype(np.float32)
    paths = []
    for i, lo in enumerate(range(0, 100, 25)):
        p = tmp_path / f"t{i}.bin"
        write_array(p, full[lo : lo + 25], sampling_rate_hz=1000.0, start_sample=lo)
        paths.append(p)
    mid = ChunkedRecording(paths[1:3], n_samples=100)
    assert mid.n_samples == 100
    np.testing.assert_array_equal(mid.get_traces(30, 70), full[30:70])
    with pytest.raises(ValueError, match=r"do not hold them all"):
        mid.get_traces(20, 40)
    gappy = ChunkedRecording([paths[0], paths[2]], n_samples=100)
    np.testing.assert_array_equal(gappy.get_traces(5, 20), full[5:20])
    np.testing.assert_array_equal(gappy.get_traces(55, 70), full[55:70])
    with pytest.raises(ValueError, match=r"needs samples \[20, 55\)"):
        gappy.get_traces(20, 55)
    last = ChunkedRecording(paths[2:], n_samples=100)
    window = last.get_traces(90, 110)
    np.testing.assert_array_equal(window[:10], full[90:])
    assert not window[10:].any()
    first = ChunkedRecording(paths[:1], n_samples=100)
    assert not first.get_traces(-5, 0).any()


def test_round_mantissa_in_place_and_in_blocks_equals_the_copy(monkeypatch):
    import shardsort.io.arrays as arrays

    rng = np.random.default_rng(2)
    values = rng.normal(size=(301, 7)).astype(np.float32)
    values[5, 3] = np.nan
    expected = round_mantissa(values, bits=7)
    monkeypatch.setattr(arrays, "_ROUND_BLOCK_VALUES", 100)  # many blocks, a short last one
    blocked = round_mantissa(values, bits=7)
    np.testing.assert_array_equal(blocked.view(np.uint32), expected.view(np.uint32))
    in_place = values.copy()
    assert round_mantissa(in_place, bits=7, out=in_place) is in_place
    np.testing.assert_array_equal(in_place.view(np.uint32), expected.view(np.uint32))
    with pytest.raises(ValueError, match="out must be a C-contiguous float32 array"):
        round_mantissa(values, bits=7, out=np.empty((7, 301), np.float32))


def test_reuse_freed_memory_keeps_large_arrays_working():
    """glibc accepts the settings on Linux; large arrays still allocate, fill and free."""
    import sys

    from shardsort.jobs import reuse_freed_memory

    accepted = reuse_freed_memory()
    assert accepted == sys.platform.startswith("linux")
    for _ in range(3):
        block = np.full((5_000_000, 2), 3.0, dtype=np.float64)  # 80 MB: above mmap's 32 MB
        assert float(block.sum()) == 3.0e7
        del block


@pytest.mark.parametrize("compression", ["lz4", "zstd", "none"])
def test_array_written_by_rows_is_the_file_write_array_writes(tmp_path, compression):
    data = noise_int16(5000, 7)
    write_array(tmp_path / "whole.bin", data, compression=compression, block_rows=512,
                sampling_rate_hz=30000.0, start_sample=123, scale=1 / 32)
    parts = [data[:1024], data[1024:1024], data[1024:4096], data[4096:]]
    write_array_rows(tmp_path / "rows.bin", iter(parts), shape=data.shape, dtype=np.int16,
                     compression=compression, block_rows=512, sampling_rate_hz=30000.0,
                     start_sample=123, scale=1 / 32)
    assert (tmp_path / "rows.bin").read_bytes() == (tmp_path / "whole.bin").read_bytes()
    assert ((tmp_path / "rows.bin.yaml").read_text()
            == (tmp_path / "whole.bin.yaml").read_text())
    np.testing.assert_array_equal(read_array(tmp_path / "rows.bin"), data)


def test_array_written_by_rows_checks_its_blocks_and_leaves_nothing(tmp_path):
    data = noise_int16(3000, 4)
    cases = [
        ([data[:1000], data[1000:]], "multiple of block_rows=512"),
        ([data[:1024], data[1024:2048]], "the blocks hold 2048 rows, expected 3000"),
        ([data[:, :3]], "a block of shape"),
    ]
    for parts, match in cases:
        with pytest.raises(ValueError, match=match):
            write_array_rows(tmp_path / "x.bin", parts, shape=data.shape, dtype=np.int16,
                             compression="lz4", block_rows=512)
        assert list(tmp_path.iterdir()) == []
