"""Count the flows NFStream reports for one capture, with nDPI dissection on.

Usage: python nfstream_count.py FILE [N_DISSECTIONS]
Prints "flows=N". Runs in the NFStream venv, not in the edge-etc venv.
"""

import sys

from nfstream import NFStreamer


def main() -> int:
    if len(sys.argv) not in (2, 3):
        print("usage: nfstream_count.py FILE [N_DISSECTIONS]", file=sys.stderr)
        return 2
    n_dissections = int(sys.argv[2]) if len(sys.argv) == 3 else 20
    if n_dissections < 1:
        print(f"error: N_DISSECTIONS must be at least 1 so DPI stays on, got {n_dissections}", file=sys.stderr)
        return 2

    # 20 is NFStream's default n_dissections. Passing it explicitly keeps DPI on even if
    # a later NFStream release changes the default.
    streamer = NFStreamer(source=sys.argv[1], n_dissections=n_dissections)
    flows = 0
    for _ in streamer:
        flows += 1
    print(f"flows={flows}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
