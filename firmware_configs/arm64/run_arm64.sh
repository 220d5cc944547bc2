#!/bin/bash
# Check edge-etc on another CPU architecture: arm64 or armhf under qemu-user, or i386, which
# an x86_64 kernel runs natively. The script builds a Debian 12 root file system of that
# architecture with debootstrap and installs edge-etc in it with firmware_configs/
# raspberry-pi/install.sh. Then it classifies capture files there and on this host, and
# compares the JSON lines file by file.
#
# Usage: sudo firmware_configs/arm64/run_arm64.sh [OPTIONS] [CAPTURE...]
#   --arch arm64|armhf|i386  Debian architecture of the root [default: arm64]. No
#                         ai-edge-litert wheel exists for armhf and i386, so there the root
#                         runs only --backend numpy (as if --numpy were given)
#   --root DIR            root file system, built when missing and reused when complete
#                         [default: /var/tmp/edge-etc-ARCH-root]; never inside the repository
#   --mirror URL          Debian mirror for debootstrap [default: the first Debian mirror in
#                         this host's apt sources, else http://deb.debian.org/debian]
#   --corpus DIR          folder that relative CAPTURE paths are taken from [default:
#                         $EDGE_ETC_CORPUS, else ../shared/corpus beside the repository]
#   --host-edge-etc PATH  edge-etc of this host for the reference run [default:
#                         .venv/bin/edge-etc of the repository, else edge-etc on PATH]
#   --source worktree|head  what is installed in the root: the working tree's tracked and
#                         untracked files, minus ignored ones (what an editable install on the
#                         host runs), or `git archive HEAD` [default: worktree]
#   --cpu NAME            CPU that qemu emulates (qemu-aarch64-static -cpu help or
#                         qemu-arm-static -cpu help lists them) [default: cortex-a72, the
#                         core of the Raspberry Pi 4, for arm64; cortex-a7, that of the
#                         Raspberry Pi 2, for armhf]; not for i386
#   --x86-cpuinfo         arm64 only: leave the root with the host's /proc/cpuinfo and without
#                         /sys, so that ai-edge-litert runs without its XNNPACK delegate
#   --numpy               also classify with --backend numpy on both sides
#   --windows             also compare the numpy backend's int8 outputs on every window of
#                         the corpus, both kernel families, and the windows themselves
#   --tests               also run the repository's tests in the root with the installed
#                         edge-etc (tests that need TensorFlow or ai-edge-litert skip)
#   CAPTURE               capture files, absolute or relative to --corpus [default: one
#                         capture per class, see DEFAULT_CAPTURES]; the repository's
#                         tests/data/cases/eth_tls_2flows.pcap is always added
#
# Needs root, an x86_64 Debian host and network access to the Debian mirror and PyPI.
# Exit codes: 0 all records equal; 1 a step failed; 2 invalid arguments; 3 some records differ.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/../.." && pwd)
ARCH=arm64
ROOT=
MIRROR=
CORPUS=${EDGE_ETC_CORPUS:-$REPO/../shared/corpus}
HOST_EDGE_ETC=
SOURCE_KIND=worktree
CPU=
X86_CPUINFO=0
WITH_NUMPY=0
WITH_WINDOWS=0
WITH_TESTS=0
SUITE=bookworm
# Paths inside the root.
SRC_IN_ROOT=/usr/src/edge-etc
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
	# MOUNTED lists the newest mount first, so nested mounts go before their parents. -R also
	# takes the mounts that `ip netns add` makes below the root's bind mount of itself.
	for target in "${MOUNTED[@]}"; do
		umount -R "$target" || {
			log "umount $target failed; detaching it lazily"
			umount -R -l "$target" || log "could not unmount $target: unmount it by hand"
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
# passed to env and kept for the processes that env starts. An i386 root runs under
# `setarch i686`, so that uname -m, and with it pip's platform_machine, is i686 as on a
# 32-bit kernel instead of the host's x86_64.
in_root() {
	QEMU_CPU=$CPU "${CHROOT_PREFIX[@]}" chroot "$ROOT" /usr/bin/env -i \
		PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
		HOME=/root LANG=C.UTF-8 DEBIAN_FRONTEND=noninteractive QEMU_CPU="$CPU" "$@"
}

# Set what depends on ARCH: the qemu-user emulator and its binfmt entry, the default CPU,
# the machine name that uname -m prints in the root, and the default paths.
set_arch() {
	QEMU_NAME=
	CHROOT_PREFIX=()
	case $ARCH in
	arm64) QEMU_NAME=qemu-aarch64 DEFAULT_CPU=cortex-a72 MACHINE=aarch64 LITERT_IN_ROOT=1 ;;
	armhf) QEMU_NAME=qemu-arm DEFAULT_CPU=cortex-a7 MACHINE=armv7l LITERT_IN_ROOT=0 ;;
	i386) DEFAULT_CPU='' MACHINE=i686 LITERT_IN_ROOT=0 CHROOT_PREFIX=(setarch i686) ;;
	*) usage_error "invalid --arch '$ARCH': expected arm64, armhf or i386" ;;
	esac
	QEMU_BIN=${QEMU_NAME:+/usr/bin/$QEMU_NAME-static}
	[ -n "$ROOT" ] || ROOT=/var/tmp/edge-etc-$ARCH-root
	# Marks a root whose debootstrap second stage finished.
	ROOT_MARKER=.edge-etc-$ARCH-root-complete
	WORK_IN_ROOT=/tmp/edge-etc-$ARCH
	if [ -z "$QEMU_NAME" ]; then
		[ -z "$CPU" ] || usage_error "--cpu is for qemu-user, which an $ARCH root does not use"
	elif [ -z "$CPU" ]; then
		CPU=$DEFAULT_CPU
	fi
	if [ "$X86_CPUINFO" = 1 ] && [ "$ARCH" != arm64 ]; then
		usage_error "--x86-cpuinfo is for arm64 only"
	fi
	# Without ai-edge-litert in the root, the numpy runs are the comparison.
	[ "$LITERT_IN_ROOT" = 1 ] || WITH_NUMPY=1
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
		--arch) [ $# -ge 2 ] || usage_error "--arch needs a value"; ARCH=$2; shift 2 ;;
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
		--windows) WITH_WINDOWS=1; shift ;;
		--tests) WITH_TESTS=1; shift ;;
		-h | --help) print_help; exit 0 ;;
		-*) usage_error "unknown option: $1" ;;
		*) CAPTURES+=("$1"); shift ;;
		esac
	done

	case $SOURCE_KIND in
	worktree | head) ;;
	*) usage_error "invalid --source '$SOURCE_KIND': expected worktree or head" ;;
	esac
	set_arch
	case $CPU in
	*[!A-Za-z0-9,=_-]*) usage_error "invalid --cpu '$CPU': expected a name from '$QEMU_BIN -cpu help', optionally with ,property=value" ;;
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
	if [ -n "$QEMU_NAME" ]; then
		[ -x "$QEMU_BIN" ] || missing+=(qemu-user-static)
		command -v update-binfmts >/dev/null || missing+=(binfmt-support)
	fi
	if [ ${#missing[@]} -gt 0 ]; then
		log "installing ${missing[*]}"
		apt-get update -q
		DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}"
	fi
	# The x86_64 kernel runs i386 programs itself.
	[ -n "$QEMU_NAME" ] || return 0

	local binfmt=/proc/sys/fs/binfmt_misc
	if [ ! -e "$binfmt/register" ]; then
		# Stays mounted after the run, as when binfmt-support mounts it at boot.
		log "mounting binfmt_misc on $binfmt"
		mount -t binfmt_misc binfmt_misc "$binfmt"
	fi
	if [ ! -e "$binfmt/$QEMU_NAME" ]; then
		update-binfmts --import "$QEMU_NAME" 2>/dev/null || true
	fi
	update-binfmts --enable "$QEMU_NAME" ||
		die "update-binfmts --enable $QEMU_NAME failed; see $binfmt"
	head -n 1 "$binfmt/$QEMU_NAME" | grep -qx enabled ||
		die "the binfmt entry $binfmt/$QEMU_NAME is not enabled"
	# With the F flag the kernel opens the interpreter once at registration, so the root
	# needs no copy of the emulator.
	if grep -q '^flags:.*F' "$binfmt/$QEMU_NAME"; then
		QEMU_FIXED=1
	else
		QEMU_FIXED=0
	fi
	log "binfmt $QEMU_NAME: $(grep -E '^(interpreter|flags)' "$binfmt/$QEMU_NAME" | tr '\n' ' ')"
}

build_root() {
	if [ -e "$ROOT/$ROOT_MARKER" ]; then
		log "reusing the $ARCH root $ROOT ($(cat "$ROOT/etc/debian_version"))"
		return 0
	fi
	if [ -e "$ROOT" ] && [ -n "$(ls -A "$ROOT")" ]; then
		die "$ROOT exists but its debootstrap run did not finish; after checking that nothing" \
			"is mounted below it (grep $ROOT /proc/mounts), remove it and run again"
	fi

	log "debootstrap $SUITE $ARCH from $MIRROR into $ROOT"
	if [ -z "$QEMU_NAME" ]; then
		# i386 needs no emulator, so debootstrap runs both stages at once.
		"${CHROOT_PREFIX[@]}" debootstrap --arch="$ARCH" --include=ca-certificates "$SUITE" \
			"$ROOT" "$MIRROR"
	else
		debootstrap --arch="$ARCH" --foreign --include=ca-certificates "$SUITE" "$ROOT" "$MIRROR"
		if [ "$QEMU_FIXED" = 0 ]; then
			install -m 755 "$QEMU_BIN" "$ROOT$QEMU_BIN"
		fi
		# The second stage mounts /proc and /sys in the root itself and unmounts them at the end.
		chroot "$ROOT" /debootstrap/debootstrap --second-stage
	fi
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
	# The compiled fast path (_fastpath.*.so) exists only in the installed package.
	diff -rq -x __pycache__ -x convert -x "*.so" "$ROOT$SRC_IN_ROOT/edge_etc" "$site/edge_etc" ||
		die "the edge_etc package in $PREFIX_IN_ROOT differs from $SRC_IN_ROOT"
	# The extension is optional, so pip goes on without it when it does not compile.
	compgen -G "$site/edge_etc/_fastpath.*.so" >/dev/null ||
		die "pip did not build the compiled fast path in the root; see its output above"
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
	echo "$ARCH root:"
	# shellcheck disable=SC2016 # dpkg-query expands ${Version} itself.
	echo "  uname -m: $(in_root uname -m) | Debian $(cat "$ROOT/etc/debian_version")" \
		"| libpcap $(in_root dpkg-query -W -f '${Version}' libpcap0.8)" \
		"| gcc $(in_root gcc -dumpfullversion)"
	in_root "$PREFIX_IN_ROOT/bin/python" -c "$probe"
	if [ -n "$QEMU_NAME" ]; then
		echo "  qemu: $("$QEMU_BIN" --version | head -n 1), CPU $CPU ($CPU_DESCRIPTION)"
	fi
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

# Classify every capture with backend $2 on side $1 ($ARCH or host). The records go to
# $ROOT$WORK_IN_ROOT/$1-$2/NAME.jsonl and stderr to NAME.log.
classify_all() {
	local side=$1 backend=$2 out=$ROOT$WORK_IN_ROOT/$1-$2 name t0 status failed=0
	mkdir -p "$out"
	for name in "${NAMES[@]}"; do
		t0=$(now)
		status=0
		# The debug level logs the interpreter's own lines, such as the creation of the
		# XNNPACK delegate.
		if [ "$side" = "$ARCH" ]; then
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

# Set `different`, for exit code 3, when compare_runs or compare_windows exited 3; stop on
# any other nonzero code.
record_comparison() {
	case $1 in
	0) ;;
	3) different=1 ;;
	*) die "the comparison failed (exit $1)" ;;
	esac
}

# The numpy backend's int8 outputs on every window of the corpus, the windows built on this
# host and in the root, and the comparison. Arguments: build CORPUS OUT.npy | infer
# WINDOWS.npy OUT_PREFIX BACKEND... (numpy-xnnpack, numpy-reference, litert) | compare DIR
# ARCH. compare prints the counts and exits 3 when an output differs.
WINDOWS_PY='
import sys
import time

import numpy as np

mode = sys.argv[1]
if mode == "build":
    from edge_etc.convert import dataset
    from edge_etc.model import default_model_path, load_model_info

    model = load_model_info(default_model_path())
    started = time.monotonic()
    windows = dataset.build_windows(sys.argv[2], model.preprocessing,
                                    max_windows_per_flow=2**31 - 1)
    np.save(sys.argv[3], windows.x)
    print("  built %d windows of %d flows in %.1f s"
          % (len(windows.x), len(set(windows.flow.tolist())), time.monotonic() - started))
elif mode == "infer":
    from edge_etc.infer import input_lut
    from edge_etc.model import default_model_path, load_model_info

    raw = np.load(sys.argv[2])
    model = load_model_info(default_model_path())
    batch = 64
    for backend in sys.argv[4:]:
        if backend == "litert":
            from ai_edge_litert.interpreter import Interpreter

            interpreter = Interpreter(model_content=model.data, num_threads=1)
        else:
            from edge_etc.numpy_backend import Interpreter

            interpreter = Interpreter(model_content=model.data,
                                      kernels=backend.split("-", 1)[1])
        detail = interpreter.get_input_details()[0]
        shape = list(detail["shape"])
        shape[0] = batch
        interpreter.resize_tensor_input(detail["index"], shape)
        interpreter.allocate_tensors()
        output = interpreter.get_output_details()[0]["index"]
        x = input_lut(*detail["quantization"])[raw]
        started = time.monotonic()
        results = []
        for start in range(0, len(x), batch):
            padded = np.zeros((batch,) + x.shape[1:], np.int8)
            padded[:len(x[start:start + batch])] = x[start:start + batch]
            interpreter.set_tensor(detail["index"], padded)
            interpreter.invoke()
            results.append(interpreter.get_tensor(output)[:len(x[start:start + batch])].copy())
        np.save("%s-%s.npy" % (sys.argv[3], backend), np.concatenate(results))
        print("  %s: %d windows in %.1f s" % (backend, len(x), time.monotonic() - started))
else:
    from edge_etc.infer import average_networks
    from edge_etc.model import default_model_path, load_model_info

    # A model of several networks outputs one block of class probabilities per network,
    # and the runner decides on their mean.
    networks = load_model_info(default_model_path()).networks

    def labels_of(outputs):
        return average_networks(outputs + 128, networks).argmax(axis=1)

    folder, arch = sys.argv[2], sys.argv[3]
    host_windows = np.load(folder + "/host-windows.npy")
    root_windows = np.load(folder + "/root-windows.npy")
    if host_windows.shape != root_windows.shape:
        print("  windows: %s on the host, %s in the root" % (host_windows.shape, root_windows.shape))
    else:
        where = np.argwhere(host_windows != root_windows)
        offsets = sorted(set(where[:, 2].tolist()))
        print("  windows built in the root against the host: %d of %d differ, in %d bytes at"
              " vector offsets %s" % (len(set(where[:, 0].tolist())), len(host_windows),
                                     len(where), offsets))
    differ = 0
    for root_backend, host_backend in (("numpy-xnnpack", "numpy-xnnpack"),
                                       ("numpy-xnnpack", "litert"),
                                       ("numpy-reference", "numpy-reference")):
        ours = np.load("%s/root-%s.npy" % (folder, root_backend)).astype(np.int32)
        theirs = np.load("%s/host-%s.npy" % (folder, host_backend)).astype(np.int32)
        steps = np.abs(ours - theirs).max(axis=1)
        labels = int(np.sum(labels_of(ours) != labels_of(theirs)))
        differ += int(np.sum(steps > 0))
        print("  %s %s against host %s, on the host windows: %d of %d windows differ,"
              " by up to %d steps; %d window labels differ"
              % (arch, root_backend, host_backend, int(np.sum(steps > 0)), len(steps),
                 int(steps.max(initial=0)), labels))
    sys.exit(3 if differ else 0)
'

# Compare the numpy backend of the root with that of the host, and with ai-edge-litert on
# the host, on every window of the corpus. Returns 3 when an int8 output differs.
compare_windows() {
	local dir=$ROOT$WORK_IN_ROOT/windows host_python status=0
	host_python=$(dirname "$HOST_EDGE_ETC")/python
	mkdir -p "$dir"
	echo "host:"
	"$host_python" -c "$WINDOWS_PY" build "$CORPUS" "$dir/host-windows.npy"
	"$host_python" -c "$WINDOWS_PY" infer "$dir/host-windows.npy" "$dir/host" numpy-xnnpack \
		numpy-reference litert 2>"$dir/host-infer.log" || {
		tail -n 5 "$dir/host-infer.log" >&2
		die "inference on the host failed"
	}
	echo "$ARCH root:"
	in_root "$PREFIX_IN_ROOT/bin/python" -c "$WINDOWS_PY" build "$CORPUS_IN_ROOT" \
		"$WORK_IN_ROOT/windows/root-windows.npy"
	in_root "$PREFIX_IN_ROOT/bin/python" -c "$WINDOWS_PY" infer \
		"$WORK_IN_ROOT/windows/host-windows.npy" "$WORK_IN_ROOT/windows/root" numpy-xnnpack \
		numpy-reference
	"$host_python" -c "$WINDOWS_PY" compare "$dir" "$ARCH" || status=$?
	return "$status"
}

# Run the repository's tests in the root with the installed edge-etc. pytest and hypothesis
# come from PyPI into the venv, tcpreplay and iproute2 from Debian for the live-capture
# tests. Returns pytest's exit code.
run_tests_in_root() {
	local status=0
	in_root apt-get install -y -q --no-install-recommends tcpreplay iproute2 >/dev/null
	in_root "$PREFIX_IN_ROOT/bin/pip" install -q pytest hypothesis
	# From /tmp, so that pytest imports the installed edge_etc and not the copied source.
	in_root sh -c "cd /tmp && $PREFIX_IN_ROOT/bin/python -m pytest -q -p no:cacheprovider -rfEs \
		$SRC_IN_ROOT/tests" | tee "$ROOT$WORK_IN_ROOT/tests.log" || status=$?
	return "$status"
}

main() {
	parse_args "$@"
	[ "$(id -u)" -eq 0 ] || die "run as root: debootstrap, chroot and mount need it"
	[ "$(uname -m)" = x86_64 ] || die "this script compares $ARCH with an x86_64 host, not $(uname -m)"

	log "arch: $ARCH | root: $ROOT | mirror: $MIRROR | host edge-etc: $HOST_EDGE_ETC | source: $SOURCE_KIND | CPU: ${CPU:-native}"
	mkdir -p "$(dirname "$ROOT")"
	exec 9>"$ROOT.lock"
	flock -n 9 || die "$ROOT.lock is locked: another run uses $ROOT; wait for it to finish"
	trap on_exit EXIT
	trap 'exit 130' INT
	trap 'exit 143' TERM

	step_start "1 host tools and binfmt"
	install_host_tools
	step_end

	step_start "2 debootstrap $ARCH root"
	build_root
	local machine
	machine=$(in_root uname -m)
	[ "$machine" = "$MACHINE" ] || die "uname -m prints $machine in the $ARCH root, not $MACHINE"
	step_end

	if [ "$WITH_TESTS" = 1 ]; then
		# The live-capture tests call `ip -n NAME`, which remounts / in a new mount namespace
		# and fails unless / is a mount point. A private bind mount of the root onto itself
		# makes it one. It comes first, because it would hide the mounts made before it.
		mount_in_root "" --bind "$ROOT"
		mount --make-private "$ROOT"
	fi
	mount_in_root /proc -t proc proc
	mount_in_root /dev --bind /dev
	mount_in_root /dev/pts --bind /dev/pts
	CORPUS_IN_ROOT=$(dirname "$SRC_IN_ROOT")/shared/corpus
	if [ "$WITH_WINDOWS" = 1 ] || [ "$WITH_TESTS" = 1 ]; then
		# Where the tests look for the corpus and the hard inputs: ../shared beside the source.
		mount_in_root "$CORPUS_IN_ROOT" --bind -o ro "$CORPUS"
		if [ -d "$CORPUS/../cases" ]; then
			mount_in_root "$(dirname "$CORPUS_IN_ROOT")/cases" --bind -o ro "$CORPUS/../cases"
		fi
	fi

	step_start "3 copy source, install.sh in the root"
	copy_source
	install_in_root
	step_end

	step_start "4 CPU identity, versions"
	CPU_DESCRIPTION="the host's x86 /proc/cpuinfo, no /sys"
	if [ "$ARCH" = arm64 ] && [ "$X86_CPUINFO" = 0 ]; then
		set_up_cpu_identity
	fi
	print_versions
	step_end

	copy_captures
	local failed=0 different=0 tests_failed=0 status

	if [ "$LITERT_IN_ROOT" = 1 ]; then
		step_start "5 $ARCH run, litert"
		classify_all "$ARCH" litert || failed=1
		step_end
	fi

	step_start "6 host run, litert"
	classify_all host litert || failed=1
	step_end

	if [ "$WITH_NUMPY" = 1 ]; then
		step_start "7 $ARCH run, numpy"
		classify_all "$ARCH" numpy || failed=1
		step_end

		step_start "8 host run, numpy"
		classify_all host numpy || failed=1
		step_end
	fi
	[ "$failed" = 0 ] || die "edge-etc failed on some captures; the logs are in $ROOT$WORK_IN_ROOT"

	local work=$ROOT$WORK_IN_ROOT
	if [ "$LITERT_IN_ROOT" = 1 ]; then
		echo "$ARCH litert against host litert, every field of every record:"
		status=0
		compare_runs "$work/$ARCH-litert" "$work/host-litert" exact || status=$?
		record_comparison "$status"
	fi
	if [ "$WITH_NUMPY" = 1 ]; then
		echo "$ARCH numpy against host numpy, every field of every record:"
		status=0
		compare_runs "$work/$ARCH-numpy" "$work/host-numpy" exact || status=$?
		record_comparison "$status"
		echo "$ARCH numpy against host litert, labels:"
		compare_runs "$work/$ARCH-numpy" "$work/host-litert" labels
	fi

	if [ "$WITH_WINDOWS" = 1 ]; then
		step_start "9 corpus windows, int8 outputs"
		status=0
		compare_windows || status=$?
		record_comparison "$status"
		step_end
	fi

	if [ "$WITH_TESTS" = 1 ]; then
		step_start "10 tests in the $ARCH root"
		run_tests_in_root || tests_failed=1
		step_end
	fi
	log "records and logs: $work"
	if [ "$tests_failed" = 1 ]; then
		log "some tests failed in the root; see $work/tests.log"
		exit 4
	fi
	if [ "$different" = 1 ]; then
		exit 3
	fi
}

main "$@"
