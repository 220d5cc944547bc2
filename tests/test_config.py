"""Settings of `edge-etc run` (edge_etc.config) and the outputs they open (edge_etc.outputs).

The command-line tests go through click's parser and the real `run` command. Where they only
check which settings a run gets, `edge_etc.cli._run` is replaced by a recorder; the other
runs classify a real capture in a subprocess.
"""

import dataclasses
import hashlib
import hmac
import json
import logging.handlers
import os
import pathlib
import pwd
import re
import shutil
import socket
import stat
import subprocess
import sys
import tempfile

import pytest
from click.testing import CliRunner

from conftest import case, run_cli
from edge_etc import cli, config, outputs
from edge_etc.errors import ConfigError, EdgeEtcError, ExitCode

PCAP = case("eth_tls_2flows.pcap")
IPV4 = re.compile(r"\b\d{1,3}(\.\d{1,3}){3}\b")


def write(tmp_path, text, name="edge-etc.toml"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def flat(toml_text):
    """Return {"section.name": value} of a TOML text."""
    data = config._toml_module().loads(toml_text)
    return {f"{section}.{name}": value for section, table in data.items()
            for name, value in table.items()}


@pytest.fixture
def recorded(monkeypatch):
    """Replace the pipeline of `run` by a recorder of its arguments; return the record."""
    calls = []

    def record(pcap_file, iface, settings, strict):
        calls.append({"pcap_file": pcap_file, "iface": iface, "settings": settings})
        return ExitCode.OK

    monkeypatch.setattr(cli, "_run", record)
    return calls


def invoke(*args, env=None):
    return CliRunner().invoke(cli.main, list(args), env=env)


def summary_counts(stderr):
    line = next(line for line in stderr.splitlines() if "summary:" in line)
    return {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", line)}


# --- one source of defaults ----------------------------------------------------------------

def test_defaults_render_round_trip():
    text = config.render()
    assert config.build(flat(text)) == config.DEFAULTS


def test_defaults_file_lists_every_key():
    values = flat(config.render())
    keys = [key for key, *_ in config.settings()]
    assert sorted(values) == sorted(keys)
    for key, _spec, _kind, default in config.settings():
        assert values[key] == default, key


def test_defaults_file_comments_every_key():
    lines = config.render().splitlines()
    for i, line in enumerate(lines):
        if re.match(r"^\w+ = ", line):
            assert lines[i - 1].startswith("# "), f"no comment above {line!r}"


def test_run_options_take_defaults_from_config():
    params = {p.name: p for p in cli.run.params}
    for key, spec, kind, default in config.settings():
        assert spec.param in params, f"{key}: run has no parameter {spec.param}"
        param = params[spec.param]
        assert param.default == default, key
        assert spec.option.split("/")[0] in param.opts, key
        if kind in (int, float):
            assert param.type.min == spec.minimum, key
            assert param.type.max == spec.maximum, key
        if spec.choices is not None:
            assert tuple(param.type.choices) == spec.choices, key


def test_run_options_all_map_to_keys():
    mapped = {spec.param for _key, spec, _kind, _default in config.settings()}
    unmapped = {p.name for p in cli.run.params} - mapped
    assert unmapped == {"config_file", "pcap_file", "strict", "verbose", "quiet"}


def test_backends_match_interpreter_module():
    from edge_etc import infer
    assert config.BACKENDS == tuple(infer.BACKENDS)


def test_syslog_facilities_known_to_stdlib():
    names = logging.handlers.SysLogHandler.facility_names
    for facility in config.SYSLOG_FACILITIES:
        assert facility in names


def test_config_defaults_command_prints_render():
    result = invoke("config", "--defaults")
    assert result.exit_code == 0, result.output
    assert result.output == config.render()


def test_config_file_command_fills_defaults(tmp_path):
    path = write(tmp_path, "[flows]\nmax_flows = 100\n")
    result = invoke("config", path)
    assert result.exit_code == 0, result.output
    values = flat(result.output)
    assert values["flows.max_flows"] == 100
    assert values["flows.idle_timeout_s"] == config.DEFAULTS.flows.idle_timeout_s


def test_config_file_command_applies_variables(tmp_path, monkeypatch):
    """`config FILE` prints what `run --config FILE` uses: the variables win over the file,
    and a comment names them. --defaults ignores them."""
    path = write(tmp_path, "[flows]\nmax_flows = 100\nidle_timeout_s = 30\n")
    monkeypatch.setenv("EDGE_ETC_RUN_MAX_FLOWS", "2500")
    monkeypatch.setenv("EDGE_ETC_RUN_IFACE", "eth9")
    result = invoke("config", path)
    assert result.exit_code == 0, result.output
    values = flat(result.output)
    assert values["flows.max_flows"] == 2500
    assert values["flows.idle_timeout_s"] == 30
    assert values["capture.interface"] == "eth9"
    assert result.output.splitlines()[0] == (
        f"# {path}, then the variables EDGE_ETC_RUN_IFACE, EDGE_ETC_RUN_MAX_FLOWS")
    assert invoke("config", "--defaults").output == config.render()
    monkeypatch.setenv("EDGE_ETC_RUN_MAX_FLOWS", "many")
    result = invoke("config", path)
    assert result.exit_code == 2
    assert "EDGE_ETC_RUN_MAX_FLOWS" in result.output
    assert "edge-etc run" not in result.output  # no usage lines of another command


def test_config_command_needs_one_mode(tmp_path):
    assert invoke("config").exit_code == 2
    assert invoke("config", "--defaults", write(tmp_path, "")).exit_code == 2


# --- checks in __post_init__ --------------------------------------------------------------

@pytest.mark.parametrize("key, value, expected", [
    ("flows.max_flows", 0, "flows.max_flows = 0 is invalid (too small): expected an integer "
                           "from 1 to 10000000 flows"),
    ("flows.max_flows", 10_000_001, "(too large)"),
    ("flows.max_flows", True, "flows.max_flows = true is invalid"),
    ("flows.max_flows", 1.5, "flows.max_flows = 1.5 is invalid"),
    ("flows.max_flows", "100", 'flows.max_flows = "100" is invalid'),
    ("flows.idle_timeout_s", float("nan"), "expected a number from 0.001 to 86400 seconds"),
    ("flows.idle_timeout_s", float("inf"), "flows.idle_timeout_s = inf is invalid"),
    ("flows.idle_timeout_s", 0, "(too small)"),
    ("capture.snaplen", 63, "from 64 to 262144 bytes"),
    ("capture.promisc", 1, "expected true or false"),
    ("model.backend", "gpu", "expected one of auto, litert, tflite-runtime, numpy"),
    ("output.syslog_facility", "local8", "expected one of auth,"),
    ("output.syslog_address", "localhost", "expected a socket path starting with / or HOST:PORT"),
    ("output.prometheus_interval_s", 0.5, "from 1 to 3600 seconds"),
    ("service.log_level", "verbose", "expected one of debug, info, warning, error"),
    ("service.user", "root; rm", "expected a user name"),
    ("capture.interface", 5, "expected a string"),
])
def test_invalid_value_names_key_value_range(key, value, expected):
    with pytest.raises(ConfigError) as err:
        config.build({key: value}, {key: "f.toml"})
    message = str(err.value)
    assert message.startswith(f"f.toml: {key} = ")
    assert expected in message


def test_int_accepted_for_seconds():
    settings = config.build({"flows.idle_timeout_s": 30})
    assert settings.flows.idle_timeout_s == 30.0
    assert isinstance(settings.flows.idle_timeout_s, float)


def test_sections_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.DEFAULTS.flows.max_flows = 1


def test_syslog_udp_address_accepted():
    settings = config.build({"output.syslog_address": "logs.example:514"})
    assert settings.output.syslog_address == "logs.example:514"


# --- reading files ------------------------------------------------------------------------

@pytest.mark.parametrize("text, expected", [
    ("[flows]\nmax_flow = 3\n", "unknown key flows.max_flow; keys of [flows]: max_flows, "),
    ("[flow]\nmax_flows = 3\n", "unknown table [flow]; expected one of [capture], "),
    ("flows = 3\n", "flows must be a table ([flows]), not a value"),
    ("[flows\n", "invalid TOML: "),
    ("[flows]\nmax_flows = 0\n", "flows.max_flows = 0 is invalid (too small): expected an "
                                 "integer from 1 to 10000000 flows"),
])
def test_bad_file_exits_2_with_one_line(tmp_path, recorded, text, expected):
    path = write(tmp_path, text)
    result = invoke("run", "--config", path, "--pcap", PCAP)
    assert result.exit_code == 2
    lines = result.output.splitlines()
    assert len(lines) == 1, result.output
    assert lines[0].startswith(f"edge-etc: error: {path}: ")
    assert expected in lines[0]
    assert recorded == []


@pytest.mark.parametrize("raw, expected", [
    (b"\xff\xfe[flows]\n", "byte 0xff at line 1, column 1 is not UTF-8"),
    (b"[flows]\n# caf\xe9\nmax_flows = 3\n", "byte 0xe9 at line 2, column 6 is not UTF-8"),
])
@pytest.mark.parametrize("command", ["run", "config"])
def test_non_utf8_file_exits_2_with_one_line(tmp_path, raw, expected, command):
    path = tmp_path / "latin1.toml"
    path.write_bytes(raw)
    args = ["run", "--config", str(path), "--pcap", PCAP] if command == "run" else ["config", str(path)]
    proc = run_cli(*args)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"edge-etc: error: {path}: invalid TOML: ")
    assert expected in lines[0]


def test_utf8_bom_accepted(tmp_path, recorded):
    path = tmp_path / "bom.toml"
    path.write_bytes(b"\xef\xbb\xbf[flows]\nmax_flows = 100\n")
    result = invoke("run", "--config", str(path), "--pcap", PCAP)
    assert result.exit_code == 0, result.output
    assert recorded[0]["settings"].flows.max_flows == 100


def test_missing_file_exits_2(tmp_path, recorded):
    result = invoke("run", "--config", str(tmp_path / "absent.toml"), "--pcap", PCAP)
    assert result.exit_code == 2
    assert "config file not found" in result.output


def test_bad_file_real_process_has_no_traceback(tmp_path):
    path = write(tmp_path, "[model]\nbatch_size = 0\n")
    proc = run_cli("run", "--config", path, "--pcap", PCAP)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"edge-etc: error: {path}: model.batch_size = 0 is invalid (too small): expected an "
        "integer from 1 to 4096 windows"]


def test_no_toml_parser_is_runtime_error(monkeypatch):
    class Python310:
        version_info = (3, 10, 0)

    monkeypatch.setattr(config, "sys", Python310)
    monkeypatch.setitem(sys.modules, "tomli", None)  # makes `import tomli` fail
    with pytest.raises(EdgeEtcError) as err:
        config.read_file("any.toml")
    assert not isinstance(err.value, ConfigError)
    assert "pip install tomli" in str(err.value)


# --- precedence: command line, then file, then defaults ------------------------------------

def test_file_values_used(tmp_path, recorded):
    path = write(tmp_path, "[flows]\nmax_flows = 100\n[model]\nbackend = \"litert\"\n")
    result = invoke("run", "--config", path, "--pcap", PCAP)
    assert result.exit_code == 0, result.output
    settings = recorded[0]["settings"]
    assert settings.flows.max_flows == 100
    assert settings.model.backend == "litert"
    assert settings.flows.max_windows == config.DEFAULTS.flows.max_windows


def test_given_option_overrides_file(tmp_path, recorded):
    path = write(tmp_path, "[flows]\nmax_flows = 100\nmax_windows = 7\n")
    result = invoke("run", "--config", path, "--pcap", PCAP, "--max-flows", "200")
    assert result.exit_code == 0, result.output
    settings = recorded[0]["settings"]
    assert settings.flows.max_flows == 200
    assert settings.flows.max_windows == 7


def test_option_equal_to_default_still_overrides(tmp_path, recorded):
    default = config.DEFAULTS.flows.max_flows
    path = write(tmp_path, "[flows]\nmax_flows = 100\n")
    invoke("run", "--config", path, "--pcap", PCAP, "--max-flows", str(default))
    assert recorded[0]["settings"].flows.max_flows == default


def test_no_flag_overrides_true_in_file(tmp_path, recorded):
    path = write(tmp_path, "[output]\nsyslog = true\nanonymize = true\n")
    invoke("run", "--config", path, "--pcap", PCAP, "--no-syslog")
    settings = recorded[0]["settings"]
    assert settings.output.syslog is False
    assert settings.output.anonymize is True


def test_environment_overrides_file(tmp_path, recorded):
    path = write(tmp_path, "[flows]\nmax_flows = 100\n")
    invoke("run", "--config", path, "--pcap", PCAP, env={"EDGE_ETC_RUN_MAX_FLOWS": "300"})
    assert recorded[0]["settings"].flows.max_flows == 300


@pytest.mark.parametrize("name, value, key, expected", [
    ("EDGE_ETC_RUN_FILTER", "tcp", "capture.filter", "tcp"),
    ("EDGE_ETC_RUN_BPF", "tcp", "capture.filter", "tcp"),  # click's name from the parameter
    ("EDGE_ETC_RUN_MODEL", "m.tflite", "model.path", "m.tflite"),
    ("EDGE_ETC_RUN_OUTPUT", "x.jsonl", "output.json_file", "x.jsonl"),
    ("EDGE_ETC_RUN_IDLE_TIMEOUT", "7", "flows.idle_timeout_s", 7.0),
    ("EDGE_ETC_RUN_ANONYMIZE_KEY", "k", "output.anonymize_key_file", "k"),
    ("EDGE_ETC_RUN_SYSLOG", "true", "output.syslog", True),
])
def test_environment_variable_named_after_option(recorded, name, value, key, expected):
    result = invoke("run", "--pcap", PCAP, env={name: value})
    assert result.exit_code == 0, result.output
    section, field = key.split(".")
    assert getattr(getattr(recorded[0]["settings"], section), field) == expected


def test_environment_pcap_and_config(tmp_path, recorded):
    path = write(tmp_path, "[flows]\nmax_flows = 100\n")
    result = invoke("run", env={"EDGE_ETC_RUN_PCAP": PCAP, "EDGE_ETC_RUN_CONFIG": path})
    assert result.exit_code == 0, result.output
    assert recorded[0]["pcap_file"] == PCAP
    assert recorded[0]["settings"].flows.max_flows == 100


def test_environment_variable_every_setting():
    for key, spec, _kind, _default in config.settings():
        name = config.env_var(spec.option)
        assert re.fullmatch(r"EDGE_ETC_RUN_[A-Z0-9_]+", name), key
        assert name in config.env_vars(spec.option, spec.param)


def test_bad_option_value_exits_2(recorded):
    result = invoke("run", "--pcap", PCAP, "--max-flows", "0")
    assert result.exit_code == 2
    assert "0 is not in the range 1<=x<=10000000" in result.output
    assert recorded == []


def test_interface_from_file(tmp_path, recorded):
    path = write(tmp_path, '[capture]\ninterface = "eth9"\n')
    invoke("run", "--config", path)
    assert recorded[0]["iface"] == "eth9"
    assert recorded[0]["pcap_file"] is None


def test_pcap_replaces_file_interface(tmp_path, recorded):
    path = write(tmp_path, '[capture]\ninterface = "eth9"\n')
    invoke("run", "--config", path, "--pcap", PCAP)
    assert recorded[0]["iface"] is None
    assert recorded[0]["pcap_file"] == PCAP


def test_pcap_and_iface_rejected(recorded):
    result = invoke("run", "--pcap", PCAP, "--iface", "eth0")
    assert result.exit_code == 2
    assert "exactly one of --pcap FILE or --iface IFACE" in result.output


def test_pcap_with_empty_iface_accepted(recorded):
    result = invoke("run", "--pcap", PCAP, "--iface", "")
    assert result.exit_code == 0, result.output
    assert recorded[0]["iface"] is None
    assert recorded[0]["pcap_file"] == PCAP


def test_empty_iface_alone_rejected(recorded):
    result = invoke("run", "--iface", "")
    assert result.exit_code == 2
    assert "give --pcap FILE or --iface IFACE" in result.output
    assert recorded == []


def test_run_help_matches_iface_and_strict():
    text = " ".join(invoke("run", "--help").output.split())
    assert "empty for none" in text
    assert "a non-empty --iface on the same command line is an error" in text
    assert "or a record is corrupt or longer than 262144 bytes" in text


def test_no_input_rejected(recorded):
    result = invoke("run")
    assert result.exit_code == 2
    assert "capture.interface" in result.output


def test_log_level_from_file(tmp_path, recorded):
    path = write(tmp_path, '[service]\nlog_level = "warning"\n')
    invoke("run", "--config", path, "--pcap", PCAP)
    assert logging.getLogger().level == logging.WARNING
    invoke("run", "--config", path, "--pcap", PCAP, "-v")
    assert logging.getLogger().level == logging.INFO


# --- outputs: anonymization ---------------------------------------------------------------

def test_anonymizer_keyed_and_stable():
    first = outputs.Anonymizer(b"k" * 16)
    other = outputs.Anonymizer(b"j" * 16)
    record = {"src_ip": "192.0.2.1", "dst_ip": "2001:db8::1", "src_port": 5}
    out = first(record)
    assert out["src_ip"] == first.hash_address("192.0.2.1")
    assert out["src_ip"] != other.hash_address("192.0.2.1")
    assert out["dst_ip"] == first.hash_address("2001:db8:0::1")  # one hash per address
    assert re.fullmatch(r"[0-9a-f]{16}", out["src_ip"])
    assert out["src_port"] == 5
    assert record["src_ip"] == "192.0.2.1"  # the input record is not changed


def test_anonymizer_matches_hmac_sha256():
    key = b"0123456789abcdef"
    expected = hmac.new(key, socket.inet_aton("198.51.100.7"), hashlib.sha256).hexdigest()[:16]
    assert outputs.Anonymizer(key).hash_address("198.51.100.7") == expected


def test_anonymizer_key_file(tmp_path):
    path = tmp_path / "key"
    path.write_bytes(b"0123456789abcdef\n")
    assert outputs.Anonymizer.from_file(str(path))._key == b"0123456789abcdef"
    path.write_bytes(b"short\n")
    with pytest.raises(ConfigError, match="key of 5 bytes is too short; expected at least 16"):
        outputs.Anonymizer.from_file(str(path))
    with pytest.raises(ConfigError, match="cannot read key file"):
        outputs.Anonymizer.from_file(str(tmp_path / "absent"))


def test_run_anonymized_has_no_addresses(tmp_path):
    plain = run_cli("run", "--pcap", PCAP)
    assert plain.returncode == 0, plain.stderr
    addresses = {r[f] for r in map(json.loads, plain.stdout.splitlines())
                 for f in ("src_ip", "dst_ip")}
    assert addresses

    key = tmp_path / "key"
    key.write_bytes(b"0123456789abcdef0123456789abcdef")
    anonymized = run_cli("run", "--pcap", PCAP, "--anonymize", "--anonymize-key", str(key))
    assert anonymized.returncode == 0, anonymized.stderr
    for address in addresses:
        assert address not in anonymized.stdout
    hasher = outputs.Anonymizer(key.read_bytes())
    expected = [{**r, "src_ip": hasher.hash_address(r["src_ip"]),
                 "dst_ip": hasher.hash_address(r["dst_ip"])}
                for r in map(json.loads, plain.stdout.splitlines())]
    assert list(map(json.loads, anonymized.stdout.splitlines())) == expected


def test_run_random_key_is_logged():
    proc = run_cli("run", "--pcap", PCAP, "--anonymize")
    assert proc.returncode == 0, proc.stderr
    assert "random key for this run only" in proc.stderr


# --- outputs: Prometheus text file --------------------------------------------------------

def parse_prometheus(text):
    """Return {(name, labels): value} of the samples; check the HELP and TYPE lines."""
    samples, typed = {}, set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            typed.add(line.split()[2])
            continue
        if line.startswith("#"):
            continue
        m = re.fullmatch(r'([a-z_]+)(\{[^}]*\})? (\S+)', line)
        assert m, f"not a sample line: {line!r}"
        assert m.group(1) in typed, f"{m.group(1)} has no TYPE line"
        samples[(m.group(1), m.group(2) or "")] = float(m.group(3))
    return samples


def test_run_prometheus_file(tmp_path):
    prom = tmp_path / "edge-etc.prom"
    proc = run_cli("run", "--pcap", PCAP, "--prometheus", str(prom))
    assert proc.returncode == 0, proc.stderr
    records = [json.loads(line) for line in proc.stdout.splitlines()]
    summary = summary_counts(proc.stderr)
    text = prom.read_text()
    samples = parse_prometheus(text)

    classified = {k[1]: v for k, v in samples.items() if k[0] == "edge_etc_flows_classified_total"}
    assert sum(classified.values()) == summary["classified"]
    for record in records:
        if record["windows"] == 1:
            assert classified[f'{{label="{record["label"]}"}}'] >= 1
    relabelled = sum(v for k, v in samples.items() if k[0] == "edge_etc_flows_relabelled_total")
    assert relabelled == summary["relabelled"]
    assert samples[("edge_etc_packets_total", "")] == summary["packets"]
    assert samples[("edge_etc_flows_total", "")] == summary["flows"]
    assert samples[("edge_etc_flow_evictions_total", "")] == summary["evictions"]
    assert samples[("edge_etc_packets_malformed_total", "")] == summary["malformed"]
    assert not IPV4.search(text)
    assert stat.S_IMODE(prom.stat().st_mode) == 0o644
    assert os.listdir(tmp_path) == ["edge-etc.prom"]  # no temporary file left


def test_run_prometheus_counts_evictions(tmp_path):
    prom = tmp_path / "edge-etc.prom"
    proc = run_cli("run", "--pcap", PCAP, "--prometheus", str(prom), "--max-flows", "1")
    assert proc.returncode == 0, proc.stderr
    samples = parse_prometheus(prom.read_text())
    evictions = samples[("edge_etc_flow_evictions_total", "")]
    assert evictions == summary_counts(proc.stderr)["evictions"]
    assert evictions > 0


def test_run_prometheus_missing_dir_exits_2(tmp_path):
    path = tmp_path / "absent" / "x.prom"
    proc = run_cli("run", "--pcap", PCAP, "--prometheus", str(path))
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"edge-etc: error: --prometheus {path}: cannot open: directory {path.parent} not found"]


def test_run_prometheus_path_is_dir_exits_2(tmp_path):
    proc = run_cli("run", "--pcap", PCAP, "--prometheus", str(tmp_path))
    assert proc.returncode == 2
    assert "cannot open: is a directory" in proc.stderr


def test_run_output_and_prometheus_missing_dir_same_code(tmp_path):
    output = run_cli("run", "--pcap", PCAP, "-o", str(tmp_path / "absent" / "x.jsonl"))
    prometheus = run_cli("run", "--pcap", PCAP, "--prometheus", str(tmp_path / "absent" / "x.prom"))
    assert output.returncode == prometheus.returncode == ExitCode.BAD_INPUT


class CountingPipeline:
    """The two members of a Pipeline that PrometheusFile reads."""

    labels = ["Web", 'odd"label\\']

    def __init__(self):
        self.packets = 0

    def summary(self):
        counts = {key: 0 for key, *_ in outputs._SUMMARY_METRICS}
        counts["packets"] = self.packets
        return counts


def test_prometheus_rewrites_after_interval(tmp_path, monkeypatch):
    now = [1000.0]
    monkeypatch.setattr(outputs.time, "monotonic", lambda: now[0])
    pipeline = CountingPipeline()
    prom = outputs.PrometheusFile(str(tmp_path / "p.prom"), interval_s=30)
    prom.attach(pipeline)
    pipeline.packets = 5
    now[0] += 29
    prom.maybe_write()
    assert parse_prometheus((tmp_path / "p.prom").read_text())[("edge_etc_packets_total", "")] == 0
    now[0] += 1
    prom.maybe_write()
    assert parse_prometheus((tmp_path / "p.prom").read_text())[("edge_etc_packets_total", "")] == 5


def test_prometheus_escapes_label_values(tmp_path):
    prom = outputs.PrometheusFile(str(tmp_path / "p.prom"), interval_s=30)
    prom.attach(CountingPipeline())
    text = (tmp_path / "p.prom").read_text()
    assert 'edge_etc_flows_classified_total{label="odd\\"label\\\\"} 0' in text


def test_prometheus_write_failure_counted(tmp_path, caplog):
    directory = tmp_path / "d"
    directory.mkdir()
    prom = outputs.PrometheusFile(str(directory / "p.prom"), interval_s=30)
    prom.attach(CountingPipeline())
    (directory / "p.prom").unlink()
    directory.rmdir()
    prom.write()
    prom.write()
    assert prom.write_errors == 2
    warnings = [r for r in caplog.records if "cannot write" in r.getMessage()]
    assert len(warnings) == 1  # the second failure within a minute is only counted


# --- outputs: JSON lines and syslog -------------------------------------------------------

def test_outputs_reopen_after_rotation(tmp_path):
    path = tmp_path / "flows.jsonl"
    settings = config.build({"output.json_file": str(path)}).output
    out = outputs.Outputs.open(settings)
    out({"label": "Web", "windows": 1})
    out.flush()
    path.rename(tmp_path / "flows.jsonl.1")
    out.reopen()
    out({"label": "Chat", "windows": 1})
    out.close()
    assert json.loads((tmp_path / "flows.jsonl.1").read_text())["label"] == "Web"
    assert json.loads(path.read_text())["label"] == "Chat"


def test_outputs_reopen_failure_keeps_old_file(tmp_path):
    directory = tmp_path / "logs"
    directory.mkdir()
    settings = config.build({"output.json_file": str(directory / "flows.jsonl")}).output
    out = outputs.Outputs.open(settings)
    (directory / "flows.jsonl").rename(tmp_path / "flows.jsonl.1")
    directory.rmdir()
    with pytest.raises(EdgeEtcError, match="cannot reopen after SIGHUP"):
        out.reopen()
    out({"label": "Web", "windows": 1})
    out.close()
    assert json.loads((tmp_path / "flows.jsonl.1").read_text())["label"] == "Web"


def test_outputs_json_off(tmp_path, capsys):
    settings = config.build({"output.json_file": ""}).output
    out = outputs.Outputs.open(settings)
    out({"label": "Web", "windows": 1})
    out.close()
    assert capsys.readouterr().out == ""


@pytest.fixture
def syslog_socket(tmp_path):
    path = str(tmp_path / "log")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(10)
    yield sock, path
    sock.close()


def test_run_syslog_messages(syslog_socket):
    sock, path = syslog_socket
    proc = run_cli("run", "--pcap", PCAP, "--syslog", "--syslog-address", path,
                   "--syslog-facility", "local3", "-o", "")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == ""
    counts = summary_counts(proc.stderr)
    records = counts["classified"] + counts["relabelled"]
    assert records > 0
    for _ in range(records):
        message = sock.recv(65536).decode()
        # PRI = facility * 8 + severity: local3 is 19 and INFO is 6.
        m = re.fullmatch(r"<158>edge-etc\[(\d+)\]: (\{.*\})\x00?", message)
        assert m, message
        assert json.loads(m.group(2))["label"]


def test_run_syslog_missing_socket_exits_1(tmp_path):
    proc = run_cli("run", "--pcap", PCAP, "--syslog", "--syslog-address", str(tmp_path / "none"))
    assert proc.returncode == 1
    assert "syslog: cannot connect to" in proc.stderr
    assert "Traceback" not in proc.stderr


# --- switching users ----------------------------------------------------------------------

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="switching users needs root")


@needs_root
def test_run_user_switch_after_output_open(tmp_path):
    os.chmod(tmp_path, 0o700)  # writable by root only
    out = tmp_path / "flows.jsonl"
    proc = run_cli("run", "--pcap", PCAP, "--user", "nobody", "--anonymize", "-o", str(out),
                   cwd="/")
    assert proc.returncode == 0, proc.stderr
    assert "switched to user nobody" in proc.stderr
    counts = summary_counts(proc.stderr)
    assert out.read_text().count("\n") == counts["classified"] + counts["relabelled"]


@needs_root
@pytest.mark.parametrize("backend", ["auto", "numpy"])
def test_run_user_imports_nothing_after_switch(tmp_path, backend):
    """Classify as nobody with every output. Where this test's Python is one that nobody
    cannot read (under /root, say), an import after the switch fails; where nobody can
    read it, this checks the outputs only."""
    os.chmod(tmp_path, 0o700)  # writable by root only
    out = tmp_path / "flows.jsonl"
    # The Prometheus file is rewritten as nobody, so it goes to a folder nobody can reach
    # (pytest's base folder is root's only).
    shared = tempfile.mkdtemp(prefix="edge-etc-test-")
    os.chmod(shared, 0o777)
    prom = pathlib.Path(shared) / "counters.prom"
    try:
        proc = run_cli("run", "--pcap", PCAP, "--user", "nobody", "--backend", backend,
                       "--filter", "tcp", "--anonymize", "-o", str(out), "--prometheus",
                       str(prom), cwd="/")
        prom_text = prom.read_text() if prom.exists() else ""
    finally:
        shutil.rmtree(shared)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "switched to user nobody" in proc.stderr
    counts = summary_counts(proc.stderr)
    assert counts["classified"] > 0
    assert out.read_text().count("\n") == counts["classified"] + counts["relabelled"]
    assert "edge_etc_flows_total" in prom_text


@needs_root
def test_run_user_cannot_write_root_dir(tmp_path):
    os.chmod(tmp_path, 0o700)
    proc = run_cli("run", "--pcap", PCAP, "--user", "nobody", "--prometheus",
                   str(tmp_path / "p.prom"), "-o", "")
    assert proc.returncode == 1
    assert "cannot write: Permission denied" in proc.stderr


@needs_root
def test_drop_privileges_sets_ids():
    code = ("import os; from edge_etc.outputs import drop_privileges; drop_privileges('nobody'); "
            "print(os.getuid(), os.geteuid(), os.getgid(), os.getegid())")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    entry = pwd.getpwnam("nobody")
    assert proc.stdout.split() == [str(entry.pw_uid)] * 2 + [str(entry.pw_gid)] * 2


def test_unknown_user_exits_2():
    proc = run_cli("run", "--pcap", PCAP, "--user", "no-such-user-edge-etc")
    assert proc.returncode == 2
    assert "--user no-such-user-edge-etc: no such user" in proc.stderr


@needs_root
def test_drop_privileges_without_root_fails():
    code = ("import os; from edge_etc.outputs import drop_privileges; os.setuid(65534); "
            "drop_privileges('root')")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert "switching users needs root" in proc.stderr
