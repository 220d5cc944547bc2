"""Coverage-guided fuzzing of `Decoder.decode` with atheris (libFuzzer).

Each input is a link type and a sequence of frames (format in fuzz/harness.py), decoded
by one decoder, so IP fragment reassembly and its buffer bounds are fuzzed too. Any
exception other than `PacketError`, or a packet or vector that breaks its contract, is a
crash. Usage: see fuzz/README.md.
"""

import collections
import logging
import sys

import atheris

with atheris.instrument_imports(include=["edge_etc", "harness"]):
    import harness

KNOWN = harness.known_errors()
known_seen = collections.Counter()


def test_one_input(data):
    try:
        harness.check_decoder_input(data)
    except KNOWN as e:
        harness.report_known(known_seen, e)


def main():
    logging.disable(logging.CRITICAL)
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
