"""Read and write classic pcap files (libpcap format 2.4) with the standard library only.

pcapng is not handled here: callers first convert pcapng to pcap with
`tcpdump -r IN -w OUT`, which writes classic microsecond pcap.
"""

import struct
import sys
from typing import BinaryIO, Iterator, NamedTuple

LINKTYPE_NULL = 0
LINKTYPE_ETHERNET = 1
LINKTYPE_RAW = 101
LINKTYPE_LINUX_SLL = 113

MAGIC_MICRO = 0xA1B2C3D4
MAGIC_NANO = 0xA1B23C4D
GLOBAL_HEADER_LEN = 24
RECORD_HEADER_LEN = 16
DEFAULT_SNAPLEN = 262144


class PcapHeader(NamedTuple):
    endian: str  # "<" or ">", as struct format prefix
    nanosecond: bool
    snaplen: int
    linktype: int


class Record(NamedTuple):
    ts_us: int  # timestamp in microseconds since the epoch
    orig_len: int  # length of the packet on the wire, which can exceed len(data)
    data: bytes


def read_header(stream: BinaryIO) -> PcapHeader:
    """Read the 24-byte global header. Raises ValueError if the file is not classic pcap."""
    raw = stream.read(GLOBAL_HEADER_LEN)
    if len(raw) != GLOBAL_HEADER_LEN:
        raise ValueError(f"file is shorter than a pcap header ({len(raw)} bytes)")

    for endian in ("<", ">"):
        magic = struct.unpack(endian + "I", raw[:4])[0]
        if magic in (MAGIC_MICRO, MAGIC_NANO):
            snaplen, linktype = struct.unpack(endian + "II", raw[16:24])
            return PcapHeader(endian, magic == MAGIC_NANO, snaplen, linktype & 0x0FFFFFFF)

    raise ValueError(
        f"not a classic pcap file (magic {raw[:4].hex()}). Convert pcapng first with tcpdump -r IN -w OUT."
    )


def iter_records(stream: BinaryIO, header: PcapHeader) -> Iterator[Record]:
    """Yield the packet records that follow the global header, with timestamps in microseconds."""
    record_format = header.endian + "IIII"
    while True:
        raw = stream.read(RECORD_HEADER_LEN)
        if not raw:
            return
        if len(raw) != RECORD_HEADER_LEN:
            raise ValueError("truncated pcap record header at end of file")

        seconds, fraction, captured_len, orig_len = struct.unpack(record_format, raw)
        data = stream.read(captured_len)
        if len(data) != captured_len:
            raise ValueError("truncated pcap record data at end of file")

        if header.nanosecond:
            fraction //= 1000
        yield Record(seconds * 1_000_000 + fraction, orig_len, data)


def read_file(path: str) -> tuple[PcapHeader, list[Record]]:
    with open(path, "rb") as stream:
        header = read_header(stream)
        return header, list(iter_records(stream, header))


def count_packets(path: str) -> int:
    """Count the records of a classic pcap file by reading only the record headers."""
    count = 0
    with open(path, "rb") as stream:
        header = read_header(stream)
        record_format = header.endian + "IIII"
        while True:
            raw = stream.read(RECORD_HEADER_LEN)
            if not raw:
                return count
            if len(raw) != RECORD_HEADER_LEN:
                raise ValueError(f"{path}: truncated pcap record header after {count} records")
            captured_len = struct.unpack(record_format, raw)[2]
            stream.seek(captured_len, 1)
            count += 1


def write_header(stream: BinaryIO, linktype: int = LINKTYPE_ETHERNET, snaplen: int = DEFAULT_SNAPLEN) -> None:
    """Write a little-endian microsecond pcap global header."""
    stream.write(struct.pack("<IHHiIII", MAGIC_MICRO, 2, 4, 0, 0, snaplen, linktype))


def write_record(stream: BinaryIO, ts_us: int, data: bytes, orig_len: int | None = None) -> None:
    if orig_len is None:
        orig_len = len(data)
    seconds, micros = divmod(ts_us, 1_000_000)
    stream.write(struct.pack("<IIII", seconds, micros, len(data), orig_len))
    stream.write(data)


def summarize(path: str) -> dict:
    """Return packet count, first and last timestamp and the count of backward timestamp steps."""
    packets = 0
    backward_steps = 0
    first_ts = last_ts = None
    with open(path, "rb") as stream:
        header = read_header(stream)
        for record in iter_records(stream, header):
            if last_ts is not None and record.ts_us < last_ts:
                backward_steps += 1
            if first_ts is None:
                first_ts = record.ts_us
            last_ts = record.ts_us
            packets += 1
    return {
        "linktype": header.linktype,
        "packets": packets,
        "first_ts_us": first_ts,
        "last_ts_us": last_ts,
        "backward_steps": backward_steps,
    }


if __name__ == "__main__":
    for argument in sys.argv[1:]:
        summary = summarize(argument)
        print(argument, " ".join(f"{key}={value}" for key, value in summary.items()))
