"""Capture file reader for pcap and pcapng, used by both the runner and the dataset builder.

Reading files ourselves instead of through libpcap gives what a router's runner and a
training set both need: per-interface link types in pcapng (libpcap rejects files whose
interfaces differ), a clear error for files that are not captures (libpcap reports a missing
file as "No such device exists" when it falls back to opening an interface), and files cut
short that keep every complete record and say where they stopped.

Formats: pcap in both byte orders with micro- or nanosecond time stamps, pcapng with any
number of sections and interfaces (enhanced, simple and obsolete packet blocks, `if_tsresol`
and `if_tsoffset`), and either of them compressed with gzip, bzip2 or xz (read
transparently). zstd and other compressions are rejected with a message.

Limits: a record longer than `MAX_RECORD_BYTES` stops the reading because the file cannot be
trusted past it; time stamps are floats, so nanoseconds are kept to about 0.2 microseconds.
"""

import bz2
import gzip
import io
import logging
import lzma
import os
import select
import stat
import struct
import sys
import time
import zlib

from . import fastpath
from .errors import CaptureFileError

log = logging.getLogger(__name__)

MAX_RECORD_BYTES = 262144  # libpcap's own maximum snapshot length
MAX_BLOCK_BYTES = 16 * 1024 * 1024
CHUNK_BYTES = 1024 * 1024
# How often `CaptureFile.on_wait` runs while a pipe is read, empty or not. It is the poll
# interval of a live capture too.
WAIT_S = 0.2

_PCAP_MAGICS = {
    b"\xd4\xc3\xb2\xa1": ("<", 1e-6),
    b"\xa1\xb2\xc3\xd4": (">", 1e-6),
    b"\x4d\x3c\xb2\xa1": ("<", 1e-9),
    b"\xa1\xb2\x3c\x4d": (">", 1e-9),
}
_PCAPNG_SHB = b"\x0a\x0d\x0d\x0a"
_COMPRESSED = {
    b"\x1f\x8b": ("gzip", lambda f: gzip.GzipFile(fileobj=f, mode="rb")),
    b"BZh": ("bzip2", bz2.BZ2File),
    b"\xfd7zXZ\x00": ("xz", lzma.LZMAFile),
}
STDIN = "-"
# Exceptions a corrupt or cut compressed stream raises while it is read.
_STREAM_ERRORS = (OSError, EOFError, lzma.LZMAError, zlib.error)
_UNSUPPORTED_COMPRESSION = {b"\x28\xb5\x2f\xfd": "zstd", b"\x04\x22\x4d\x18": "lz4", b"PK\x03\x04": "zip"}


def _records(n):
    """Return "1 record" or "N records"."""
    return f"{n} record" if n == 1 else f"{n} records"


def _open_checked(path):
    """Open `path` for reading, following one layer of compression; return (file, kind).

    The file is never rewound, only peeked at, so pipes and standard input ("-") work.
    """
    if path == STDIN:
        if sys.stdin is None:  # a process started with its standard input closed
            raise CaptureFileError("stdin: standard input is closed; give --pcap FILE")
        f = sys.stdin.buffer
        path = "stdin"
    else:
        if not os.path.exists(path):
            raise CaptureFileError(f"{path}: file not found")
        if os.path.isdir(path):
            raise CaptureFileError(f"{path}: is a directory, not a capture file")
        try:
            f = open(path, "rb")
        except OSError as e:
            raise CaptureFileError(f"{path}: cannot open: {e.strerror}") from None
    if not isinstance(f, io.BufferedReader):
        f = io.BufferedReader(f)
    f = _WaitingPipe.wrap(f)
    if isinstance(f.raw, _WaitingPipe):
        f.raw.read_head(6)
    head = f.peek(6)[:6]
    if not head:
        f.close()
        raise CaptureFileError(f"{path}: empty file (0 bytes), not a pcap or pcapng capture")
    for magic, name in _UNSUPPORTED_COMPRESSION.items():
        if head.startswith(magic):
            f.close()
            raise CaptureFileError(f"{path}: {name}-compressed file; decompress it first")
    for magic, (name, opener) in _COMPRESSED.items():
        if head.startswith(magic):
            # No extra buffering on top: it would read ahead into a stream cut short and fail
            # before the complete records could be yielded.
            if isinstance(f.raw, _WaitingPipe):
                return opener(_ArrivedBytes(f)), name
            return opener(f), name
    return f, None


class _ArrivedBytes:
    """The compressed stream of a pipe, as a decompressor reads it.

    gzip, bz2 and lzma read their input 8 KiB at a time, and a buffered read of a pipe
    waits until all 8 KiB have arrived. The records at the end of a stream whose writer
    stays open would then wait for more. `read` returns what has arrived instead: at least
    one byte, or none at the end of the stream.
    """

    def __init__(self, f):
        self._f = f
        self.raw = f.raw  # the _WaitingPipe, for CaptureFile._find_pipe

    def read(self, size=-1):
        if size is None or size < 0:
            return self._f.read()
        return self._f.read1(size)


class _StopReading(Exception):
    """`on_wait` asked the reader of a pipe to stop."""


class _WaitingPipe(io.RawIOBase):
    """A pipe, FIFO or socket, read only when select() reports data.

    A read of such a stream returns the records that have arrived instead of waiting for a
    whole chunk. Every WAIT_S seconds, while data arrives and while nothing comes, this
    reader calls its CaptureFile's `on_wait()`, and raises _StopReading when that returns
    True. It sits under every reader of the stream (pcap, pcapng, gzip, bzip2, xz), so all
    of them wait the same way.

    The descriptor stays in blocking mode because it may be shared with the parent process
    (standard input), and a run that a signal ends during start-up exits through os._exit
    (see edge_etc._entry), with no chance to switch it back.
    """

    def __init__(self, f):
        super().__init__()
        # Keep the buffered file `f`, not only its raw stream, because the finalizer of a
        # file opened by path closes that raw stream once nothing references the file.
        self._file = f
        self._raw = f.raw
        self._fd = f.fileno()
        self.owner = None  # the CaptureFile whose on_wait this reader runs
        self._head = b""  # bytes read by read_head, returned before any others
        self._next_wait = time.monotonic() + WAIT_S  # when on_wait runs next

    @classmethod
    def wrap(cls, f):
        """Return `f`, or a buffered `_WaitingPipe` over `f` if `f` is a pipe or socket."""
        try:
            mode = os.fstat(f.fileno()).st_mode
        except (OSError, ValueError, io.UnsupportedOperation):
            return f
        if not (stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)):
            return f
        return io.BufferedReader(cls(f), CHUNK_BYTES)

    def readable(self):
        return True

    def fileno(self):
        return self._fd

    def read_head(self, size):
        """Wait until the first `size` bytes of the stream have arrived or it has ended.

        The reads that follow return these bytes first. A writer may send fewer bytes than
        a magic number in its first write, and one read would see only those.
        """
        while len(self._head) < size:
            chunk = bytearray(size - len(self._head))
            count = self._read_arrived(chunk)
            if not count:
                break
            self._head += chunk[:count]

    def readinto(self, b):
        if self._head:
            count = min(len(b), len(self._head))
            b[:count] = self._head[:count]
            self._head = self._head[count:]
            return count
        return self._read_arrived(b)

    def _read_arrived(self, b):
        while True:
            # Also while data keeps arriving: a writer that sends a record every 50 ms never
            # leaves the pipe empty for WAIT_S, and its decisions and signals would wait.
            if time.monotonic() >= self._next_wait:
                self._call_on_wait()
            readable, _, _ = select.select([self._fd], [], [], WAIT_S)
            if readable:
                # One read(2), which returns what has arrived. None comes only from a
                # descriptor that the parent set to non-blocking mode, with no data after all.
                count = self._raw.readinto(b)
                if count is not None:
                    return count
                continue
            self._call_on_wait()

    def _call_on_wait(self):
        """Run the owner's `on_wait`; raise _StopReading when it returns True."""
        self._next_wait = time.monotonic() + WAIT_S
        on_wait = self.owner.on_wait if self.owner is not None else None
        if on_wait is not None and on_wait():
            raise _StopReading

    def close(self):
        if not self.closed:
            self._file.close()
        super().close()


class CaptureFile:
    """A pcap or pcapng file opened for reading.

    Iterating yields `(ts, linktype, frame, wire_len)` for each record. When the file ends
    inside a record or a record is implausible, iteration stops, `stopped` contains a message
    naming the file, the record number and the byte offset, and a warning is logged.

    A stream from a pipe or FIFO, compressed or not, is read as its records arrive.
    `on_wait()`, when set, runs every WAIT_S seconds while the pipe is read, and reading
    stops when it returns True.

    Args:
        path: the capture file.

    Raises:
        CaptureFileError: the file is missing, empty, compressed with an unsupported method,
            not a capture, or cut inside its file header.
    """

    def __init__(self, path):
        self.path = "stdin" if path == STDIN else path
        self.records = 0
        self.stopped = None
        self.snaplen = None
        self._buffer = None  # the pcap reader's bytearray, see _refill
        self._view = None
        self.on_wait = None
        self._f, self.compression = _open_checked(path)
        self._pipe = self._find_pipe()
        try:
            head = self._f.read(4)
            if len(head) < 4:
                if self.compression and not head:
                    raise CaptureFileError(f"{self.path}: empty {self.compression} stream, not a capture")
                raise CaptureFileError(f"{self.path}: not a pcap or pcapng file ({len(head)} bytes, "
                                       "shorter than a file header)")
            if head in _PCAP_MAGICS:
                self.format = "pcap"
                self._start_pcap(head)
            elif head == _PCAPNG_SHB:
                self.format = "pcapng"
                self._start_pcapng()
            else:
                raise CaptureFileError(f"{self.path}: not a pcap or pcapng file (magic {head.hex()})")
        except _STREAM_ERRORS as e:
            self._f.close()
            raise CaptureFileError(f"{self.path}: cannot read: {e}") from None
        except CaptureFileError:
            self._f.close()
            raise

    def _find_pipe(self):
        """Return the `_WaitingPipe` under the stream, owned by this file, or None."""
        f = self._f
        for attr in ("fileobj", "_fp"):  # gzip; bzip2 and xz
            f = getattr(f, attr, None) or f
        raw = getattr(f, "raw", None)
        if isinstance(raw, _WaitingPipe):
            raw.owner = self
            return raw
        return None

    def _read_or_fail(self, n, part, before):
        """Read the next `n` bytes of a part whose first `before` bytes were read already.

        A short read raises an error that counts the bytes of the whole part, as a user
        measures the file."""
        data = self._f.read(n)
        if len(data) < n:
            raise CaptureFileError(
                f"{self.path}: truncated {part}: {before + len(data)} of {before + n} bytes")
        return data

    @property
    def linktypes(self):
        """Link types seen so far: the one of a pcap file, or every pcapng interface's."""
        if self.format == "pcap":
            return [self._linktype]
        return [lt for lt, _, _ in self._interfaces]

    # --- pcap -------------------------------------------------------------------------

    def _start_pcap(self, magic):
        self._endian, self._tick = _PCAP_MAGICS[magic]
        rest = self._read_or_fail(20, "file header", before=4)
        major, _minor, _zone, _sigfigs, snaplen, linktype = struct.unpack(self._endian + "HHiIII", rest)
        if major != 2:
            raise CaptureFileError(f"{self.path}: unsupported pcap version {major}")
        self.snaplen = snaplen
        self._linktype = linktype & 0x0FFFFFFF  # the upper bits describe FCS presence
        self._offset = 24

    def pcap_record_format(self):
        """Return (little endian, seconds per time stamp tick, link type) of a pcap file's
        records, for a consumer of `iter_records(take)`."""
        return self._endian == "<", self._tick, self._linktype

    def iter_records(self, take=None):
        """Iterate over the records, as iterating over the file does.

        With `take`, a pcap file's reader calls `take(buf, pos)` whenever its buffer `buf`
        contains at least a record header from offset `pos` on. `take` consumes complete
        records and returns (offset of the first record it left, records consumed, stop
        reading). The reader then yields the record at that offset itself, after a refill
        or to report where the file stops, and counts every record in `records`. pcapng
        files ignore `take`.
        """
        if self.format == "pcap":
            return self._iter_pcap(take)
        return self._iter_pcapng_guarded()

    def _iter_pcap(self, take=None):
        # Records are sliced out of chunks of CHUNK_BYTES rather than read one by one: two
        # read calls per packet were a sixth of the runner's time per packet.
        rec = struct.Struct(self._endian + "IIII")
        unpack_from = rec.unpack_from
        linktype = self._linktype
        tick = self._tick
        native = fastpath.native
        base = self._offset  # file offset of buf[0]
        # `buf` is a memoryview of the filled part of `self._buffer`, which each refill
        # reads into, so the records are never copied from one buffer to another.
        buf = memoryview(b"")
        pos = 0
        eof = False
        little_endian = self._endian == "<"
        while True:
            if take is not None and len(buf) - pos >= 16:
                pos, consumed, stop = take(buf, pos)
                self.records += consumed
                if stop:
                    return
            elif native is not None and len(buf) - pos >= 16:
                # The compiled slicer yields the complete records in the buffer. It stops at
                # the first record that needs a refill or is implausible, and the code below
                # handles that record.
                slicer = native.PcapSlicer(buf, pos, little_endian, tick, linktype, MAX_RECORD_BYTES)
                try:
                    yield from slicer
                finally:
                    self.records += slicer.count
                pos = slicer.pos
            if len(buf) - pos < 16 and not eof:
                buf, pos, base, eof = self._refill(buf, pos, base, 16)
                if buf is None:
                    return
            if len(buf) - pos < 16:
                if len(buf) > pos:
                    self._stop(f"file ends inside the header of record {self.records + 1}", base + pos)
                return
            sec, frac, caplen, wire_len = unpack_from(buf, pos)
            if caplen > MAX_RECORD_BYTES:
                self._stop(f"record {self.records + 1} has captured length {caplen} "
                           f"> {MAX_RECORD_BYTES}; the file is corrupt from here", base + pos)
                return
            end = pos + 16 + caplen
            if end > len(buf) and not eof:
                buf, pos, base, eof = self._refill(buf, pos, base, 16 + caplen)
                if buf is None:
                    return
                end = pos + 16 + caplen
            if end > len(buf):
                self._stop(f"file ends inside the data of record {self.records + 1} "
                           f"({len(buf) - pos - 16} of {caplen} bytes)", base + pos)
                return
            frame = bytes(buf[pos + 16:end])
            pos = end
            self.records += 1
            yield sec + frac * tick, linktype, frame, max(wire_len, caplen)

    def _refill(self, buf, pos, base, need):
        """Keep buf[pos:] and read until `need` bytes are there or the file ends.

        Returns (buf, 0, file offset of the new buf, at end of file), where the new buf is a
        memoryview of the reader's buffer: the kept bytes moved to its start, then what was
        read. buf is None when the stream failed, after `_stop` logged where.
        """
        rest = len(buf) - pos
        base += pos
        # A compressed stream cut short raises on a read past the cut and returns nothing,
        # so it is read only as far as the next record needs.
        fill = need if self.compression else max(CHUNK_BYTES, need)
        if self._buffer is None or len(self._buffer) < fill:
            # A new buffer, never a resized one: the views of the old one stay valid.
            old = buf[pos:]
            self._buffer = bytearray(max(fill, CHUNK_BYTES))
            self._view = memoryview(self._buffer)
            self._view[:rest] = old
        elif rest:
            # The slice assignment copies through a temporary when the ranges overlap.
            self._view[:rest] = buf[pos:]
        have = rest
        eof = False
        while have < need:
            size = fill - have
            try:
                if self._pipe is None or self.compression:
                    count = self._f.readinto(self._view[have:have + size])
                else:
                    # What has arrived, without waiting for a whole chunk.
                    count = self._f.readinto1(self._view[have:have + size])
            except _StopReading:
                return None, 0, base, True
            except _STREAM_ERRORS as e:
                self._stop(f"reading the {self.compression or 'file'} stream failed in record "
                           f"{self.records + 1}: {e}", base)
                return None, 0, base, True
            if not count:
                eof = True
                break
            have += count
        return self._view[:have], 0, base, eof

    # --- pcapng -----------------------------------------------------------------------

    def _start_pcapng(self):
        self._offset = 0
        self._interfaces = []
        self._endian = "<"
        body = self._read_or_fail(8, "section header block", before=4)
        bom = body[4:8]
        if bom == b"\x4d\x3c\x2b\x1a":
            self._endian = "<"
        elif bom == b"\x1a\x2b\x3c\x4d":
            self._endian = ">"
        else:
            raise CaptureFileError(f"{self.path}: invalid pcapng byte-order magic {bom.hex()}")
        (length,) = struct.unpack(self._endian + "I", body[0:4])
        if length < 28 or length % 4 or length > MAX_BLOCK_BYTES:
            raise CaptureFileError(f"{self.path}: invalid pcapng section header length {length}")
        self._read_or_fail(length - 12, "section header block", before=12)
        self._offset = length
        self._section_endian_pending = None

    def _parse_idb(self, body):
        e = self._endian
        if len(body) < 8:
            raise ValueError("interface description block too short")
        linktype, _reserved, snaplen = struct.unpack_from(e + "HHI", body, 0)
        tick, ticks_per_second, ts_offset = 1e-6, 10 ** 6, 0
        pos = 8
        while pos + 4 <= len(body):
            code, olen = struct.unpack_from(e + "HH", body, pos)
            value = body[pos + 4:pos + 4 + olen]
            if code == 0:
                break
            if code == 9 and olen >= 1:  # if_tsresol
                v = value[0]
                ticks_per_second = 2 ** (v & 0x7F) if v & 0x80 else 10 ** v
                tick = 2.0 ** -(v & 0x7F) if v & 0x80 else 10.0 ** -v
            elif code == 14 and olen >= 8:  # if_tsoffset, seconds
                (ts_offset,) = struct.unpack_from(e + "q", value, 0)
            pos += 4 + olen + (-olen % 4)
        self._interfaces.append((linktype, tick, ticks_per_second, ts_offset))
        if snaplen and (self.snaplen is None or snaplen < self.snaplen):
            self.snaplen = snaplen

    def _iter_pcapng(self):
        read = self._f.read
        while True:
            start = self._offset
            try:
                head = read(8)
            except _STREAM_ERRORS as e:
                self._stop(f"reading the {self.compression or 'file'} stream failed after record "
                           f"{self.records}: {e}", start)
                return
            if len(head) < 8:
                if head:
                    self._stop(f"file ends inside a block header after record {self.records}", start)
                return
            if head[0:4] == _PCAPNG_SHB:
                # A new section: its byte order and interfaces replace the old ones.
                bom = read(4)
                if bom == b"\x4d\x3c\x2b\x1a":
                    self._endian = "<"
                elif bom == b"\x1a\x2b\x3c\x4d":
                    self._endian = ">"
                else:
                    self._stop("invalid byte-order magic in a section header block", start)
                    return
                (length,) = struct.unpack(self._endian + "I", head[4:8])
                if length < 28 or length % 4 or length > MAX_BLOCK_BYTES:
                    self._stop(f"invalid section header block length {length}", start)
                    return
                rest = read(length - 12)
                if len(rest) < length - 12:
                    self._stop("file ends inside a section header block", start)
                    return
                self._interfaces = []
                self._offset += length
                continue
            btype, length = struct.unpack(self._endian + "II", head)
            if length < 12 or length % 4 or length > MAX_BLOCK_BYTES:
                self._stop(f"block after record {self.records} has invalid length {length}", start)
                return
            try:
                body = read(length - 8)
            except _STREAM_ERRORS as e:
                self._stop(f"reading the {self.compression or 'file'} stream failed in record "
                           f"{self.records + 1}: {e}", start)
                return
            if len(body) < length - 8:
                self._stop(f"file ends inside the block of record {self.records + 1}", start)
                return
            self._offset += length
            body = body[:-4]  # the trailing copy of the block length
            try:
                record = self._pcapng_record(btype, body)
            except (ValueError, IndexError, struct.error) as e:
                self._stop(f"invalid block after record {self.records}: {e}", start)
                return
            if record is not None:
                self.records += 1
                yield record

    def _pcapng_record(self, btype, body):
        e = self._endian
        if btype == 1:
            self._parse_idb(body)
            return None
        if btype == 6 or btype == 2:  # enhanced packet block, obsolete packet block
            if btype == 6:
                iface, hi, lo, caplen, wire_len = struct.unpack_from(e + "IIIII", body, 0)
            else:
                iface, _drops, hi, lo, caplen, wire_len = struct.unpack_from(e + "HHIIII", body, 0)
            if iface >= len(self._interfaces):
                raise ValueError(f"packet names interface {iface}, but only "
                                 f"{len(self._interfaces)} are described")
            if caplen > len(body) - 20 or caplen > MAX_RECORD_BYTES:
                raise ValueError(f"captured length {caplen} exceeds its block")
            linktype, tick, ticks_per_second, ts_offset = self._interfaces[iface]
            frame = body[20:20 + caplen]
            # Seconds plus the fraction times the tick, as a pcap record's time stamp is
            # computed, so the same capture gives the same floats (and model inputs) in both.
            seconds, fraction = divmod(hi << 32 | lo, ticks_per_second)
            ts = seconds + fraction * tick
            if ts_offset:
                ts += ts_offset
            return (ts, linktype, frame, max(wire_len, caplen))
        if btype == 3:  # simple packet block: interface 0, no time stamp
            if not self._interfaces:
                raise ValueError("simple packet block before any interface description")
            (wire_len,) = struct.unpack_from(e + "I", body, 0)
            linktype = self._interfaces[0][0]
            frame = body[4:4 + min(wire_len, len(body) - 4)]
            if len(frame) > MAX_RECORD_BYTES:
                raise ValueError(f"captured length {len(frame)} > {MAX_RECORD_BYTES}")
            return (0.0, linktype, frame, max(wire_len, len(frame)))
        return None  # statistics, name resolution, custom and unknown blocks

    # --- common -----------------------------------------------------------------------

    def _stop(self, what, offset):
        self.stopped = f"{self.path}: {what} (byte offset {offset}); kept {_records(self.records)}"
        log.warning("%s", self.stopped)

    def __iter__(self):
        # The pcap reader guards each of its reads itself. Returning its generator, not
        # delegating to it, saves a generator frame per record.
        return self.iter_records()

    def _iter_pcapng_guarded(self):
        try:
            yield from self._iter_pcapng()
        except _StopReading:
            return
        except _STREAM_ERRORS as e:
            # A stream error outside the guarded reads (a section header block).
            self.stopped = (f"{self.path}: reading the {self.compression or 'file'} stream failed "
                            f"after record {self.records}: {e}; kept {_records(self.records)}")
            log.warning("%s", self.stopped)

    def close(self):
        self._f.close()
        if self._pipe is not None:
            self._pipe.close()  # a compressed reader leaves the stream under it open

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
