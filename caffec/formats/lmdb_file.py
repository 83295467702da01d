"""Checking an LMDB file against its own header before lmdb maps it.

lmdb reads a database through a memory map, and reading a page past the end of a file
that was cut short (a copy or download that stopped) is a SIGBUS, which kills the process
with no message. The file's meta pages say how long it must be: pages 0 to ``mm_last_pg``
of ``mm_psize`` bytes (``MDB_meta`` in LMDB's ``mdb.c``). They are read here with plain
reads, so a short file is refused with a message instead. LMDB may leave the last pages
unwritten where they are free (pages a transaction used and freed again), so the pages a
short file lacks are looked up in the free-page database before the file is refused.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import BinaryIO

from caffec.errors import UserError

# MDB_meta after the 16-byte page header: magic, version, address, map size, then the free
# and main MDB_db (md_pad, md_flags, md_depth, branch, leaf and overflow pages, entries,
# root), then mm_last_pg and mm_txnid. The free DB's md_pad is the page size.
PAGE_HEADER = struct.Struct("<QHHHH")  # mp_pgno, mp_pad, mp_flags, mp_lower, mp_upper
META = struct.Struct("<IIQQ" + "IHHQQQQQ" * 2 + "QQ")
NODE = struct.Struct("<HHHH")  # mn_lo, mn_hi, mn_flags, mn_ksize
MAGIC, VERSION = 0xBEEFC0DE, 1
P_BRANCH, P_META, F_BIGDATA = 0x01, 0x08, 0x01
MAX_FREE_DB_PAGES = 1 << 20  # a damaged free DB cannot make the walk go on for ever


class _Damaged(Exception):
    """The free-page database cannot be read: its pages are missing or make no sense."""


def check_lmdb_file(path: Path) -> None:
    """Refuse an LMDB database (a folder holding ``data.mdb``, or the file) whose file is
    shorter than its header says, before lmdb maps it. Files that are not LMDB files are
    left for lmdb to refuse."""
    data = path / "data.mdb" if path.is_dir() else path
    try:
        with open(data, "rb") as f:
            size = f.seek(0, 2)
            problem = _shortfall(f, size)
    except OSError:
        return  # unreadable: lmdb's own open says why
    if problem:
        raise UserError(
            f"the LMDB database {path} is damaged: {data} {problem}",
            hint="the file was cut short or overwritten (a copy or download that stopped?); "
            "copy or convert the database again",
        )


def _meta(f: BinaryIO, offset: int) -> tuple[int, ...] | None:
    """The meta page at ``offset``: (page size, free DB root, last page, txnid), or None
    where it is not an LMDB meta page."""
    f.seek(offset)
    raw = f.read(PAGE_HEADER.size + META.size)
    if len(raw) < PAGE_HEADER.size + META.size or not PAGE_HEADER.unpack_from(raw)[2] & P_META:
        return None
    meta = META.unpack_from(raw, PAGE_HEADER.size)
    if meta[0] != MAGIC or meta[1] != VERSION:
        return None
    return meta[4], meta[11], meta[20], meta[21]


def _shortfall(f: BinaryIO, size: int) -> str | None:
    """What is wrong with the file's length (None: nothing), as LMDB would read it: from
    the meta page with the newest transaction."""
    first = _meta(f, 0)
    if first is None:
        return None
    psize = first[0]
    if psize < 512 or psize & (psize - 1):
        return f"says its pages are {psize} bytes, which is not a page size"
    second = _meta(f, psize)
    if second is None:
        return None
    _, free_root, last_page, _ = max(first, second, key=lambda meta: meta[3])
    need = (last_page + 1) * psize
    if size >= need:
        return None
    missing = range(size // psize, last_page + 1)
    try:
        free = _free_pages(f, free_root, psize, size)
    except (_Damaged, struct.error):
        free = set()
    if all(page in free for page in missing):
        return None
    return f"is {size} bytes long, but its header says it holds {need} ({last_page + 1} pages)"


def _read(f: BinaryIO, offset: int, length: int, size: int) -> bytes:
    if offset + length > size:
        raise _Damaged
    f.seek(offset)
    return f.read(length)


def _free_pages(f: BinaryIO, root: int, psize: int, size: int) -> set[int]:
    """Every page number the free-page database lists: a B-tree whose leaves hold lists of
    page numbers (a count, then the numbers), in overflow pages when they are long."""
    free: set[int] = set()
    pending = [] if root == 0xFFFFFFFFFFFFFFFF else [root]  # P_INVALID: no free pages
    visited = 0
    while pending:
        visited += 1
        if visited > MAX_FREE_DB_PAGES:
            raise _Damaged
        page = _read(f, pending.pop() * psize, psize, size)
        _, _, flags, lower, _ = PAGE_HEADER.unpack_from(page)
        for i in range((lower - PAGE_HEADER.size) // 2):
            (at,) = struct.unpack_from("<H", page, PAGE_HEADER.size + 2 * i)
            lo, hi, node_flags, key_size = NODE.unpack_from(page, at)
            if flags & P_BRANCH:
                pending.append(lo | hi << 16 | node_flags << 32)
                continue
            start, length = at + NODE.size + key_size, lo | hi << 16
            if node_flags & F_BIGDATA:
                (overflow,) = struct.unpack_from("<Q", page, start)
                ids = _read(f, overflow * psize + PAGE_HEADER.size, length, size)
            else:
                ids = page[start : start + length]
            (count,) = struct.unpack_from("<Q", ids)
            free.update(struct.unpack_from(f"<{count}Q", ids, 8))
    return free
