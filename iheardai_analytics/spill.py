"""The local spill: a write-ahead log of every tracked event, in memory-mapped segment files per process.

Why this shape (and not sqlite3 or a buffered file):
- `track_event` must return in microseconds and must not lose the event if the process dies right after
  (kill -9). A write into a `MAP_SHARED` memory map is a memcpy into the kernel's page cache: no syscall, no
  GIL release on the caller's thread, and the bytes survive the death of the process (the kernel writes
  them back). A buffered file loses what is in its user-space buffer; an `os.write` per event releases the
  GIL (a waiting thread can take it for up to the 5 ms switch interval); sqlite3 needs a commit per event
  (tens of microseconds) to give the same guarantee.
- Power loss / kernel crash: the sender thread `msync`s the active segment every `fsync_interval_ms`, so a
  machine crash loses at most that window of not-yet-acknowledged events.

Layout, one pair of files per segment, named `<creation ns>-<pid>-<random>`:
- `.seg`: records `[u32 body length][u32 crc32(body)][body]`, body = `[i64 timestamp ms][u16 topic
  length][u16 key length][topic][key][value]`. The body is written before the header, so a reader never
  sees a half-written record (a zero or mismatching header ends the segment).
- `.ack`: one byte per record, set to 1 once Kafka acknowledged it (or refused it for good). After a crash
  only records whose byte is 0 are replayed, so duplicates are limited to records acknowledged in the last
  few milliseconds before the crash (whose callback had not run yet).

The owner holds an exclusive `flock` on each `.seg` for its lifetime; a starting process replays the
segments nobody holds (orphans of dead processes), oldest first, before its own events. A segment is
deleted when it is sealed (full) and every record is acknowledged, or at a clean close.
"""

from __future__ import annotations

import fcntl
import mmap
import os
import secrets
import struct
import threading
import time
import zlib
from array import array
from pathlib import Path
from typing import List, NamedTuple, Optional, Tuple

_HEADER = struct.Struct("<II")
_BODY = struct.Struct("<qHH")
HEADER_BYTES = _HEADER.size + _BODY.size
DEFAULT_SEGMENT_BYTES = 64 * 1024 * 1024
DEFAULT_SEGMENT_RECORDS = 256 * 1024


class SpillRecord(NamedTuple):
    segment: "Segment"
    index: int
    topic: str
    key: Optional[bytes]
    value: bytes
    timestamp_ms: int


class Segment:
    """One segment: its data and ack maps, a write position (the owner's) and a read cursor (the sender's)."""

    def __init__(self, path: Path, capacity: int, max_records: int, fd: int, created: bool):
        self.path = path
        self.ack_path = path.with_suffix(".ack")
        self.fd = fd  # holds the flock
        self.capacity = capacity
        self.max_records = max_records
        if created:
            os.ftruncate(fd, capacity)
        else:
            capacity = self.capacity = os.fstat(fd).st_size
        self.data = mmap.mmap(fd, capacity)
        afd = os.open(self.ack_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            size = os.fstat(afd).st_size
            if size < max_records:
                os.ftruncate(afd, max_records)  # a new segment, or an orphan that died before its ack file grew
            else:
                max_records = size  # an orphan written with another segment_records setting
            self.max_records = max_records
            self.acks = mmap.mmap(afd, max_records)
        finally:
            os.close(afd)
        self.offsets = array("Q")  # start offset of every record written (or recovered)
        self.write_off = 0
        self.count = 0  # records written; published after the bytes are in place
        self.acked = 0
        self.read_index = 0
        self.sealed = not created  # an orphan takes no new records
        self.closed = False
        if not created:
            self._recover()

    def _recover(self) -> None:
        """Find the records of an orphan segment (stop at the first empty or torn header)."""
        off, data, cap = 0, self.data, self.capacity
        while off + HEADER_BYTES <= cap and len(self.offsets) < self.max_records:
            length, crc = _HEADER.unpack_from(data, off)
            if length == 0 or off + 8 + length > cap or zlib.crc32(data[off + 8:off + 8 + length]) != crc:
                break
            self.offsets.append(off)
            off += 8 + length
        self.write_off = off
        self.count = len(self.offsets)
        self.acked = sum(self.acks[:self.count])
        # replay from the first unacknowledged record
        i = 0
        while i < self.count and self.acks[i]:
            i += 1
        self.read_index = i

    def try_append(self, body: bytes) -> int:
        """Write one record; its index, or -1 when the segment is full."""
        off = self.write_off
        end = off + 8 + len(body)
        idx = self.count
        if end > self.capacity or idx >= self.max_records:
            return -1
        data = self.data
        data[off + 8:end] = body
        data[off:off + 8] = _HEADER.pack(len(body), zlib.crc32(body))
        self.offsets.append(off)
        self.write_off = end
        self.count = idx + 1
        return idx

    def read(self, limit: int) -> List[SpillRecord]:
        """Up to `limit` records from the read cursor, skipping acknowledged ones; advances the cursor."""
        out: List[SpillRecord] = []
        end = min(self.count, self.read_index + limit)
        data, acks, offsets = self.data, self.acks, self.offsets
        i = self.read_index
        while i < end:
            if not acks[i]:
                off = offsets[i]
                length = _HEADER.unpack_from(data, off)[0]
                ts, tlen, klen = _BODY.unpack_from(data, off + 8)
                p = off + 8 + _BODY.size
                topic = data[p:p + tlen].decode()
                p += tlen
                key = data[p:p + klen] if klen else None
                p += klen
                out.append(SpillRecord(self, i, topic, key, data[p:off + 8 + length], ts))
            i += 1
        self.read_index = i
        return out

    def rewind(self, index: int) -> None:
        if index < self.read_index:
            self.read_index = index

    def ack(self, index: int) -> bool:
        """Mark a record acknowledged; False if it already was."""
        if self.acks[index]:
            return False
        self.acks[index] = 1
        self.acked += 1
        return True

    @property
    def unread(self) -> int:
        return self.count - self.read_index

    @property
    def done(self) -> bool:
        return self.acked >= self.count

    def sync(self) -> None:
        if not self.closed:
            self.data.flush()
            self.acks.flush()

    def close(self, delete: bool) -> None:
        if self.closed:
            return
        self.closed = True
        if delete:
            for p in (self.path, self.ack_path):
                try:
                    p.unlink()
                except FileNotFoundError:
                    pass
        else:
            self.data.flush()
            self.acks.flush()
        self.data.close()
        self.acks.close()
        os.close(self.fd)  # releases the flock


def encode(topic: str, key: Optional[bytes], value: bytes, timestamp_ms: int) -> bytes:
    t = topic.encode()
    k = key or b""
    return b"".join((_BODY.pack(timestamp_ms, len(t), len(k)), t, k, value))


class SpillLog:
    """The segments of one process (plus the orphans it adopted), in replay order.

    Appends come from any thread under `lock`; reads, acks and deletions from the one sender thread.
    """

    def __init__(self, directory: Path, max_bytes: int = 1024 ** 3, segment_bytes: int = DEFAULT_SEGMENT_BYTES,
                 segment_records: int = DEFAULT_SEGMENT_RECORDS):
        if segment_bytes < 4096 or max_bytes < segment_bytes:
            raise ValueError(f"spill: segment_bytes must be >= 4096 and <= max_bytes (got {segment_bytes}, "
                             f"{max_bytes})")
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        self.segment_bytes = segment_bytes
        self.segment_records = segment_records
        self.lock = threading.Lock()
        self.segments: List[Segment] = self._adopt_orphans()  # copy-on-write: replaced, never mutated
        self.recovered = sum(s.count - s.acked for s in self.segments)
        self.current: Optional[Segment] = None
        self._closed_bytes = 0  # bytes of segments deleted since start (for the gauge only)

    def _adopt_orphans(self) -> List[Segment]:
        out = []
        for path in sorted(self.dir.glob("*.seg")):
            try:
                fd = os.open(path, os.O_RDWR)
            except FileNotFoundError:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)  # a live process owns it
                continue
            if os.fstat(fd).st_size == 0 or not path.exists():
                os.close(fd)
                continue
            seg = Segment(path, 0, self.segment_records, fd, created=False)
            if seg.done:
                seg.close(delete=True)
            else:
                out.append(seg)
        return out

    def _new_segment(self) -> Segment:
        name = f"{time.time_ns():020d}-{os.getpid()}-{secrets.token_hex(3)}.seg"
        path = self.dir / name
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return Segment(path, self.segment_bytes, self.segment_records, fd, created=True)

    def used_bytes(self) -> int:
        return sum(s.write_off for s in self.segments)

    def append(self, body: bytes) -> Optional[Tuple[Segment, int]]:
        """Append under `lock` (the caller holds it). None when the spill is full (max_bytes)."""
        seg = self.current
        if seg is not None:
            idx = seg.try_append(body)
            if idx >= 0:
                return seg, idx
            seg.sealed = True
        if self.used_bytes() + len(body) + 8 > self.max_bytes:
            return None
        seg = self.current = self._new_segment()
        self.segments = self.segments + [seg]
        idx = seg.try_append(body)
        if idx < 0:
            raise ValueError(f"an event of {len(body)} bytes does not fit a spill segment of {self.segment_bytes}")
        return seg, idx

    def read(self, limit: int) -> List[SpillRecord]:
        """Up to `limit` records not yet handed out, oldest segment first (sender thread)."""
        out: List[SpillRecord] = []
        for seg in self.segments:
            if len(out) >= limit:
                break
            if seg.read_index < seg.count:
                out.extend(seg.read(limit - len(out)))
            if seg.read_index < seg.count or not seg.sealed:
                break  # never read past a segment that may still get (or has unread) records: keeps order
        return out

    def backlog(self) -> int:
        return sum(s.unread for s in self.segments)

    def unacked(self) -> int:
        return sum(s.count - s.acked for s in self.segments)

    def collect(self) -> None:
        """Delete sealed segments whose every record is acknowledged (sender thread)."""
        done = [s for s in self.segments if s.sealed and s.done and s.read_index >= s.count]
        if not done:
            return
        with self.lock:
            self.segments = [s for s in self.segments if s not in done]
        for s in done:
            s.close(delete=True)

    def sync(self) -> None:
        seg = self.current
        if seg is not None:
            seg.sync()

    def close(self) -> int:
        """Close every segment: delete the fully acknowledged ones, keep the rest for the next start.
        Returns the number of records left unacknowledged."""
        left = 0
        with self.lock:
            segs, self.segments, self.current = self.segments, [], None
        for s in segs:
            left += s.count - s.acked
            s.close(delete=s.done)
        return left
