"""Coverage-guided fuzzing of `CaptureFile` with atheris (libFuzzer).

Each input is the content of a capture file (pcap, pcapng, or either compressed). It is
written to a scratch file, opened, read to the end, and every record is decoded. Any
exception other than `CaptureFileError` at open, any exception while iterating, or a
record that breaks the reader's contract is a crash. Usage: see fuzz/README.md.
"""

import collections
import logging
import sys

import atheris

with atheris.instrument_imports(include=["edge_etc", "harness"]):
    import harness

KNOWN = harness.known_errors()
known_seen = collections.Counter()
SCRATCH = harness.scratch_path()


def test_one_input(data):
    try:
        harness.check_capfile_input(data, SCRATCH)
    except KNOWN as e:
        harness.report_known(known_seen, e)


def main():
    logging.disable(logging.CRITICAL)
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
