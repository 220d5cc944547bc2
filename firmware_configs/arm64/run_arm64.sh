#!/bin/bash
# Check edge-etc on arm64 under qemu-user. The script builds a Debian 12 arm64 root file
# system with debootstrap and installs edge-etc in it with firmware_configs/raspberry-pi/
# install.sh. Then it classifies capture files there and on this host, and compares the
# JSON lines file by file.
#
# Usage: sudo firmware_configs/arm64/run_arm64.sh [OPTIONS] [CAPTURE...]
#   --root DIR            arm64 root file system, built when missing and reused when complete
#                         [default: /var/tmp/edge-etc-arm64-root]; never inside the repository
#   --mirror URL          Debian mirror for debootstrap [default: the first Debian mirror in
#                         this host's apt sources, else http://deb.debian.org/debian]
#   --corpus DIR          folder that relative CAPTURE paths are taken from [default:
#                         $EDGE_ETC_CORPUS, else ../shared/corpus beside the repository]
#   --host-edge-etc PATH  edge-etc of this host for the reference run [default:
#                         .venv/bin/edge-etc of the repository, else edge-etc on PATH]
#   --source worktree|head  what is installed in the root: the working tree's tracked and
#                         untracked files, minus ignored ones (what an editable install on the
#                         host runs), or `git archive HEAD` [default: worktree]
#   --cpu NAME            CPU that qemu emulates (qemu-aarch64-static -cpu help lists them)
#                         [default: cortex-a72, the core of the Raspberry Pi 4]
#   --x86-cpuinfo         leave the root with the host's /proc/cpuinfo and without /sys, so
#                         that ai-edge-litert runs without its XNNPACK delegate
#   --numpy               also classify with --backend numpy on both sides
#   CAPTURE               capture files, absolute or relative to --corpus [default: one
#                         capture per class, see DEFAULT_CAPTURES]; the repository's
#                         tests/data/cases/eth_tls_2flows.pcap is always added
#
# Needs root, an x86_64 Debian host and network access to the Debian mirror and PyPI.
# Exit codes: 0 all records equal; 1 a step failed; 2 invalid arguments; 3 some records differ.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/../.." && pwd)
ROOT=/var/tmp/edge-etc-arm64-root
MIRROR=
CORPUS=${EDGE_ETC_CORPUS:-$REPO/../shared/corpus}
HOST_EDGE_ETC=
SOURCE_KIND=worktree
CPU=cortex-a72
X86_CPUINFO=0
WITH_NUMPY=0
SUITE=bookworm
# Marks a root whose debootstrap second stage finished.
ROOT_MARKER=.edge-etc-arm64-root-complete
# Paths inside the root.
SRC_IN_ROOT=/usr/src/edge-etc
WORK_IN_ROOT=/tmp/edge-etc-arm64
PREFIX_IN_ROOT=/opt/edge-etc

# One capture per class from the labelled corpus, each with at least 2 flows of 3 or more
# packets. stun_signal.pcapng is a pcapng file.
DEFAULT_CAPTURES=(
	Chat/ndpi/whatsapp.pcap
	Email/zeek/smtp.pcap
	FileTransfer/ndpi/webdav.pcap
	Game/ndpi/raknet.pcap
	P2P/ndpi/bittorrent.pcap
	RemoteAccess/ndpi/ssh.pcap
	Streaming/ndpi/netflix.pcap
	VPN/ndpi/tunnelbear.pcap
	VoIP/ndpi/stun_signal.pcapng
	Web/ndpi/reddit.pcap
)

MOUNTED=()
STEP_NAMES=()
STEP_SECONDS=()

log() {
	echo "run_arm64: $*" >&2
}

die() {
	echo "run_arm64: error: $*" >&2
	exit 1
}

usage_error() {
	echo "run_arm64: error: $* (see --help)" >&2
	exit 2
}

now() {
	date +%s.%N
}

seconds_since() {
	awk -v t0="$1" -v t1="$(now)" 'BEGIN { printf "%.1f", t1 - t0 }'
}

step_start() {
	STEP_NAME=$1
	STEP_T0=$(now)
	log "step '$STEP_NAME' started"
}

step_end() {
	local seconds
	seconds=$(seconds_since "$STEP_T0")
	STEP_NAMES+=("$STEP_NAME")
	STEP_SECONDS+=("$seconds")
	log "step '$STEP_NAME' finished in $seconds s"
	STEP_NAME=
}

print_step_times() {
	local i
	[ ${#STEP_NAMES[@]} -gt 0 ] || return 0
	echo "wall time per step:"
	for i in "${!STEP_NAMES[@]}"; do
		printf '  %-50s %8s s\n' "${STEP_NAMES[$i]}" "${STEP_SECONDS[$i]}"
	done
}

unmount_all() {
	local target
	# MOUNTED lists the newest mount first, so nested mounts go before their parents.
	for target in "${MOUNTED[@]}"; do
		umount "$target" || {
			log "umount $target failed; detaching it lazily"
			umount -l "$target" || log "could not unmount $target: unmount it by hand"
		}
	done
	MOUNTED=()
}

on_exit() {
	local status=$?
	unmount_all
	if [ "$status" != 0 ] && [ -n "${STEP_NAME:-}" ]; then
		STEP_NAMES+=("$STEP_NAME (stopped)")
		STEP_SECONDS+=("$(seconds_since "$STEP_T0")")
	fi
	print_step_times
	exit "$status"
}

# Mount inside the root and remember the mount for unmount_all. $1 is the path inside the
# root; the other arguments go to mount before the target.
mount_in_root() {
	local target=$ROOT$1
	shift
	[ -e "$target" ] || mkdir -p "$target"
	if mountpoint -q "$target"; then
		die "$target is already mounted: another run may be using the root, or an earlier run" \
			"was killed before it could unmount; check with 'grep $ROOT /proc/mounts'"
	fi
	mount "$@" "$target"
	MOUNTED=("$target" "${MOUNTED[@]}")
}

# Run a command inside the root with a clean environment, so the host's PIP_* and other
# settings do not leak in. qemu-user reads QEMU_CPU at the start of every process, so it is
# passed to env and kept for the processes that env starts.
in_root() {
	QEMU_CPU=$CPU chroot "$ROOT" /usr/bin/env -i \
		PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
		HOME=/root LANG=C.UTF-8 DEBIAN_FRONTEND=noninteractive QEMU_CPU="$CPU" "$@"
}

# Print the first Debian mirror (not the security archive) of this host's apt sources.
host_mirror() {
	local files=()
	[ -e /etc/apt/sources.list ] && files+=(/etc/apt/sources.list)
	shopt -s nullglob
	files+=(/etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources)
	shopt -u nullglob
	[ ${#files[@]} -gt 0 ] || return 0
	awk '
		/^[ \t]*URIs:/ { for (i = 2; i <= NF; i++) print $i }
		/^[ \t]*deb[ \t]/ {
			for (i = 2; i <= NF; i++) if ($i !~ /^\[/ && $i !~ /\]$/) { print $i; break }
		}
	' "${files[@]}" | grep -E '/debian/?$' | head -n 1
}

# Print the comment block at the top of this file.
print_help() {
	awk 'NR == 1 { next } /^#/ { sub(/^# ?/, ""); print; next } { exit }' "$0"
}

parse_args() {
	CAPTURES=()
	while [ $# -gt 0 ]; do
		case $1 in
		--root) [ $# -ge 2 ] || usage_error "--root needs a value"; ROOT=$2; shift 2 ;;
		--mirror) [ $# -ge 2 ] || usage_error "--mirror needs a value"; MIRROR=$2; shift 2 ;;
		--corpus) [ $# -ge 2 ] || usage_error "--corpus needs a value"; CORPUS=$2; shift 2 ;;
		--host-edge-etc)
			[ $# -ge 2 ] || usage_error "--host-edge-etc needs a value"
			HOST_EDGE_ETC=$2
			shift 2
			;;
		--source) [ $# -ge 2 ] || usage_error "--source needs a value"; SOURCE_KIND=$2; shift 2 ;;
		--cpu) [ $# -ge 2 ] || usage_error "--cpu needs a value"; CPU=$2; shift 2 ;;
		--x86-cpuinfo) X86_CPUINFO=1; shift ;;
		--numpy) WITH_NUMPY=1; shift ;;
		-h | --help) print_help; exit 0 ;;
		-*) usage_error "unknown option: $1" ;;
		*) CAPTURES+=("$1"); shift ;;
		esac
	done

	case $SOURCE_KIND in
	worktree | head) ;;
	*) usage_error "invalid --source '$SOURCE_KIND': expected worktree or head" ;;
	esac
	case $CPU in
	'' | *[!A-Za-z0-9,=_-]*) usage_error "invalid --cpu '$CPU': expected a name from 'qemu-aarch64-static -cpu help', optionally with ,property=value" ;;
	esac

	ROOT=$(realpath -m "$ROOT")
	case $ROOT/ in
	/ | "$REPO"/*) usage_error "invalid --root '$ROOT': it must not be / or inside the repository $REPO" ;;
	esac

	if [ -z "$MIRROR" ]; then
		MIRROR=$(host_mirror)
		[ -n "$MIRROR" ] || MIRROR=http://deb.debian.org/debian
	fi

	if [ -z "$HOST_EDGE_ETC" ]; then
		if [ -x "$REPO/.venv/bin/edge-etc" ]; then
			HOST_EDGE_ETC=$REPO/.venv/bin/edge-etc
		else
			HOST_EDGE_ETC=$(command -v edge-etc) ||
				usage_error "no edge-etc on this host: install it or give --host-edge-etc PATH"
		fi
	fi
	[ -x "$HOST_EDGE_ETC" ] || usage_error "--host-edge-etc '$HOST_EDGE_ETC' is not an executable file"

	[ ${#CAPTURES[@]} -gt 0 ] || CAPTURES=("${DEFAULT_CAPTURES[@]}")
	local i
	for i in "${!CAPTURES[@]}"; do
		case ${CAPTURES[$i]} in
		/*) ;;
		*) CAPTURES[i]=$CORPUS/${CAPTURES[$i]} ;;
		esac
		[ -f "${CAPTURES[$i]}" ] || usage_error "capture file not found: ${CAPTURES[$i]}"
	done
	CAPTURES+=("$REPO/tests/data/cases/eth_tls_2flows.pcap")
}

install_host_tools() {
	local missing=()
	command -v debootstrap >/dev/null || missing+=(debootstrap)
	[ -x /usr/bin/qemu-aarch64-static ] || missing+=(qemu-user-static)
	command -v update-binfmts >/dev/null || missing+=(binfmt-support)
	if [ ${#missing[@]} -gt 0 ]; then
		log "installing ${missing[*]}"
		apt-get update -q
		DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}"
	fi

	local binfmt=/proc/sys/fs/binfmt_misc
	if [ ! -e "$binfmt/register" ]; then
		# Stays mounted after the run, as when binfmt-support mounts it at boot.
		log "mounting binfmt_misc on $binfmt"
		mount -t binfmt_misc binfmt_misc "$binfmt"
	fi
	if [ ! -e "$binfmt/qemu-aarch64" ]; then
		update-binfmts --import qemu-aarch64 2>/dev/null || true
	fi
	update-binfmts --enable qemu-aarch64 ||
		die "update-binfmts --enable qemu-aarch64 failed; see $binfmt"
	head -n 1 "$binfmt/qemu-aarch64" | grep -qx enabled ||
		die "the binfmt entry $binfmt/qemu-aarch64 is not enabled"
	# With the F flag the kernel opens the interpreter once at registration, so the root
	# needs no copy of qemu-aarch64-static.
	if grep -q '^flags:.*F' "$binfmt/qemu-aarch64"; then
		QEMU_FIXED=1
	else
		QEMU_FIXED=0
	fi
	log "binfmt qemu-aarch64: $(grep -E '^(interpreter|flags)' "$binfmt/qemu-aarch64" | tr '\n' ' ')"
}

build_root() {
	if [ -e "$ROOT/$ROOT_MARKER" ]; then
		log "reusing the arm64 root $ROOT ($(cat "$ROOT/etc/debian_version"))"
		return 0
	fi
	if [ -e "$ROOT" ] && [ -n "$(ls -A "$ROOT")" ]; then
		die "$ROOT exists but its debootstrap run did not finish; after checking that nothing" \
			"is mounted below it (grep $ROOT /proc/mounts), remove it and run again"
	fi

	log "debootstrap $SUITE arm64 from $MIRROR into $ROOT"
	debootstrap --arch=arm64 --foreign --include=ca-certificates "$SUITE" "$ROOT" "$MIRROR"
	if [ "$QEMU_FIXED" = 0 ]; then
		install -m 755 /usr/bin/qemu-aarch64-static "$ROOT/usr/bin/qemu-aarch64-static"
	fi
	# The second stage mounts /proc and /sys in the root itself and unmounts them at the end.
	chroot "$ROOT" /debootstrap/debootstrap --second-stage
	touch "$ROOT/$ROOT_MARKER"
}

copy_source() {
	local dest=$ROOT$SRC_IN_ROOT
	rm -rf "$dest"
	mkdir -p "$dest"
	if [ "$SOURCE_KIND" = head ]; then
		git -C "$REPO" archive HEAD | tar -xf - -C "$dest"
		if ! git -C "$REPO" diff --quiet HEAD -- edge_etc pyproject.toml; then
			log "warning: edge_etc/ or pyproject.toml differ from HEAD in the working tree," \
				"which an editable install on the host runs"
		fi
	else
		# Tracked files that were deleted in the working tree are left out.
		(
			cd "$REPO"
			git ls-files -z --cached --others --exclude-standard |
				while IFS= read -r -d '' path; do
					[ -e "$path" ] && printf '%s\0' "$path"
				done |
				tar --null -T - -cf -
		) | tar -xf - -C "$dest"
	fi
	log "copied the $SOURCE_KIND source ($(du -sh "$dest" | cut -f 1)) to $SRC_IN_ROOT in the root"
}

install_in_root() {
	cp -L /etc/resolv.conf "$ROOT/etc/resolv.conf"
	# Certificate authorities added on this host (for example that of a TLS-inspecting
	# proxy) go into the root too, so pip there trusts the same servers as pip here.
	local local_cas=(/usr/local/share/ca-certificates/*.crt)
	if [ -e "${local_cas[0]}" ]; then
		cp "${local_cas[@]}" "$ROOT/usr/local/share/ca-certificates/"
		in_root update-ca-certificates
	fi
	# debootstrap leaves no package lists behind, and install.sh runs apt-get install.
	in_root apt-get update -q
	# --iface only sets capture.interface in /etc/edge-etc/edge-etc.toml, which the --pcap
	# runs below do not read. systemctl 252 did not notice the chroot on a host whose PID 1
	# is not systemd, and its daemon-reload failed with "System has not been booted with
	# systemd"; SYSTEMD_OFFLINE=1 makes it skip daemon-reload and enable the unit offline.
	in_root SYSTEMD_OFFLINE=1 sh "$SRC_IN_ROOT/firmware_configs/raspberry-pi/install.sh" \
		--iface eth0 --source "$SRC_IN_ROOT" --no-start
	[ -L "$ROOT/etc/systemd/system/multi-user.target.wants/edge-etc.service" ] ||
		die "install.sh did not enable edge-etc.service in the root"

	# pip can keep an installed copy of the same version, so check that the installed
	# package is the copied source.
	local site
	site=$(echo "$ROOT$PREFIX_IN_ROOT"/lib/python3*/site-packages)
	diff -rq -x __pycache__ -x convert "$ROOT$SRC_IN_ROOT/edge_etc" "$site/edge_etc" ||
		die "the edge_etc package in $PREFIX_IN_ROOT differs from $SRC_IN_ROOT"
}

# Give the root a /proc/cpuinfo that describes the emulated CPU, and mount /sys.
#
# qemu-user 7.2 shows an aarch64 process the host's x86 /proc/cpuinfo. With /sys mounted
# as well, the constructor of the ai-edge-litert 2.3.0 interpreter crashes with a
# segmentation fault. Without /sys, the cpuinfo library inside it gives up, so XNNPACK does
# not start and the interpreter runs its built-in kernels, unlike on a real arm64 device.
# The file written here has one entry per host CPU, with the MIDR_EL1 fields (implementer,
# variant, part, revision) that the emulated CPU returns. It has no Features line. XNNPACK
# still follows the emulated CPU's extensions (switching SME off changes its results), so it
# presumably reads them from the auxiliary vector, which qemu fills for that CPU.
set_up_cpu_identity() {
	local probe_dir=$ROOT/var/tmp/edge-etc-arm64-cpu
	mkdir -p "$probe_dir"
	cat >"$probe_dir/cpu_id.c" <<'EOF_C'
#include <stdio.h>
#include <sys/auxv.h>

int main(void) {
    unsigned long midr;
    /* Linux, and qemu-user like it, lets user space read MIDR_EL1. */
    __asm__ volatile("mrs %0, midr_el1" : "=r"(midr));
    printf("%lu %#lx %#lx\n", midr, getauxval(AT_HWCAP), getauxval(AT_HWCAP2));
    return 0;
}
EOF_C
	in_root gcc -O1 -o /var/tmp/edge-etc-arm64-cpu/cpu_id /var/tmp/edge-etc-arm64-cpu/cpu_id.c

	local midr hwcap hwcap2 cpus i
	read -r midr hwcap hwcap2 < <(in_root /var/tmp/edge-etc-arm64-cpu/cpu_id) || true
	[[ $midr =~ ^[0-9]+$ ]] || die "could not read MIDR_EL1 of the emulated CPU '$CPU'"
	CPU_DESCRIPTION=$(printf 'MIDR_EL1 %#x, AT_HWCAP %s, AT_HWCAP2 %s' "$midr" "$hwcap" "$hwcap2")
	cpus=$(grep -c '^processor' /proc/cpuinfo)
	: >"$probe_dir/cpuinfo"
	for ((i = 0; i < cpus; i++)); do
		printf 'processor\t: %d\nCPU implementer\t: %#x\nCPU architecture: 8\n' \
			"$i" $(((midr >> 24) & 0xff)) >>"$probe_dir/cpuinfo"
		printf 'CPU variant\t: %#x\nCPU part\t: %#05x\nCPU revision\t: %d\n\n' \
			$(((midr >> 20) & 0xf)) $(((midr >> 4) & 0xfff)) $((midr & 0xf)) >>"$probe_dir/cpuinfo"
	done
	mount_in_root /sys -t sysfs sysfs
	mount_in_root /proc/cpuinfo --bind "$probe_dir/cpuinfo"
}

# Print the platform and the versions that the records depend on, on the host and in the root.
print_versions() {
	local probe='
import platform, sys
from importlib.metadata import version
print("  machine:", platform.machine(), "| python:", sys.version.split()[0])
for name in ("numpy", "ai-edge-litert", "pypcap", "click", "edge-etc"):
    try:
        print("  %s: %s" % (name, version(name)))
    except Exception as error:
        print("  %s: not installed (%s)" % (name, error))
'
	echo "host:"
	echo "  uname -m: $(uname -m) | Debian $(cat /etc/debian_version)" \
		"| libpcap $(dpkg-query -W -f '${Version}' libpcap0.8 2>/dev/null || echo unknown)"
	"$(dirname "$HOST_EDGE_ETC")/python" -c "$probe"
	"$(dirname "$HOST_EDGE_ETC")/python" -c 'import edge_etc; print("  edge_etc from:", edge_etc.__file__)'
	echo "arm64 root:"
	# shellcheck disable=SC2016 # dpkg-query expands ${Version} itself.
	echo "  uname -m: $(in_root uname -m) | Debian $(cat "$ROOT/etc/debian_version")" \
		"| libpcap $(in_root dpkg-query -W -f '${Version}' libpcap0.8)"
	in_root "$PREFIX_IN_ROOT/bin/python" -c "$probe"
	echo "  qemu: $(/usr/bin/qemu-aarch64-static --version | head -n 1), CPU $CPU ($CPU_DESCRIPTION)"
}

copy_captures() {
	local work=$ROOT$WORK_IN_ROOT capture name
	rm -rf "$work"
	mkdir -p "$work/in"
	NAMES=()
	for capture in "${CAPTURES[@]}"; do
		# Class/source/file.pcap becomes Class__source__file.pcap.
		case $capture in
		"$CORPUS"/*) name=${capture#"$CORPUS"/} ;;
		*) name=$(basename "$capture") ;;
		esac
		name=${name//\//__}
		cp "$capture" "$work/in/$name"
		NAMES+=("$name")
	done
	log "copied ${#NAMES[@]} captures to $WORK_IN_ROOT/in in the root"
}

# Classify every capture with backend $2 on side $1 (arm64 or host). The records go to
# $ROOT$WORK_IN_ROOT/$1-$2/NAME.jsonl and stderr to NAME.log.
classify_all() {
	local side=$1 backend=$2 out=$ROOT$WORK_IN_ROOT/$1-$2 name t0 status failed=0
	mkdir -p "$out"
	for name in "${NAMES[@]}"; do
		t0=$(now)
		status=0
		# The debug level logs the interpreter's own lines, such as the creation of the
		# XNNPACK delegate.
		if [ "$side" = arm64 ]; then
			in_root "$PREFIX_IN_ROOT/bin/edge-etc" run --backend "$backend" --log-level debug \
				--pcap "$WORK_IN_ROOT/in/$name" >"$out/$name.jsonl" 2>"$out/$name.log" || status=$?
		else
			"$HOST_EDGE_ETC" run --backend "$backend" --log-level debug \
				--pcap "$ROOT$WORK_IN_ROOT/in/$name" >"$out/$name.jsonl" 2>"$out/$name.log" || status=$?
		fi
		printf '  %-6s %-7s %-45s exit %d, %5d records, %6s s\n' "$side" "$backend" "$name" \
			"$status" "$(wc -l <"$out/$name.jsonl")" "$(seconds_since "$t0")"
		if [ "$status" != 0 ]; then
			log "edge-etc failed on $name ($side, $backend); last log lines:"
			tail -n 5 "$out/$name.log" >&2
			failed=1
		fi
	done
	if grep -q 'XNNPACK delegate' "$out/${NAMES[0]}.log"; then
		echo "  $side $backend: the interpreter created the XNNPACK delegate"
	elif [ "$backend" != numpy ]; then
		echo "  $side $backend: no XNNPACK delegate in the log; the interpreter's warnings:"
		grep 'WARNING: interpreter' "$out/${NAMES[0]}.log" | sed 's/^/    /' || true
	fi
	return "$failed"
}

# Compare the records of two runs file by file, and print one line per file and a total.
# $1 and $2 are folders of NAME.jsonl files. $3 is "exact" (the files must be equal byte for
# byte, so every field of every record, ts included) or "labels" (only count the flows whose
# first and last labels agree). Exits 3 in exact mode when any file differs.
compare_runs() {
	python3 - "$@" "${NAMES[@]}" <<'EOF'
import json
import sys

left_dir, right_dir, mode, names = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]


def load(path):
    with open(path, encoding="utf-8") as stream:
        return [json.loads(line) for line in stream]


def records_by_flow(records):
    """Map each flow (protocol and both endpoints) to its records, in output order."""
    flows = {}
    for record in records:
        key = (record["proto"], record["src_ip"], record["src_port"],
               record["dst_ip"], record["dst_port"])
        flows.setdefault(key, []).append(record)
    return flows


differing = 0
totals = {"flows": 0, "first": 0, "last": 0}
for name in names:
    with open("%s/%s.jsonl" % (left_dir, name), "rb") as stream:
        left_bytes = stream.read()
    with open("%s/%s.jsonl" % (right_dir, name), "rb") as stream:
        right_bytes = stream.read()
    left = load("%s/%s.jsonl" % (left_dir, name))
    right = load("%s/%s.jsonl" % (right_dir, name))
    left_flows, right_flows = records_by_flow(left), records_by_flow(right)
    common = sorted(set(left_flows) & set(right_flows))
    first = sum(left_flows[k][0]["label"] == right_flows[k][0]["label"] for k in common)
    last = sum(left_flows[k][-1]["label"] == right_flows[k][-1]["label"] for k in common)
    flows = len(set(left_flows) | set(right_flows))
    totals["flows"] += flows
    totals["first"] += first
    totals["last"] += last

    # Largest confidence gap between records in the same position of the same flow.
    gap = 0.0
    for key in common:
        for a, b in zip(left_flows[key], right_flows[key]):
            gap = max(gap, abs(a["confidence"] - b["confidence"]))

    if mode == "exact":
        equal = left_bytes == right_bytes
        differing += not equal
        verdict = "equal" if equal else "different"
        print("  %-9s %-45s %4d vs %4d records; first labels agree %d/%d, last %d/%d;"
              " max confidence gap %.4f" % (verdict, name, len(left), len(right), first,
                                            flows, last, flows, gap))
    else:
        print("  %-45s %4d vs %4d records; first labels agree %d/%d, last %d/%d;"
              " max confidence gap %.4f" % (name, len(left), len(right), first, flows,
                                            last, flows, gap))

print("  total: %d flows; first labels agree %d, last labels agree %d"
      % (totals["flows"], totals["first"], totals["last"]))
if mode == "exact":
    print("  %d of %d files differ" % (differing, len(names)))
    sys.exit(3 if differing else 0)
EOF
}

main() {
	parse_args "$@"
	[ "$(id -u)" -eq 0 ] || die "run as root: debootstrap, chroot and mount need it"
	[ "$(uname -m)" = x86_64 ] || die "this script compares arm64 with an x86_64 host, not $(uname -m)"

	log "root: $ROOT | mirror: $MIRROR | host edge-etc: $HOST_EDGE_ETC | source: $SOURCE_KIND | CPU: $CPU"
	mkdir -p "$(dirname "$ROOT")"
	exec 9>"$ROOT.lock"
	flock -n 9 || die "$ROOT.lock is locked: another run uses $ROOT; wait for it to finish"
	trap on_exit EXIT
	trap 'exit 130' INT
	trap 'exit 143' TERM

	step_start "1 host tools and binfmt"
	install_host_tools
	step_end

	step_start "2 debootstrap arm64 root"
	build_root
	step_end

	mount_in_root /proc -t proc proc
	mount_in_root /dev --bind /dev
	mount_in_root /dev/pts --bind /dev/pts

	step_start "3 copy source, install.sh in the root"
	copy_source
	install_in_root
	step_end

	step_start "4 CPU identity, versions"
	CPU_DESCRIPTION="the host's x86 /proc/cpuinfo, no /sys"
	[ "$X86_CPUINFO" = 1 ] || set_up_cpu_identity
	print_versions
	step_end

	copy_captures
	local failed=0 different=0 status

	step_start "5 arm64 run, litert"
	classify_all arm64 litert || failed=1
	step_end

	step_start "6 host run, litert"
	classify_all host litert || failed=1
	step_end

	if [ "$WITH_NUMPY" = 1 ]; then
		step_start "7 arm64 run, numpy"
		classify_all arm64 numpy || failed=1
		step_end

		step_start "8 host run, numpy"
		classify_all host numpy || failed=1
		step_end
	fi
	[ "$failed" = 0 ] || die "edge-etc failed on some captures; the logs are in $ROOT$WORK_IN_ROOT"

	local work=$ROOT$WORK_IN_ROOT
	echo "arm64 litert against host litert, every field of every record:"
	status=0
	compare_runs "$work/arm64-litert" "$work/host-litert" exact || status=$?
	case $status in
	0) ;;
	3) different=1 ;;
	*) die "the comparison failed (exit $status)" ;;
	esac
	if [ "$WITH_NUMPY" = 1 ]; then
		echo "arm64 numpy against host numpy, every field of every record:"
		status=0
		compare_runs "$work/arm64-numpy" "$work/host-numpy" exact || status=$?
		case $status in
		0) ;;
		3) different=1 ;;
		*) die "the comparison failed (exit $status)" ;;
		esac
		echo "arm64 numpy against host litert, labels:"
		compare_runs "$work/arm64-numpy" "$work/host-litert" labels
	fi
	log "records and logs: $work"
	if [ "$different" = 1 ]; then
		exit 3
	fi
}

main "$@"
