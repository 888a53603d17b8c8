"""Reading and writing safetensors files one tensor at a time.

The format: 8 bytes (little-endian u64) giving the header length, a JSON header mapping each
tensor name to ``{"dtype", "shape", "data_offsets": [begin, end]}`` (offsets relative to the
end of the header, contiguous, no gaps) plus an optional ``"__metadata__"`` of strings, then the
bytes. The ``safetensors`` package reads and writes whole dicts of tensors; pruning a model
larger than memory needs less: a tensor's bytes mapped from disk while it is scored or sliced,
then dropped, and an output file written tensor by tensor behind a header computed first.
"""

from __future__ import annotations

import json
import mmap
import os
from dataclasses import dataclass
from pathlib import Path

import torch

DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
}
NAMES = {v: k for k, v in DTYPES.items()}
_MAX_HEADER = 100 * 2**20  # the reference implementation refuses headers above 100 MB
_PAGE = mmap.PAGESIZE
_CHUNK = 64 * 2**20  # bytes copied per write of an unchanged tensor


class SafetensorsFormatError(ValueError):
    """A file that is not a well-formed safetensors file (the message says what is wrong)."""


@dataclass(frozen=True)
class TensorEntry:
    """One tensor of a safetensors file: absolute byte range ``[begin, end)`` in the file."""

    key: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    begin: int
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.begin

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n


@dataclass
class Header:
    path: Path
    entries: dict[str, TensorEntry]  # in file order
    metadata: dict[str, str]
    file_size: int


def read_header(path) -> Header:
    """Parse and check the header of a safetensors file (no tensor data is read)."""
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) < 8:
            raise SafetensorsFormatError(f"{path}: {size} bytes, too short for a header")
        n = int.from_bytes(raw, "little")
        if n > _MAX_HEADER or 8 + n > size:
            raise SafetensorsFormatError(
                f"{path}: header length {n} does not fit the file ({size} bytes)"
            )
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise SafetensorsFormatError(f"{path}: header is not JSON ({exc})") from exc
    if not isinstance(header, dict):
        raise SafetensorsFormatError(f"{path}: header is not a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    data_start = 8 + n
    entries = []
    for key, info in header.items():
        try:
            dtype = DTYPES[info["dtype"]]
            shape = tuple(int(s) for s in info["shape"])
            begin, end = (int(x) for x in info["data_offsets"])
        except (KeyError, TypeError, ValueError) as exc:
            raise SafetensorsFormatError(
                f"{path}: tensor {key!r} has a bad header entry {info!r}"
            ) from exc
        entry = TensorEntry(key, dtype, shape, data_start + begin, data_start + end)
        itemsize = torch.empty((), dtype=dtype).element_size()
        if (
            min(shape, default=0) < 0
            or entry.nbytes != entry.numel * itemsize
            or begin < 0
            or (entry.end > size)
        ):
            raise SafetensorsFormatError(
                f"{path}: tensor {key!r} ({info['dtype']} "
                f"{list(shape)}) has bytes [{begin}, {end}) that do "
                f"not match its shape or the file ({size} bytes)"
            )
        entries.append(entry)
    entries.sort(key=lambda e: e.begin)
    return Header(path, {e.key: e for e in entries}, dict(metadata), size)


class MappedFile:
    """A safetensors file mapped read-only (copy-on-write, never written back); ``tensor()``
    views a tensor's bytes without copying them, ``release()`` gives the pages back so the
    process's resident memory stays at a few tensors whatever the file's size."""

    def __init__(self, header: Header) -> None:
        self.header = header
        self._file = open(header.path, "rb")
        self._map = (
            mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_COPY) if header.file_size else None
        )

    def tensor(self, entry: TensorEntry) -> torch.Tensor:
        if entry.numel == 0:
            return torch.empty(entry.shape, dtype=entry.dtype)
        itemsize = torch.empty((), dtype=entry.dtype).element_size()
        if entry.begin % itemsize:  # unaligned: a copy, so kernels see aligned data
            raw = torch.frombuffer(
                self._map, dtype=torch.uint8, count=entry.nbytes, offset=entry.begin
            ).clone()
            return raw.view(entry.dtype).view(entry.shape)
        return torch.frombuffer(
            self._map, dtype=entry.dtype, count=entry.numel, offset=entry.begin
        ).view(entry.shape)

    def raw(self, begin: int, end: int) -> memoryview:
        return memoryview(self._map)[begin:end]

    def prefetch(self, begin: int, end: int) -> None:
        """Ask the kernel to start reading ``[begin, end)`` now (asynchronously), so the next
        tensor's pages arrive while this one is being worked on."""
        if self._map is None or end <= begin:
            return
        start = begin - begin % _PAGE
        self._map.madvise(mmap.MADV_WILLNEED, start, end - start)

    def release(self, begin: int, end: int) -> None:
        """Drop the pages of ``[begin, end)`` from this process (the page cache keeps them)."""
        if self._map is None or end <= begin:
            return
        start = begin - begin % _PAGE
        self._map.madvise(mmap.MADV_DONTNEED, start, end - start)

    def close(self) -> None:
        if self._map is not None:
            try:
                self._map.close()
            except BufferError:  # a tensor still views it; the mapping goes with the last one
                pass
            self._map = None
        self._file.close()

    def __enter__(self) -> MappedFile:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def write_chunk(f, data) -> None:
    """Every byte of an output file goes through here (tests inject disk errors)."""
    f.write(data)


def output_layout(
    items: list[tuple[str, torch.dtype, tuple[int, ...]]], metadata: dict[str, str]
) -> tuple[bytes, list[str]]:
    """Header bytes (padded to 8 bytes) for tensors written in the returned key order: largest
    element size first, so every tensor starts aligned to its element size."""

    def itemsize(dtype):
        return torch.empty((), dtype=dtype).element_size()

    order = sorted(range(len(items)), key=lambda i: -itemsize(items[i][1]))
    header: dict[str, object] = {}
    if metadata:
        header["__metadata__"] = metadata
    offset = 0
    for i in order:
        key, dtype, shape = items[i]
        n = itemsize(dtype)
        for s in shape:
            n *= s
        header[key] = {
            "dtype": NAMES[dtype],
            "shape": list(shape),
            "data_offsets": [offset, offset + n],
        }
        offset += n
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-(8 + len(text)) % 8)
    return len(text).to_bytes(8, "little") + text, [items[i][0] for i in order]


def write_tensor(f, t: torch.Tensor) -> None:
    t = t.contiguous()
    if t.numel():
        write_chunk(f, memoryview(t.reshape(-1).view(torch.uint8).numpy()))


def copy_bytes(f, src: MappedFile, begin: int, end: int) -> None:
    """Copy ``[begin, end)`` of a mapped file to ``f`` in chunks, releasing pages as it goes."""
    for start in range(begin, end, _CHUNK):
        stop = min(end, start + _CHUNK)
        src.prefetch(stop, min(end, stop + _CHUNK))
        view = src.raw(start, stop)
        try:
            write_chunk(f, view)
        finally:
            view.release()
        src.release(start, stop)


def fsync(f) -> None:
    f.flush()
    os.fsync(f.fileno())


def sync_file(path) -> None:
    """Wait until a written file is on disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
