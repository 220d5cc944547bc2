#!/bin/sh
# Install edge-etc as a systemd service on Raspberry Pi OS (Debian 12) or Debian.
#
# Usage: sudo ./install.sh [--iface IFACE] [--source SPEC] [--no-start]
#   --iface IFACE   interface to classify [default: the interface of the default route]
#   --source SPEC   what pip installs: a checkout directory or a wheel
#                   [default: the checkout this script is in]
#   --no-start      install and enable the service, but do not start it
#
# Makes: the system user edge-etc; a virtual environment in /opt/edge-etc;
# /etc/edge-etc/edge-etc.toml (an existing file is kept); the unit
# /etc/systemd/system/edge-etc.service; /etc/logrotate.d/edge-etc.
set -eu

PREFIX=/opt/edge-etc
CONFIG_DIR=/etc/edge-etc
CONFIG_FILE=$CONFIG_DIR/edge-etc.toml
UNIT_DIR=/etc/systemd/system
USER_NAME=edge-etc
JSON_FILE=/var/log/edge-etc/flows.jsonl

die() {
	echo "install.sh: error: $*" >&2
	exit 1
}

default_iface() {
	ip route show default 2>/dev/null |
		awk '{ for (i = 1; i < NF; i++) if ($i == "dev") { print $(i + 1); exit } }'
}

# Write the default settings of edge-etc binary $1 to file $3, with capture.interface set
# to $2 and the JSON lines in $JSON_FILE, and check the result with `edge-etc config`.
write_config() {
	bin=$1
	iface=$2
	out=$3
	case $iface in
	'' | *[!A-Za-z0-9._@:-]*) die "invalid interface name: '$iface'" ;;
	esac
	"$bin" config --defaults |
		sed -e "s|^interface = \"\"\$|interface = \"$iface\"|" \
			-e "s|^json_file = \"-\"\$|json_file = \"$JSON_FILE\"|" >"$out.new"
	grep -q "^interface = \"$iface\"\$" "$out.new" ||
		die "could not set the interface in $out.new: the output of 'config --defaults' changed"
	grep -q "^json_file = \"$JSON_FILE\"\$" "$out.new" ||
		die "could not set the output file in $out.new: the output of 'config --defaults' changed"
	"$bin" config "$out.new" >/dev/null || die "$out.new: the settings are invalid"
	mv "$out.new" "$out"
}

# Succeed when machine $1 (uname -m) needs Debian's numpy. ai-edge-litert has wheels only
# for aarch64 and x86_64. For the others PyPI had no numpy wheel either (checked for CPython
# 3.11 on armv7l and i686), so pip built numpy from source, which failed without a C++
# compiler in a Debian 12 i386 root.
needs_system_numpy() {
	case $1 in
	aarch64 | x86_64) return 1 ;;
	*) return 0 ;;
	esac
}

main() {
	here=$(cd "$(dirname "$0")" && pwd)
	iface=
	# edge-etc is not published on PyPI, so a bare name would install whatever package
	# has that name there. The default is this checkout.
	source_spec=$(cd "$here/../.." && pwd)
	start=1
	while [ $# -gt 0 ]; do
		case $1 in
		--iface) [ $# -ge 2 ] || die "--iface needs a value"; iface=$2; shift 2 ;;
		--source) [ $# -ge 2 ] || die "--source needs a value"; source_spec=$2; shift 2 ;;
		--no-start) start=0; shift ;;
		-h | --help) sed -n '2,14p' "$0"; exit 0 ;;
		*) die "unknown argument: $1 (see --help)" ;;
		esac
	done
	[ "$(id -u)" -eq 0 ] || die "run as root, e.g. with sudo"
	if [ -d "$source_spec" ] && [ ! -f "$source_spec/pyproject.toml" ]; then
		die "$source_spec is not an edge-etc checkout (no pyproject.toml); give --source"
	fi
	[ -n "$iface" ] || iface=$(default_iface)
	[ -n "$iface" ] || die "no default route to take the interface from; give --iface IFACE"

	numpy_package=
	venv_option=
	if needs_system_numpy "$(uname -m)"; then
		echo "install.sh: warning: no ai-edge-litert wheel exists for $(uname -m);" \
			"edge-etc will run the model with its slower numpy backend and Debian's numpy" >&2
		numpy_package=python3-numpy
		venv_option=--system-site-packages
	fi

	# pypcap is built from source: it needs a compiler and the libpcap headers.
	apt-get install -y --no-install-recommends python3-venv python3-dev gcc libpcap-dev \
		${numpy_package:+"$numpy_package"}

	if ! id -u "$USER_NAME" >/dev/null 2>&1; then
		useradd --system --user-group --no-create-home --home-dir /var/lib/edge-etc \
			--shell /usr/sbin/nologin "$USER_NAME"
	fi

	# python3 -m venv on an existing environment rewrites its pyvenv.cfg and keeps its
	# packages, so a venv that an earlier run made without Debian's numpy gets it too.
	if [ ! -x "$PREFIX/bin/python" ] || { [ -n "$venv_option" ] &&
		grep -q '^include-system-site-packages = false' "$PREFIX/pyvenv.cfg"; }; then
		python3 -m venv ${venv_option:+"$venv_option"} "$PREFIX"
	fi
	"$PREFIX/bin/pip" install --upgrade "$source_spec"

	mkdir -p "$CONFIG_DIR"
	if [ -e "$CONFIG_FILE" ]; then
		echo "install.sh: keeping $CONFIG_FILE; 'edge-etc config --defaults' shows the new defaults"
		"$PREFIX/bin/edge-etc" config "$CONFIG_FILE" >/dev/null ||
			die "$CONFIG_FILE is invalid for the installed version; fix it and run again"
	else
		write_config "$PREFIX/bin/edge-etc" "$iface" "$CONFIG_FILE"
		chmod 644 "$CONFIG_FILE"
	fi

	install -m 644 "$here/edge-etc.service" "$UNIT_DIR/edge-etc.service"
	install -m 644 "$here/edge-etc.logrotate" /etc/logrotate.d/edge-etc
	# In a chroot or an image build there is no running systemd to reload; enabling the
	# unit still works offline.
	if [ -d /run/systemd/system ]; then
		systemctl daemon-reload
	fi
	systemctl enable edge-etc.service
	if [ "$start" = 1 ]; then
		systemctl restart edge-etc.service
		echo "install.sh: edge-etc runs on $iface; logs: journalctl -u edge-etc; records: $JSON_FILE"
	fi
}

# EDGE_ETC_INSTALL_FUNCTIONS_ONLY=1 loads the functions without running main, for tests.
if [ "${EDGE_ETC_INSTALL_FUNCTIONS_ONLY:-0}" != 1 ]; then
	main "$@"
fi
