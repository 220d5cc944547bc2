"""Write the seed corpora for the atheris harnesses.

    python fuzz/make_corpus.py     # writes fuzz/corpus/decoder, capfile and fastpath

Seeds: every capture in tests/data/cases and every capture that tests/data/own/make_own.py
builds, up to MAX_FILE_BYTES each. The capture file harness gets the files. The decoder
harness gets each distinct frame as a one-record input, and the first records of each
capture as one sequence, so fragments meet the rest of their datagram. Files are named by
the SHA-1 of their content, as libFuzzer names its own corpus entries. The differential
harness of the compiled fast path gets both kinds in its own format (fastpath_diff.py):
each decoder seed, and each classic pcap seed with read chunks of a varying size.
"""

import hashlib
import logging
import os
import struct
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(ROOT, "tests", "data", "own"))

import fastpath_diff  # noqa: E402
import harness  # noqa: E402
import make_own  # noqa: E402
from edge_etc.capfile import CaptureFile  # noqa: E402
from edge_etc.errors import CaptureFileError  # noqa: E402

CASES = os.path.join(ROOT, "tests", "data", "cases")
MAX_FILE_BYTES = 64 * 1024  # larger seeds slow every execution down
SEQUENCE_RECORDS = 40


def seed_files():
    """Yield (name, bytes) of every seed capture."""
    for name in sorted(os.listdir(CASES)):
        if name.endswith((".tsv", ".json")):
            continue
        with open(os.path.join(CASES, name), "rb") as f:
            yield name, f.read()
    with tempfile.TemporaryDirectory() as folder:
        for name in make_own.write_all(folder):
            with open(os.path.join(folder, name), "rb") as f:
                yield name, f.read()


def save(folder, data):
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, hashlib.sha1(data).hexdigest())
    with open(path, "wb") as f:
        f.write(data)


def main(out=os.path.join(HERE, "corpus")):
    logging.disable(logging.WARNING)  # truncated seeds are expected; their warnings are noise
    counts = {"capfile": 0, "decoder": 0, "fastpath": 0}
    frames = set()
    with tempfile.TemporaryDirectory() as scratch:
        for name, data in seed_files():
            if len(data) > MAX_FILE_BYTES:
                continue
            save(os.path.join(out, "capfile"), data)
            counts["capfile"] += 1
            try:
                flags, linktype = fastpath_diff.fuzz_flags_of(data, counts["fastpath"])
            except (ValueError, struct.error):
                pass  # not a classic pcap file of a supported link type
            else:
                save(os.path.join(out, "fastpath"), bytes([flags, linktype]) + data[24:])
                counts["fastpath"] += 1
            path = os.path.join(scratch, name)
            with open(path, "wb") as f:
                f.write(data)
            try:
                with CaptureFile(path) as capture:
                    records = list(capture)
            except CaptureFileError:
                continue
            by_linktype = {}
            for _, linktype, frame, _ in records:
                if linktype in harness.LINKTYPES:
                    frames.add((linktype, frame))
                    by_linktype.setdefault(linktype, []).append(frame)
            for linktype, group in by_linktype.items():
                sequence = harness.decoder_input(linktype, group[:SEQUENCE_RECORDS])
                save(os.path.join(out, "decoder"), sequence)
                save(os.path.join(out, "fastpath"), b"\x00" + sequence)
                counts["decoder"] += 1
                counts["fastpath"] += 1
    for linktype, frame in sorted(frames):
        single = harness.decoder_input(linktype, [frame])
        save(os.path.join(out, "decoder"), single)
        save(os.path.join(out, "fastpath"), b"\x00" + single)
        counts["decoder"] += 1
        counts["fastpath"] += 1
    for kind, n in counts.items():
        print(f"{kind}: {n} seeds in {os.path.join(out, kind)}")


if __name__ == "__main__":
    main(*sys.argv[1:])
