"""Device packaging in firmware_configs/: the OpenWrt procd init script and UCI file, and the
systemd unit and installer for Raspberry Pi OS.

The init script runs under a POSIX shell with stand-ins for the procd and UCI shell helpers,
which record the instance it requests from procd. The real `edge-etc run` option parser
then parses the command line of that instance. The unit goes through `systemd-analyze verify`.
"""

import os
import re
import shutil
import subprocess
import sys

import pytest

from conftest import ROOT
from edge_etc import cli, config

FIRMWARE = os.path.join(ROOT, "firmware_configs")
OPENWRT = os.path.join(FIRMWARE, "openwrt", "edge-etc")
INIT = os.path.join(OPENWRT, "files", "edge-etc.init")
UCI_FILE = os.path.join(OPENWRT, "files", "edge-etc.config")
PI = os.path.join(FIRMWARE, "raspberry-pi")
UNIT = os.path.join(PI, "edge-etc.service")
INSTALL = os.path.join(PI, "install.sh")
EDGE_ETC = os.path.join(os.path.dirname(sys.executable), "edge-etc")
SHELL = shutil.which("dash") or shutil.which("sh")

# UCI option of /etc/config/edge-etc -> the settings key its `run` option sets.
UCI_KEYS = {
    "filter": "capture.filter",
    "promisc": "capture.promisc",
    "snaplen": "capture.snaplen",
    "model": "model.path",
    "backend": "model.backend",
    "batch_size": "model.batch_size",
    "max_flows": "flows.max_flows",
    "idle_timeout": "flows.idle_timeout_s",
    "max_windows": "flows.max_windows",
    "output": "output.json_file",
    "syslog": "output.syslog",
    "syslog_facility": "output.syslog_facility",
    "prometheus": "output.prometheus_file",
    "prometheus_interval": "output.prometheus_interval_s",
    "anonymize": "output.anonymize",
    "anonymize_key": "output.anonymize_key_file",
    "log_level": "service.log_level",
    "user": "service.user",
}

# Stand-ins for OpenWrt's /lib/functions.sh (UCI) and procd.sh. config_load sources the
# CONFIG_<section>_<option> assignments that `uci_assignments` makes from a UCI file, as
# the real config_load does from `uci export`. The procd functions append one line per
# call to $PROCD_LOG: the call name and its arguments, separated by tabs.
STUBS = r"""
config_load() { . "$UCI_STATE"; }
config_get() {
	eval "$1=\${CONFIG_${2}_${3}:-\${4:-}}"
}
config_get_bool() {
	local raw
	config_get raw "$2" "$3"
	case $raw in
	1 | on | true | yes | enabled) eval "$1=1" ;;
	0 | off | false | no | disabled) eval "$1=0" ;;
	*) eval "$1=\${4:-}" ;;
	esac
}
record() {
	printf '%s' "$1" >>"$PROCD_LOG"
	shift
	for arg in "$@"; do printf '\t%s' "$arg" >>"$PROCD_LOG"; done
	printf '\n' >>"$PROCD_LOG"
}
procd_open_instance() { record open_instance "$@"; }
procd_set_param() { record set "$@"; }
procd_append_param() { record append "$@"; }
procd_close_instance() { record close_instance "$@"; }
procd_add_reload_trigger() { record reload_trigger "$@"; }
chown() { record chown "$@"; }
"""

HARNESS = """
. "$STUBS_FILE"
. "$INIT_SCRIPT"
start_service
status=$?
service_triggers
exit $status
"""


def parse_uci(text):
    """Return {(section name, option): value} of a UCI file's `option` lines."""
    values, section = {}, None
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        m = re.fullmatch(r"config\s+(\w+)(?:\s+'?(\w+)'?)?", line)
        if m:
            section = m.group(2) or m.group(1)
            continue
        m = re.fullmatch(r"option\s+(\w+)\s+(?:'([^']*)'|\"([^\"]*)\"|(\S+))", line)
        assert m, f"cannot parse UCI line: {line!r}"
        values[(section, m.group(1))] = next(g for g in m.groups()[1:] if g is not None)
    return values


def uci_assignments(values):
    lines = []
    for (section, option), value in values.items():
        quoted = "'" + value.replace("'", "'\\''") + "'"
        lines.append(f"CONFIG_{section}_{option}={quoted}")
    return "\n".join(lines) + "\n"


class Procd:
    """What one start of the init script asked procd for."""

    def __init__(self, returncode, stderr, log_text):
        self.returncode = returncode
        self.stderr = stderr
        self.instances = []
        self.triggers = []
        self.chowns = []
        current = None
        for line in log_text.splitlines():
            kind, *args = line.split("\t")
            if kind == "open_instance":
                current = {}
            elif kind == "set":
                current[args[0]] = args[1:]
            elif kind == "append":
                current.setdefault(args[0], []).extend(args[1:])
            elif kind == "close_instance":
                self.instances.append(current)
                current = None
            elif kind == "reload_trigger":
                self.triggers.append(args)
            elif kind == "chown":
                self.chowns.append(args)

    @property
    def command(self):
        assert len(self.instances) == 1, self.instances
        return self.instances[0]["command"]


def start_init(tmp_path, uci_text):
    """Run start_service and service_triggers of the init script for `uci_text`."""
    if SHELL is None:
        pytest.skip("no POSIX shell (dash or sh) found")
    stubs = tmp_path / "stubs.sh"
    stubs.write_text(STUBS)
    state = tmp_path / "uci-state.sh"
    state.write_text(uci_assignments(parse_uci(uci_text)))
    log = tmp_path / "procd.log"
    log.write_text("")
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "STUBS_FILE": str(stubs),
           "INIT_SCRIPT": INIT, "UCI_STATE": str(state), "PROCD_LOG": str(log)}
    proc = subprocess.run([SHELL, "-c", HARNESS], env=env, capture_output=True, text=True,
                          timeout=60)
    return Procd(proc.returncode, proc.stderr, log.read_text())


def parse_run(args):
    """Parse `edge-etc run ARGS` with the real options; return the Config it gives."""
    ctx = cli.run.make_context("run", list(args))
    return config.from_options(None, ctx.params, config.options_given(ctx))


def uci(*options, enabled="1", interface="br-lan"):
    lines = ["config edge_etc 'main'"]
    if enabled is not None:
        lines.append(f"\toption enabled '{enabled}'")
    if interface is not None:
        lines.append(f"\toption interface '{interface}'")
    lines += [f"\toption {name} '{value}'" for name, value in options]
    return "\n".join(lines) + "\n"


# --- OpenWrt init script ------------------------------------------------------------------

def test_init_disabled_starts_nothing(tmp_path):
    procd = start_init(tmp_path, uci(enabled="0"))
    assert procd.returncode == 0
    assert procd.instances == []
    assert "disabled" in procd.stderr


def test_init_without_interface_fails(tmp_path):
    procd = start_init(tmp_path, uci(interface=None))
    assert procd.returncode == 1
    assert procd.instances == []
    assert "no interface set" in procd.stderr


def test_init_minimal_passes_only_interface(tmp_path):
    procd = start_init(tmp_path, uci())
    assert procd.returncode == 0, procd.stderr
    assert procd.command == ["/usr/bin/edge-etc", "run", "--iface", "br-lan"]
    instance = procd.instances[0]
    assert instance["stdout"] == ["1"]  # records go to logd when there is no output file
    assert instance["stderr"] == ["1"]
    assert instance["respawn"] == ["3600", "5", "5"]
    assert instance["term_timeout"] == ["15"]
    assert instance["reload_signal"] == ["HUP"]
    assert instance["no_new_privs"] == ["1"]
    assert procd.triggers == [["edge-etc"]]


def test_init_maps_every_option(tmp_path):
    options = [
        ("filter", "tcp port 443"), ("promisc", "1"), ("snaplen", "256"),
        ("model", "/etc/edge-etc/model.tflite"), ("backend", "litert"), ("batch_size", "16"),
        ("max_flows", "4096"), ("idle_timeout", "60.5"), ("max_windows", "3"),
        ("output", "/mnt/usb/flows.jsonl"), ("syslog", "yes"), ("syslog_facility", "local2"),
        ("prometheus", str(tmp_path / "prom" / "edge-etc.prom")),
        ("prometheus_interval", "15"), ("anonymize", "on"),
        ("anonymize_key", "/etc/edge-etc.key"), ("log_level", "warning"), ("user", "nobody"),
    ]
    assert sorted(name for name, _ in options) == sorted(UCI_KEYS)
    procd = start_init(tmp_path, uci(*options))
    assert procd.returncode == 0, procd.stderr
    assert "stdout" not in procd.instances[0]  # an output file is set
    assert procd.command[:4] == ["/usr/bin/edge-etc", "run", "--iface", "br-lan"]

    settings = parse_run(procd.command[2:])
    expected = {
        "capture.filter": "tcp port 443", "capture.promisc": True, "capture.snaplen": 256,
        "model.path": "/etc/edge-etc/model.tflite", "model.backend": "litert",
        "model.batch_size": 16, "flows.max_flows": 4096, "flows.idle_timeout_s": 60.5,
        "flows.max_windows": 3, "output.json_file": "/mnt/usb/flows.jsonl",
        "output.syslog": True, "output.syslog_facility": "local2",
        "output.prometheus_file": str(tmp_path / "prom" / "edge-etc.prom"),
        "output.prometheus_interval_s": 15.0, "output.anonymize": True,
        "output.anonymize_key_file": "/etc/edge-etc.key", "service.log_level": "warning",
        "service.user": "nobody",
    }
    for key, value in expected.items():
        section, name = key.split(".")
        assert getattr(getattr(settings, section), name) == value, key
    assert settings.capture.interface == "br-lan"


def test_init_passes_false_booleans(tmp_path):
    procd = start_init(tmp_path, uci(("promisc", "0"), ("syslog", "off"), ("anonymize", "no")))
    assert procd.returncode == 0, procd.stderr
    assert procd.command[4:] == ["--no-promisc", "--no-syslog", "--no-anonymize"]


def test_init_syslog_keeps_stdout_off(tmp_path):
    procd = start_init(tmp_path, uci(("syslog", "1")))
    assert "stdout" not in procd.instances[0]


def test_init_makes_prometheus_dir(tmp_path):
    prom = tmp_path / "var" / "prometheus" / "edge-etc.prom"
    procd = start_init(tmp_path, uci(("prometheus", str(prom)), ("user", "edge-etc")))
    assert procd.returncode == 0, procd.stderr
    assert prom.parent.is_dir()
    assert procd.chowns == [["edge-etc", str(prom.parent)]]


def test_init_keeps_existing_prometheus_dir(tmp_path):
    (tmp_path / "prom").mkdir()
    procd = start_init(tmp_path, uci(("prometheus", str(tmp_path / "prom" / "x.prom")),
                                     ("user", "edge-etc")))
    assert procd.returncode == 0, procd.stderr
    assert procd.chowns == []


def test_init_reads_every_mapped_option():
    text = open(INIT).read()
    read = set(re.findall(r"^\s*append_(?:value|bool) (\w+) ", text, re.M))
    assert read == set(UCI_KEYS)


def test_shipped_uci_config_starts(tmp_path):
    text = open(UCI_FILE).read().replace("option enabled '0'", "option enabled '1'")
    procd = start_init(tmp_path, text)
    assert procd.returncode == 0, procd.stderr
    command = procd.command
    assert command[:4] == ["/usr/bin/edge-etc", "run", "--iface", "br-lan"]
    if "numpy" not in config.BACKENDS:
        pytest.skip("the shipped UCI file selects the numpy backend, which this tree lacks")
    settings = parse_run(command[2:])
    assert settings.flows.max_flows == 4096
    assert settings.service.user == "edge-etc"


def test_shipped_uci_commented_defaults_match_program():
    text = open(UCI_FILE).read()
    options = set()
    for name, value in re.findall(r"^\s*#option (\w+) '([^']*)'$", text, re.M):
        options.add(name)
        spec, kind, default = config.setting(UCI_KEYS[name])
        if kind is bool:
            assert value == ("1" if default else "0"), name
        else:
            assert kind(value) == default, name
    assert options, "no commented-out defaults found"


def test_shipped_uci_options_all_known():
    text = open(UCI_FILE).read()
    names = set(re.findall(r"^\s*#?option (\w+) ", text, re.M))
    assert names - {"enabled", "interface"} <= set(UCI_KEYS)


def shellcheck(path):
    tool = shutil.which("shellcheck")
    if tool is None:
        pytest.skip("shellcheck is not installed (apt-get install shellcheck)")
    return subprocess.run([tool, "--shell=sh", path], capture_output=True, text=True, timeout=120)


def test_init_shellcheck_clean():
    proc = shellcheck(INIT)
    assert proc.returncode == 0, proc.stdout


def test_install_shellcheck_clean():
    proc = shellcheck(INSTALL)
    assert proc.returncode == 0, proc.stdout


def test_openwrt_makefile_installs_files():
    text = open(os.path.join(OPENWRT, "Makefile")).read()
    for source in re.findall(r"\./(files/\S+)", text):
        assert os.path.isfile(os.path.join(OPENWRT, source)), source
    assert "$(1)/etc/init.d/edge-etc" in text
    assert "$(1)/etc/config/edge-etc" in text
    conffiles = re.search(r"define Package/edge-etc/conffiles\n(.*?)\nendef", text, re.S)
    assert conffiles and conffiles.group(1).split() == ["/etc/config/edge-etc"]
    assert "python3-package.mk" in text


# --- systemd unit for Raspberry Pi OS ------------------------------------------------------

def unit_settings(path):
    """Return {key: [values]} of a unit file (keys may repeat)."""
    values = {}
    for line in open(path).read().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, value = line.split("=", 1)
            values.setdefault(key.strip(), []).append(value.strip())
    return values


def runnable_unit(tmp_path, extra_service_lines=()):
    """Copy the unit with ExecStart pointing at this environment's edge-etc binary."""
    if not os.path.exists(EDGE_ETC):
        pytest.skip(f"no edge-etc binary next to {sys.executable}")
    text = open(UNIT).read().replace("ExecStart=/opt/edge-etc/bin/edge-etc",
                                     f"ExecStart={EDGE_ETC}")
    assert f"ExecStart={EDGE_ETC} " in text
    if extra_service_lines:
        text = text.replace("[Service]\n", "[Service]\n" + "\n".join(extra_service_lines) + "\n")
    path = tmp_path / "edge-etc.service"
    path.write_text(text)
    return path


def systemd_analyze(*args):
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze is not installed (apt-get install systemd)")
    return subprocess.run([tool, *args], capture_output=True, text=True, timeout=120)


def verify_problems(path):
    """Return systemd-analyze verify's exit code and its messages about files under path's
    folder (it exits 0 on unknown keys, so the messages have to be read)."""
    proc = systemd_analyze("verify", "--man=no", str(path))
    folder = str(path.parent)
    messages = [line for line in (proc.stdout + proc.stderr).splitlines() if folder in line]
    return proc.returncode, messages


def test_unit_verifies(tmp_path):
    returncode, messages = verify_problems(runnable_unit(tmp_path))
    assert returncode == 0, messages
    assert messages == []


def test_unit_verify_catches_bad_key(tmp_path):
    returncode, messages = verify_problems(runnable_unit(tmp_path, ["ProtectSystm=strict"]))
    assert any("ProtectSystm" in m for m in messages), messages


def test_unit_with_net_admin_dropin_verifies(tmp_path):
    path = runnable_unit(tmp_path)
    dropins = tmp_path / "edge-etc.service.d"
    dropins.mkdir()
    shutil.copy(os.path.join(PI, "net-admin.conf"), dropins / "net-admin.conf")
    returncode, messages = verify_problems(path)
    assert returncode == 0, messages
    assert messages == []


def test_unit_exposure_low(tmp_path):
    # Exposure is scored 0 (locked down) to 10 (none); the threshold is in tenths.
    proc = systemd_analyze("security", "--offline=yes", "--threshold=25",
                           str(runnable_unit(tmp_path)))
    assert proc.returncode == 0, proc.stdout[-2000:]


def test_unit_runs_confined():
    unit = unit_settings(UNIT)
    assert unit["User"] == ["edge-etc"]
    assert unit["AmbientCapabilities"] == ["CAP_NET_RAW"]
    assert unit["CapabilityBoundingSet"] == ["CAP_NET_RAW"]
    assert unit["NoNewPrivileges"] == ["yes"]
    assert unit["ProtectSystem"] == ["strict"]
    assert re.fullmatch(r"\d+[KMG]", unit["MemoryMax"][0])
    assert unit["Restart"] == ["on-failure"]
    assert int(unit["StartLimitBurst"][0]) > 0
    assert unit["StartLimitIntervalSec"]
    assert unit["Type"] == ["exec"]  # the runner stays in the foreground
    assert unit["StandardError"] == ["journal"]


def test_unit_command_parses():
    command = unit_settings(UNIT)["ExecStart"][0].split()
    assert command[:2] == ["/opt/edge-etc/bin/edge-etc", "run"]
    ctx = cli.run.make_context("run", command[2:])
    assert ctx.params["config_file"] == "/etc/edge-etc/edge-etc.toml"


# --- installer -----------------------------------------------------------------------------

def write_config(tmp_path, iface):
    if not os.path.exists(EDGE_ETC):
        pytest.skip(f"no edge-etc binary next to {sys.executable}")
    out = tmp_path / "edge-etc.toml"
    env = dict(os.environ, EDGE_ETC_INSTALL_FUNCTIONS_ONLY="1")
    script = f'. "{INSTALL}"; write_config "$1" "$2" "$3"'
    proc = subprocess.run([SHELL, "-c", script, "sh", EDGE_ETC, iface, str(out)], env=env,
                          capture_output=True, text=True, timeout=120)
    return proc, out


def test_install_writes_valid_config(tmp_path):
    proc, out = write_config(tmp_path, "eth0")
    assert proc.returncode == 0, proc.stderr
    settings = config.load(str(out))
    assert settings.capture.interface == "eth0"
    assert settings.output.json_file == "/var/log/edge-etc/flows.jsonl"
    assert settings.flows == config.DEFAULTS.flows
    assert out.read_text().startswith("# edge-etc settings")


def test_install_rejects_odd_interface(tmp_path):
    proc, out = write_config(tmp_path, 'eth0"; x')
    assert proc.returncode == 1
    assert "invalid interface name" in proc.stderr
    assert not out.exists()


@pytest.mark.parametrize("machine, system_numpy", [
    ("x86_64", False), ("aarch64", False), ("armv7l", True), ("armv6l", True), ("i686", True),
    ("mips", True)])
def test_install_numpy_source_per_machine(machine, system_numpy):
    """Where no ai-edge-litert wheel exists, PyPI has no numpy wheel either, so the
    installer takes Debian's python3-numpy into a venv with system site packages."""
    env = dict(os.environ, EDGE_ETC_INSTALL_FUNCTIONS_ONLY="1")
    script = f'. "{INSTALL}"; needs_system_numpy "$1"'
    proc = subprocess.run([SHELL, "-c", script, "sh", machine], env=env, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == (0 if system_numpy else 1), proc.stderr
