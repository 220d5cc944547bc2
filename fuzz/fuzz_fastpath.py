"""Coverage-guided differential fuzzing of the compiled fast path with atheris.

Each input is a decoder input or a pcap file (format in fuzz/fastpath_diff.py). The
compiled decoder, vectorizer and pcap record slicer must give exactly what the Python
code gives; any difference or exception is a crash. Build the extension with
AddressSanitizer to catch reads and writes out of bounds as well (fuzz/README.md).
"""

import logging
import sys

import atheris

with atheris.instrument_imports(include=["edge_etc", "harness", "fastpath_diff"]):
    import fastpath_diff
    import harness

SCRATCH = harness.scratch_path()


def test_one_input(data):
    fastpath_diff.check_input(data, SCRATCH)


def main():
    if not fastpath_diff.available():
        raise SystemExit("edge_etc._fastpath is not built or is disabled; nothing to compare")
    logging.disable(logging.CRITICAL)
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
