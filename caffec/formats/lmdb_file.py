"""Checking an LMDB file against its own structure before lmdb maps it.

lmdb reads a database through a memory map and trusts every page it finds there: reading
past the end of a file that was cut short is a SIGBUS, and a page whose header or nodes were
overwritten makes it read past the end too, or fail one of its assertions (SIGABRT). Either
kills the process with no message. So before lmdb opens a file, it is read here as LMDB
lays it out (``mdb.c``), with plain reads, and a read-only map no longer than the file (which
cannot fault):

- the two meta pages (``MDB_meta``); the one with the newer transaction says how long the
  file must be (pages 0 to ``mm_last_pg`` of ``mm_psize`` bytes) and where the main tree's
  root is. LMDB may leave the last pages unwritten where they are free (used and freed
  again by a transaction), so pages a short file lacks are looked up in the free-page
  database before the file is refused;
- every page of the main B-tree, level by level from the root: each page inside the file
  and reached once, a branch above the last level and a leaf on it, its ``mp_lower`` and
  ``mp_upper`` in order, every node inside the page, each branch node's child a data page,
  each large value's overflow pages inside the file, and as many records as the meta page
  counts (the reader's seek divides by that count).

That is one pass over the pages lmdb would read, a level of the tree at a time with numpy;
values are not read, except the header of each overflow run (one page per large value).
Named sub-databases and sorted duplicates, which Caffe's databases do not use, are not
walked: their records are checked as any other.
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from caffec.errors import UserError

# MDB_meta after the 16-byte page header: magic, version, address, map size, then the free
# and main MDB_db (md_pad, md_flags, md_depth, branch, leaf and overflow pages, entries,
# root), then mm_last_pg and mm_txnid. The free DB's md_pad is the page size.
PAGE_HEADER = struct.Struct("<QHHHH")  # mp_pgno, mp_pad, mp_flags, mp_lower, mp_upper
META = struct.Struct("<IIQQ" + "IHHQQQQQ" * 2 + "QQ")
NODE = struct.Struct("<HHHH")  # mn_lo, mn_hi, mn_flags, mn_ksize
OVERFLOW_PAGES = struct.Struct("<I")  # mp_pages: where a data page has mp_lower, mp_upper
MAGIC, VERSION = 0xBEEFC0DE, 1
P_BRANCH, P_LEAF, P_OVERFLOW, P_META, P_LEAF2, P_SUBP = 0x01, 0x02, 0x04, 0x08, 0x20, 0x40
PAGE_KINDS = P_BRANCH | P_LEAF | P_OVERFLOW | P_META | P_LEAF2 | P_SUBP
F_BIGDATA = 0x01
P_INVALID = 0xFFFFFFFFFFFFFFFF  # the root of an empty tree
META_PAGES = 2
MAX_FREE_DB_PAGES = 1 << 20  # a damaged free DB cannot make the walk go on for ever

REBUILD_HINT = (
    "part of the file was overwritten (a failing disk, an interrupted write or copy?); "
    "rebuild the database (caffec convert-imageset, convert-mnist) or copy it again"
)
SHORT_HINT = (
    "the file was cut short or overwritten (a copy or download that stopped?); "
    "copy or convert the database again"
)


class _Damaged(Exception):
    """The free-page database cannot be read: its pages are missing or make no sense."""


class _Refused(Exception):
    """What is wrong with the file, and the hint that goes with it."""

    def __init__(self, problem: str, hint: str = REBUILD_HINT) -> None:
        super().__init__(problem)
        self.problem = problem
        self.hint = hint


@dataclass(frozen=True)
class _Meta:
    """What the walk needs of a meta page."""

    psize: int
    free_root: int
    depth: int
    entries: int
    root: int
    last_page: int
    txnid: int


def check_lmdb_file(path: Path) -> None:
    """Refuse an LMDB database (a folder holding ``data.mdb``, or the file) whose file is
    shorter than its header says, or whose main tree lmdb would read out of bounds, before
    lmdb maps it. Files that are not LMDB files are left for lmdb to refuse."""
    data = path / "data.mdb" if path.is_dir() else path
    try:
        with open(data, "rb") as f:
            _check(f)
    except OSError:
        return  # unreadable: lmdb's own open says why
    except _Refused as refused:
        raise UserError(
            f"the LMDB database {path} is damaged: {data} {refused.problem}", hint=refused.hint
        ) from None


def _check(f: BinaryIO) -> None:
    size = f.seek(0, 2)
    meta = _newest_meta(f)
    if meta is None:
        return
    readable = _readable_pages(f, meta, size)
    if meta.root == P_INVALID:
        if meta.entries:
            raise _Refused(f"counts {meta.entries} records in an empty tree")
        return
    # the array keeps the map open, and unmaps it when it goes
    data = np.frombuffer(mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ), np.uint8)
    _Walk(data, meta, readable).tree()


def _meta(f: BinaryIO, offset: int) -> _Meta | None:
    """The meta page at ``offset``, or None where it is not an LMDB meta page."""
    f.seek(offset)
    raw = f.read(PAGE_HEADER.size + META.size)
    if len(raw) < PAGE_HEADER.size + META.size or not PAGE_HEADER.unpack_from(raw)[2] & P_META:
        return None
    m = META.unpack_from(raw, PAGE_HEADER.size)
    if m[0] != MAGIC or m[1] != VERSION:
        return None
    return _Meta(psize=m[4], free_root=m[11], depth=m[14], entries=m[18], root=m[19],
                 last_page=m[20], txnid=m[21])  # fmt: skip


def _newest_meta(f: BinaryIO) -> _Meta | None:
    """The meta page lmdb reads (the newer transaction's), or None: not an LMDB file."""
    first = _meta(f, 0)
    if first is None:
        return None
    psize = first.psize
    if psize < 512 or psize & (psize - 1):
        raise _Refused(f"says its pages are {psize} bytes, which is not a page size", SHORT_HINT)
    second = _meta(f, psize)
    if second is None:
        return None
    return max(first, second, key=lambda meta: meta.txnid)


def _readable_pages(f: BinaryIO, meta: _Meta, size: int) -> int:
    """How many pages lmdb may read: the file's, unless it is shorter than its last used
    page and the pages it lacks are not all free (then it is refused)."""
    psize, last_page = meta.psize, meta.last_page
    need = (last_page + 1) * psize
    if size >= need:
        return last_page + 1
    missing = range(size // psize, last_page + 1)
    try:
        free = _free_pages(f, meta.free_root, psize, size)
    except (_Damaged, struct.error):
        free = set()
    if all(page in free for page in missing):
        return size // psize
    raise _Refused(
        f"is {size} bytes long, but its header says it holds {need} ({last_page + 1} pages)",
        SHORT_HINT,
    )


def _read(f: BinaryIO, offset: int, length: int, size: int) -> bytes:
    if offset + length > size:
        raise _Damaged
    f.seek(offset)
    return f.read(length)


def _free_pages(f: BinaryIO, root: int, psize: int, size: int) -> set[int]:
    """Every page number the free-page database lists: a B-tree whose leaves hold lists of
    page numbers (a count, then the numbers), in overflow pages when they are long."""
    free: set[int] = set()
    pending = [] if root == P_INVALID else [root]
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


def _uint(data: np.ndarray, at: np.ndarray, size: int) -> np.ndarray:
    """The little-endian unsigned integers of ``size`` bytes at each offset ``at``."""
    value = np.zeros(at.shape, np.int64)
    for byte in range(size):
        value |= data[at + byte].astype(np.int64) << (8 * byte)
    return value


def _first(bad: np.ndarray) -> int | None:
    """The index of the first True (None: none)."""
    found = np.flatnonzero(bad)
    return int(found[0]) if len(found) else None


@dataclass
class _Level:
    """The pages of one level of the tree, and where each was named: the root, or child
    ``slots[i]`` of branch page ``parents[i]``."""

    pages: np.ndarray
    parents: np.ndarray
    slots: np.ndarray

    def named(self, i: int) -> str:
        if self.parents[i] < 0:
            return "the root"
        return f"child {self.slots[i]} of branch page {self.parents[i]}"


@dataclass
class _Nodes:
    """Every node of a level's pages, as arrays: its page, its index in the page, the
    offset of its header in the file, and the header's fields."""

    page: np.ndarray
    index: np.ndarray
    at: np.ndarray
    low: np.ndarray  # mn_lo | mn_hi << 16: a value's size, or the low bits of a child
    flags: np.ndarray
    key_size: np.ndarray

    def where(self, i: int) -> str:
        return f"page {self.page[i]}: node {self.index[i]}"


class _Walk:
    """One pass over the main tree, a level at a time with numpy (a database of 60,000
    records has some 12,000 leaves), refusing the first thing lmdb would misread."""

    def __init__(self, data: np.ndarray, meta: _Meta, readable: int) -> None:
        self.data = data
        self.meta = meta
        self.psize = meta.psize
        self.readable = readable  # pages 0 .. readable - 1 are in the file
        self.seen = np.zeros(readable, bool)
        self.within = f"outside its pages ({META_PAGES} to {readable - 1})"

    def tree(self) -> None:
        """Every level of the main tree: branches down to the meta page's depth, then leaves
        holding as many records as the meta page counts."""
        root = self.meta.root
        if not META_PAGES <= root < self.readable:
            raise _Refused(f"names page {root} as the root of its tree, {self.within}")
        level = _Level(np.array([root]), np.array([-1]), np.array([0]))
        depth = 1
        while depth < self.meta.depth:
            nodes = self._nodes(level, P_BRANCH, depth)
            self._inside(nodes, nodes.key_size, "key")
            child = nodes.low | nodes.flags << 32
            bad = _first((child < META_PAGES) | (child >= self.readable))
            if bad is not None:
                raise _Refused(f"{nodes.where(bad)} names page {child[bad]} as a child, "
                               f"{self.within}")  # fmt: skip
            level, depth = _Level(child, nodes.page, nodes.index), depth + 1
        nodes = self._nodes(level, P_LEAF, depth)
        big = (nodes.flags & F_BIGDATA) != 0
        self._inside(nodes, nodes.key_size + np.where(big, 8, nodes.low), "key and value")
        self._overflow(nodes, np.flatnonzero(big))
        if len(nodes.at) != self.meta.entries:
            raise _Refused(f"counts {self.meta.entries} records in its header, but its leaf "
                           f"pages hold {len(nodes.at)}")  # fmt: skip

    def _nodes(self, level: _Level, kind: int, depth: int) -> _Nodes:
        """Check a level's pages (each reached once, of ``kind``, its node pointers in order
        and pointing into its node area); their nodes."""
        pages, what = level.pages, "leaf" if kind == P_LEAF else "branch"
        again = self.seen[pages] | _repeated(pages)
        self.seen[pages] = True
        base = pages * self.psize
        stored, flags = _uint(self.data, base, 8), _uint(self.data, base + 10, 2)
        lower, upper = _uint(self.data, base + 12, 2), _uint(self.data, base + 14, 2)
        keys = (lower - PAGE_HEADER.size) // 2
        tests = [
            (again, lambda where, i: f"{where} is reached a second time"),
            (stored != pages, lambda where, i: f"{where} says it is page {stored[i]}"),
            ((flags & PAGE_KINDS) != kind, lambda where, i: f"{where} should be a {what} "
             f"page, but its flags are {flags[i]:#06x}"),
            ((lower < PAGE_HEADER.size) | (lower > upper) | (upper > self.psize) | (lower % 2),
             lambda where, i: f"{where} has its free space from byte {lower[i]} to {upper[i]}, "
             f"outside its {self.psize} bytes"),
            (keys < (2 if kind == P_BRANCH else 1), lambda where, i: f"{where} holds {keys[i]} "
             "nodes"),
        ]  # fmt: skip
        for bad, say in tests:
            i = _first(bad)
            if i is not None:
                where = f"page {pages[i]} ({level.named(i)}, at depth {depth} of its tree)"
                raise _Refused(say(where, i))
        owner = np.repeat(np.arange(len(pages)), keys)
        index = np.arange(len(owner)) - np.repeat(np.cumsum(keys) - keys, keys)
        offset = _uint(self.data, base[owner] + PAGE_HEADER.size + 2 * index, 2)
        bad = _first((offset < upper[owner]) | (offset > self.psize - NODE.size))
        if bad is not None:
            raise _Refused(f"page {pages[owner[bad]]}: node {index[bad]} is at byte "
                           f"{offset[bad]}, outside the page's nodes (bytes "
                           f"{upper[owner[bad]]} to {self.psize})")  # fmt: skip
        at = base[owner] + offset
        return _Nodes(page=pages[owner], index=index, at=at,
                      low=_uint(self.data, at, 4), flags=_uint(self.data, at + 4, 2),
                      key_size=_uint(self.data, at + 6, 2))  # fmt: skip

    def _inside(self, nodes: _Nodes, size: np.ndarray, what: str) -> None:
        """Refuse a node whose ``size`` bytes after its header run past its page's end."""
        end = nodes.at + NODE.size + size
        bad = _first(end > (nodes.page + 1) * self.psize)
        if bad is not None:
            raise _Refused(f"{nodes.where(bad)}: {size[bad]} bytes of {what} after its header run "
                           "past the page's end")  # fmt: skip

    def _overflow(self, nodes: _Nodes, big: np.ndarray) -> None:
        """The overflow pages of the large values (nodes ``big``): a run of pages inside the
        file, starting with an overflow page's header, long enough for the value."""
        first = _uint(self.data, nodes.at[big] + NODE.size + nodes.key_size[big], 8)
        outside = (first < META_PAGES) | (first >= self.readable)
        base = np.where(outside, 0, first) * self.psize
        stored, flags = _uint(self.data, base, 8), _uint(self.data, base + 10, 2)
        count, size = _uint(self.data, base + 12, 4), nodes.low[big]
        tests = [
            (outside, lambda i: f"has its value in page {first[i]}, {self.within}"),
            ((stored != first) | ((flags & PAGE_KINDS) != P_OVERFLOW),
             lambda i: f"has its value in page {first[i]}, which is not an overflow page"),
            ((count < 1) | (first + count > self.readable),
             lambda i: f"has its value in {count[i]} pages from page {first[i]} on, "
             f"{self.within}"),
            (size > count * self.psize - PAGE_HEADER.size,
             lambda i: f"has a value of {size[i]} bytes, more than its {count[i]} overflow "
             f"pages from page {first[i]} on hold"),
        ]  # fmt: skip
        for bad, say in tests:
            i = _first(bad)
            if i is not None:
                raise _Refused(f"{nodes.where(big[i])} {say(i)}")


def _repeated(pages: np.ndarray) -> np.ndarray:
    """Whether each page number occurs earlier in ``pages`` too."""
    order = np.argsort(pages, kind="stable")
    again = np.zeros(len(pages), bool)
    again[order[1:]] = pages[order[1:]] == pages[order[:-1]]
    return again
