#!/usr/bin/env bash
# Build the benchmark captures mix_1m.pcap, flows_100k.pcap and flows_1k.pcap.
#
# Usage: benchmarks/make_inputs.sh [OUT_DIR]     (default: benchmarks/data)
# Environment: CORPUS   folder of real captures (default: ../shared/corpus next to the repository)
#              PYTHON   Python 3.10 or newer, standard library only (default: python3)
#
# Needs tcpdump and tcprewrite (Debian packages tcpdump and tcpreplay).
# The outputs are byte-identical on every rebuild with the same corpus, Python, tcpdump
# and tcprewrite versions; the expected sha256 values are in inputs.sha256.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
out_dir=${1:-$here/data}
corpus=${CORPUS:-$here/../../shared/corpus}
python=${PYTHON:-python3}

for tool in tcpdump tcprewrite sha256sum "$python"; do
    if ! command -v "$tool" >/dev/null; then
        echo "error: $tool not found in PATH" >&2
        exit 1
    fi
done
if [ ! -d "$corpus" ]; then
    echo "error: corpus folder $corpus not found. Set CORPUS to the folder of real captures." >&2
    exit 1
fi

mkdir -p "$out_dir"
cd "$out_dir"

# Each file is written under a temporary name and renamed when complete, so an
# interrupted build never leaves a truncated capture with the final name.
"$python" "$here/build_mix.py" --corpus "$corpus" --out mix_1m.pcap.partial
mv mix_1m.pcap.partial mix_1m.pcap

"$python" "$here/gen_flows.py" --flows 100000 --seed 1 --out flows_100k.pcap.partial
mv flows_100k.pcap.partial flows_100k.pcap

"$python" "$here/gen_flows.py" --flows 1000 --seed 1 --out flows_1k.pcap.partial
mv flows_1k.pcap.partial flows_1k.pcap

"$python" "$here/pcapfile.py" mix_1m.pcap flows_100k.pcap flows_1k.pcap
sha256sum mix_1m.pcap flows_100k.pcap flows_1k.pcap | tee SHA256SUMS

if cmp -s SHA256SUMS "$here/inputs.sha256"; then
    echo "sha256 matches $here/inputs.sha256"
else
    echo "warning: sha256 differs from $here/inputs.sha256." \
        "A different corpus, Python, tcpdump or tcprewrite version changes the bytes." >&2
fi
