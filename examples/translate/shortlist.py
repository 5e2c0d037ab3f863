"""Marian's binary lexical shortlist (``lex.*.s2t.bin``), to tell which sentences it cannot affect.

Bergamot's engine restricts each sentence's output vocabulary to the ``first_num`` most frequent target ids plus,
for every source token, its best ``best_num`` translations. Greedy decoding over the full vocabulary picks the
same tokens as over the shortlist whenever every token it picks (end of sentence included) is in the shortlist.
Layout: u64 magic, u64 checksum, u64 first_num, u64 best_num, u64 n_offsets, u64 n_lists, then n_offsets u64
offsets (one per source id, plus the end) and n_lists u32 target ids.
"""

from __future__ import annotations

import struct

import numpy as np

MAGIC = 0xF11A48D5013417F5


class Shortlist:
    def __init__(self, path: str):
        with open(path, "rb") as f:
            data = f.read()
        magic, _, self.first_num, self.best_num, n_off, n_lists = struct.unpack_from("<6Q", data, 0)
        if magic != MAGIC:
            raise ValueError(f"{path}: not a Marian binary shortlist (magic {magic:#x})")
        self.offsets = np.frombuffer(data, dtype="<u8", count=n_off, offset=48)
        self.lists = np.frombuffer(data, dtype="<u4", count=n_lists, offset=48 + 8 * n_off)

    def allowed(self, src_ids) -> set[int]:
        """Target ids the engine may produce for a sentence with these source ids."""
        out = set(range(int(self.first_num)))
        for w in src_ids:
            if 0 <= w < len(self.offsets) - 1:
                out.update(int(t) for t in self.lists[int(self.offsets[w]):int(self.offsets[w + 1])])
        return out
