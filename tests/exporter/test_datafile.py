"""DataFile: the bytes it writes around the page cache are exactly the bytes appended, in any mix of pieces."""

from __future__ import annotations

import os

import numpy as np
import pytest

from llama_export.exporter.datafile import ALIGN, STAGE, DataFile, aligned_empty


def pieces(rng: np.random.Generator) -> list[np.ndarray]:
    """What the weight stream appends: page-aligned tensor bodies (some with ragged tails), zero padding,
    small unaligned tensors (norm weights, int8 scales), and one unaligned tensor larger than the stage."""
    aligned = aligned_empty(3 * ALIGN + 100).numpy()
    aligned[:] = rng.integers(0, 256, aligned.size, dtype=np.uint8)
    big_unaligned = rng.integers(0, 256, STAGE + 3 * ALIGN + 5, dtype=np.uint8)[1:]  # offset 1: never aligned
    exact = aligned_empty(2 * ALIGN).numpy()
    exact[:] = 7
    return [aligned, np.zeros(-aligned.size % ALIGN, np.uint8),
            rng.integers(0, 256, 10, dtype=np.uint8), np.zeros(ALIGN - 10, np.uint8),
            exact,
            big_unaligned, np.zeros(-big_unaligned.size % ALIGN, np.uint8),
            rng.integers(0, 256, 333, dtype=np.uint8)]  # a ragged end: the file is trimmed to it


@pytest.mark.parametrize("direct", [True, False])
def test_data_file_holds_exactly_the_appended_bytes(tmp_path, direct):
    parts = pieces(np.random.default_rng(0))
    path = tmp_path / "data.bin"
    with DataFile(path, direct=direct) as f:
        for part in parts:
            f.write(part)
    expected = b"".join(part.tobytes() for part in parts)
    assert path.stat().st_size == len(expected) == f.size
    assert path.read_bytes() == expected


def test_aligned_stream_stays_direct(tmp_path):
    """Where the filesystem takes O_DIRECT, nothing in the stream's pattern makes DataFile fall back: an
    unaligned write would fail with EINVAL and switch the file to buffered writes."""
    if not hasattr(os, "O_DIRECT"):
        pytest.skip("no O_DIRECT on this platform")
    path = tmp_path / "data.bin"
    with DataFile(path) as f:
        if not f.direct:
            pytest.skip(f"{tmp_path} does not take O_DIRECT")
        for part in pieces(np.random.default_rng(1)):
            f.write(part)
        assert f.direct


def test_aligned_empty_is_page_aligned():
    for nbytes in (1, ALIGN, 5 * ALIGN + 3, 1 << 22):
        buffer = aligned_empty(nbytes)
        assert buffer.numel() == nbytes and buffer.data_ptr() % ALIGN == 0


def test_failed_write_discards_without_flushing(tmp_path):
    path = tmp_path / "data.bin"
    with pytest.raises(RuntimeError), DataFile(path) as f:
        f.write(np.ones(ALIGN + 1, np.uint8))
        raise RuntimeError("the export failed")
    assert f.fd == -1  # closed; the staged tail was not written
    assert path.stat().st_size <= ALIGN


def test_a_refused_direct_write_falls_back_to_buffered_with_the_same_bytes(tmp_path):
    """Some filesystems open O_DIRECT files but refuse the writes (EINVAL). Provoke the kernel's EINVAL with a
    write from an unaligned address, which the public `write` never issues, and check that the file switches
    to buffered writes and keeps every byte."""
    path = tmp_path / "data.bin"
    body = aligned_empty(2 * ALIGN).numpy()
    body[:] = 1
    unaligned = np.full(ALIGN + 1, 2, np.uint8)[1:]  # ALIGN bytes from an odd address
    with DataFile(path) as f:
        if not f.direct:
            pytest.skip(f"{tmp_path} does not take O_DIRECT")
        f.write(body)
        f.size += unaligned.size
        f._write(unaligned)
        assert not f.direct
        f.write(np.arange(7, dtype=np.uint8))
    assert path.read_bytes() == body.tobytes() + unaligned.tobytes() + bytes(range(7))
