"""Whether a DuckDB file still holds every block its header says it uses, read before DuckDB
opens it. DuckDB reads a block only when a statement needs it, so a file cut short opens and
answers until a query, a write or a checkpoint reaches the part that is gone.

The file (DuckDB 1.x-2.x storage) starts with three 4 KiB headers, each behind an 8-byte
checksum: the main header (``DUCK``, flags) and two database headers, of which the one with the
higher ``iteration`` is current. It names ``block_count`` blocks of ``block_alloc_size`` bytes
after the headers, and the free list. A checkpoint writes the header first and then cuts the
free blocks at the end of the file, so a file may be shorter than ``block_count`` says by free
blocks only: the free list is read only when the file is short. Measured cost: a few reads of
4 KiB, well under a millisecond at any size (docs/operations.md).
"""

from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import BinaryIO

import structlog

from indexer_service.errors import DatabaseDamagedError

__all__ = ["BLOCK_START", "checksum", "damage_in", "damaged", "find_damage"]

log = structlog.get_logger(__name__)

HEADER_SIZE = 4096
BLOCK_START = 3 * HEADER_SIZE
"""Where block 0 starts: after the main header and the two database headers."""
_MAGIC = b"DUCK"
_ENCRYPTED = 1  # flag 0 of the main header: blocks are encrypted (their layout is not read)
_INVALID = 2**64 - 1
_MULTIPLIER = 0xBF58476D1CE4E5B9
_MASK = 2**64 - 1
_BLOCK_HEADER = 8  # the checksum in front of every block
_METADATA_PER_BLOCK = 64  # a metadata block is cut into 64 sub-blocks
_MAX_FREE_LIST = 1 << 24  # more free blocks than this is not a list DuckDB wrote


def checksum(data: bytes) -> int:
    """DuckDB's block checksum of ``data`` (a multiple of 8 bytes): 5381 xor'ed with each
    little-endian 64-bit word times a constant, modulo 2**64."""
    result = 5381
    for (word,) in struct.iter_unpack("<Q", data):
        result ^= (word * _MULTIPLIER) & _MASK
    return result


def find_damage(path: Path) -> str | None:
    """What is wrong with the DuckDB file at ``path`` (e.g. ``cut short: 1048576 bytes of
    the 14430208 its header uses``), or None if its headers check out and it holds every block
    in use. A missing or empty file, or one that is not a DuckDB file at all, is left to
    DuckDB (None): the first is a new index, the second gets DuckDB's own error."""
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            head = f.read(BLOCK_START)
            if size == 0 or head[8:12] != _MAGIC:
                return None
            if size < BLOCK_START:
                return f"cut short inside its headers: {size} bytes of at least {BLOCK_START}"
            return _check(f, head, size)
    except FileNotFoundError:
        return None


def _check(f: BinaryIO, head: bytes, size: int) -> str | None:
    headers = [head[i * HEADER_SIZE : (i + 1) * HEADER_SIZE] for i in range(3)]
    for n, block in enumerate(headers):
        (stored,) = struct.unpack_from("<Q", block)
        if checksum(block[8:]) != stored:
            return f"checksum mismatch in its {('main', 'first', 'second')[n]} header"
    (flags,) = struct.unpack_from("<Q", head, 20)  # after the checksum, magic and version
    if flags & _ENCRYPTED:
        return None
    current = max((struct.unpack_from("<7Q", h, 8) for h in headers[1:]), key=lambda h: h[0])
    _, _, free_list, block_count, block_size, _, _ = current
    if not _plausible_block_size(block_size):
        return None  # a layout this check does not know: DuckDB decides
    if size >= BLOCK_START + block_count * block_size:
        return None
    free = _free_blocks(f, free_list, block_size, size)
    if free is None:
        return f"cut short: {size} bytes, and its free list is past the end of the file"
    used = block_count - 1
    while used >= 0 and used in free:
        used -= 1
    needed = BLOCK_START + (used + 1) * block_size
    if size < needed:
        return f"cut short: {size} bytes of the {needed} its header uses"
    return None


def _plausible_block_size(size: int) -> bool:
    return 16 * 1024 <= size <= 256 * 1024 * 1024 and size & (size - 1) == 0


def _free_blocks(f: BinaryIO, pointer: int, block_size: int, size: int) -> set[int] | None:
    """The ids in the free list that starts at metadata ``pointer`` (block id in the low 56
    bits, sub-block in the high 8), or None if the list lies beyond ``size`` or is not whole."""
    if pointer == _INVALID:
        return set()
    sub_size = (block_size - _BLOCK_HEADER) // _METADATA_PER_BLOCK // 8 * 8
    data = b""
    count: int | None = None
    while pointer != _INVALID:
        block, index = pointer & ((1 << 56) - 1), pointer >> 56
        at = BLOCK_START + block * block_size + _BLOCK_HEADER + index * sub_size
        if index >= _METADATA_PER_BLOCK or at + sub_size > size:
            return None
        f.seek(at)
        chunk = f.read(sub_size)
        (pointer,) = struct.unpack_from("<Q", chunk)
        data += chunk[8:]
        if count is None:
            (count,) = struct.unpack_from("<Q", data)
            if count > _MAX_FREE_LIST:
                return None
        if len(data) >= 8 + 8 * count:
            return set(struct.unpack_from(f"<{count}q", data, 8))
    return None


_DAMAGE_MARKS = (
    "Corrupt database file",  # a block's checksum does not match
    "Could not read enough bytes",  # a block past the end of the file
    "Failed to deserialize",  # a catalog or table metadata DuckDB cannot read
)


def damage_in(error: BaseException) -> str | None:
    """The first line of a DuckDB error that says the file is damaged (a block that does not
    match its checksum or lies past the end, metadata that cannot be read), else None."""
    text = str(error)
    if not any(mark in text for mark in _DAMAGE_MARKS):
        return None
    return text.strip().splitlines()[0].removeprefix("IO Error: ")


def damaged(path: Path, error: BaseException) -> DatabaseDamagedError | None:
    """`DatabaseDamagedError` for ``error`` if it says the file at ``path`` is damaged (logged
    as ``database_damaged``), else None."""
    damage = damage_in(error)
    if damage is None:
        return None
    log.error("database_damaged", db=str(path), error=damage)
    return DatabaseDamagedError(path, damage)
