"""Selection of the compiled fast path (`edge_etc._fastpath`, built from _fastpath.c and
_engine.c).

The extension reads classic pcap records, decodes the common frame layouts and builds
model vectors in C, and its flow engine (`edge_etc.engine`) runs the runner's flow table,
windowing and decision rule in C. The pure-Python reader, decoder, vectorizer, flow table
and pipeline stay the reference: they run wherever the extension is not built, and the
Python decoder takes every record the extension hands back (pcapng blocks, fragments,
extension headers, tunnels, anything malformed). Both paths give the same records byte for
byte (tests/test_fastpath.py, tests/test_engine.py).

Set the environment variable EDGE_ETC_PURE_PYTHON=1 to run the pure-Python code even
where the extension is installed, e.g. to compare the two.
"""

import os

DISABLE_VARIABLE = "EDGE_ETC_PURE_PYTHON"

native = None
reason = None
if os.environ.get(DISABLE_VARIABLE, "") not in ("", "0"):
    reason = f"disabled by {DISABLE_VARIABLE}"
else:
    try:
        from . import _fastpath as native
    except ImportError as e:
        reason = f"compiled extension not available: {e}"


def describe():
    """Return one line naming the packet path in use, for the start-up log."""
    if native is not None:
        return ("compiled flow engine and fast path (edge_etc._fastpath) with the Python "
                "decoder for unusual records")
    return f"pure Python ({reason})"
