"""Read Marian's binary model format (version 1), as Bergamot ships it, into NumPy float32 arrays.

Layout (little endian)::

    u64 version (1), u64 item count n
    n x (u64 name length, u64 type, u64 shape length, u64 data length)
    the n names (NUL-padded to their length), the n shapes (int32 each)
    u64 padding length, padding (so the data starts 256-byte aligned)
    each item's data, ``data length`` bytes (padded)

Types handled (Marian's ``Type`` codes): float32 0x404, float16 0x402, int8 0x101 (bytes: ``special:model.yml``)
and intgemm8 0x4101: ``rows * cols`` int8 values followed by a float32 quantization multiplier, the real value
being ``int8 / multiplier``. Bergamot stores every intgemm8 matrix in the layout intgemm wants for the right-hand
operand of its product, which is the transpose of the recorded shape for all matrices except the tied embedding
(``Wemb``, used transposed in the output layer): :func:`stored_transposed` says which.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np

from compiler.errors import IntformerError

FLOAT32, FLOAT16, INT8, INTGEMM8 = 0x404, 0x402, 0x101, 0x4101
TYPE_NAMES = {FLOAT32: "float32", FLOAT16: "float16", INT8: "int8", INTGEMM8: "intgemm8"}
MODEL_YML = "special:model.yml"


@dataclass(frozen=True)
class MarianItem:
    name: str
    type: int
    shape: tuple[int, ...]
    offset: int  # of the item's data in the file
    nbytes: int


def stored_transposed(name: str) -> bool:
    """Whether an intgemm8 matrix's bytes are the transpose of its recorded (rows, cols) shape."""
    return not name.endswith("Wemb")


def read_items(data: bytes, path: str = "model") -> list[MarianItem]:
    """The item table of a Marian binary file."""
    try:
        version, n = struct.unpack_from("<QQ", data, 0)
        if version != 1:
            raise IntformerError(f"{path}: Marian binary format version {version}, only version 1 is supported")
        head = np.frombuffer(data, dtype="<u8", count=4 * n, offset=16).reshape(n, 4)
        off = 16 + 32 * n
        names = []
        for name_len in head[:, 0]:
            names.append(data[off:off + int(name_len)].split(b"\0", 1)[0].decode("utf-8"))
            off += int(name_len)
        shapes = []
        for shape_len in head[:, 2]:
            shapes.append(tuple(int(d) for d in np.frombuffer(data, dtype="<i4", count=int(shape_len), offset=off)))
            off += 4 * int(shape_len)
        (pad,) = struct.unpack_from("<Q", data, off)
        off += 8 + pad
    except (struct.error, ValueError, UnicodeDecodeError) as e:
        raise IntformerError(f"{path}: not a Marian binary model (bad header: {e})") from None
    items = []
    for name, (_, typ, _, nbytes), shape in zip(names, head, shapes):
        items.append(MarianItem(name, int(typ), shape, off, int(nbytes)))
        off += int(nbytes)
    if off > len(data):
        raise IntformerError(f"{path}: truncated Marian binary model ({len(data)} bytes, items need {off})")
    return items


def decode_item(data: bytes, item: MarianItem, path: str = "model"):
    """An item's value: float32 array (intgemm8 dequantized, in its recorded shape) or str for int8 text."""
    count = int(np.prod(item.shape)) if item.shape else 1
    if item.type == FLOAT32:
        return np.frombuffer(data, dtype="<f4", count=count, offset=item.offset).reshape(item.shape).copy()
    if item.type == FLOAT16:
        return np.frombuffer(data, dtype="<f2", count=count, offset=item.offset).reshape(item.shape).astype(np.float32)
    if item.type == INT8:
        return data[item.offset:item.offset + count].split(b"\0", 1)[0].decode("utf-8")
    if item.type == INTGEMM8:
        q = np.frombuffer(data, dtype=np.int8, count=count, offset=item.offset)
        (mult,) = struct.unpack_from("<f", data, item.offset + count)
        if not np.isfinite(mult) or mult == 0:
            raise IntformerError(f"{path}: item {item.name}: bad intgemm8 multiplier {mult}")
        w = q.astype(np.float32) / np.float32(mult)
        if len(item.shape) == 2 and stored_transposed(item.name):
            rows, cols = item.shape
            return np.ascontiguousarray(w.reshape(cols, rows).T)
        return w.reshape(item.shape)
    raise IntformerError(f"{path}: item {item.name} has Marian type 0x{item.type:x}, not one of "
                         f"{', '.join(f'0x{t:x} ({n})' for t, n in TYPE_NAMES.items())}")


def read_marian(path: str) -> tuple[dict[str, np.ndarray], str]:
    """All tensors of a Marian ``.bin`` file by name (float32) and its embedded ``special:model.yml`` text."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise IntformerError(f"{path}: cannot read the Marian model ({e.strerror})") from None
    tensors, yml = {}, ""
    for item in read_items(data, path):
        value = decode_item(data, item, path)
        if item.name == MODEL_YML:
            yml = value
        elif isinstance(value, np.ndarray):
            tensors[item.name] = value
    return tensors, yml
