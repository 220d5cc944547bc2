"""Settings of `edge-etc run`: every key with its one default, range and unit.

The dataclasses below are the only place where a default is written. From them come the
defaults and ranges of `edge-etc run`'s options, the checks of a `--config` TOML file and
the commented file that `edge-etc config --defaults` prints.

Precedence, highest first:
1. options given on the command line, or as EDGE_ETC_RUN_<OPTION> environment variables
   (`env_var`: --max-flows is EDGE_ETC_RUN_MAX_FLOWS, --pcap is EDGE_ETC_RUN_PCAP);
2. the `--config` file;
3. the defaults in this module.

This module imports only the standard library and click, because `edge-etc --help`
imports it.
"""

import dataclasses
import functools
import math
import re
import sys

from .errors import ConfigError, EdgeEtcError

# Interpreter backends `edge_etc.infer.find_interpreter` accepts (kept equal to
# edge_etc.infer.BACKENDS by a test, because infer.py imports numpy and this module must not).
BACKENDS = ("auto", "litert", "tflite-runtime", "numpy", "numpy-reference")
LOG_LEVELS = ("debug", "info", "warning", "error")
# Facility names accepted by logging.handlers.SysLogHandler.
SYSLOG_FACILITIES = ("auth", "authpriv", "cron", "daemon", "ftp", "kern", "lpr", "mail",
                     "news", "syslog", "user", "uucp", "local0", "local1", "local2",
                     "local3", "local4", "local5", "local6", "local7")
STDOUT = "-"

# POSIX portable user names, plus the leading digit many systems accept (max 32 bytes).
_USER_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,31}")


@dataclasses.dataclass(frozen=True)
class Setting:
    """Checks, documentation and `run` option of one key.

    Attributes:
        help: one sentence for `--help` and the `config --defaults` comment.
        option: the `run` option that overrides the key, e.g. "--max-flows".
        param: the click parameter name of that option.
        unit: unit of a number ("seconds", "bytes"), empty for none.
        minimum, maximum: inclusive range of a number; None for no bound.
        choices: the allowed strings, or None for any string.
        metavar: the placeholder shown in `--help`.
        short: a one-letter alias of the option, e.g. "-o".
    """

    help: str
    option: str
    param: str
    unit: str = ""
    minimum: float = None
    maximum: float = None
    choices: tuple = None
    metavar: str = None
    short: str = None


def _setting(default, help, option, param, **kwargs):
    return dataclasses.field(default=default,
                             metadata={"setting": Setting(help, option, param, **kwargs)})


class SettingError(ConfigError):
    """An invalid value of one key; `key` is its "section.name"."""

    def __init__(self, key, message):
        super().__init__(message)
        self.key = key


def describe(setting, kind):
    """Return the allowed values of a key, e.g. "an integer from 1 to 10000000 flows"."""
    if kind is bool:
        return "true or false"
    if setting.choices is not None:
        return "one of " + ", ".join(setting.choices)
    if kind is str:
        return "a string"
    noun = "an integer" if kind is int else "a number"
    unit = f" {setting.unit}" if setting.unit else ""
    low, high = setting.minimum, setting.maximum
    if low is not None and high is not None:
        return f"{noun} from {_number(low)} to {_number(high)}{unit}"
    if low is not None:
        return f"{noun} of at least {_number(low)}{unit}"
    return f"{noun}{unit}"


def _number(x):
    return str(int(x)) if float(x).is_integer() else repr(x)


def _shown(value):
    """Return `value` as TOML spells it (true, "text", 5), for messages."""
    if isinstance(value, (bool, int, float, str)):
        return _toml_value(value)
    return repr(value)


def _check_value(key, setting, kind, value):
    """Return `value` converted to `kind`, or raise SettingError naming key, value and range."""
    def invalid(extra=""):
        return SettingError(key, f"{key} = {_shown(value)} is invalid{extra}: expected "
                                 f"{describe(setting, kind)}")

    if kind is bool:
        if not isinstance(value, bool):
            raise invalid()
        return value
    if kind is str:
        if not isinstance(value, str):
            raise invalid()
        if setting.choices is not None and value not in setting.choices:
            raise invalid()
        return value
    # Numbers: bool is a subclass of int, and `true` is never a count.
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise invalid()
    if kind is int and not isinstance(value, int):
        raise invalid()
    if kind is float:
        value = float(value)
        if not math.isfinite(value):
            raise invalid()
    if setting.minimum is not None and value < setting.minimum:
        raise invalid(" (too small)")
    if setting.maximum is not None and value > setting.maximum:
        raise invalid(" (too large)")
    return value


class _Section:
    """Checks every field of a section dataclass against its Setting in __post_init__."""

    SECTION = ""

    def __post_init__(self):
        for field in dataclasses.fields(self):
            key = f"{self.SECTION}.{field.name}"
            value = _check_value(key, field.metadata["setting"], field.type,
                                 getattr(self, field.name))
            # The dataclass is frozen; this stores the converted value (int -> float) once.
            object.__setattr__(self, field.name, value)
        self._check()

    def _check(self):
        """Check rules that involve more than one value (none by default)."""


@dataclasses.dataclass(frozen=True)
class CaptureConfig(_Section):
    """Live capture: which packets are read."""

    SECTION = "capture"

    interface: str = _setting(
        "", "Network interface to capture from ('any' for all); empty for none. --pcap FILE "
        "replaces an interface from a --config file or a variable, and a non-empty --iface "
        "on the same command line is an error.",
        "--iface", "iface", metavar="IFACE")
    filter: str = _setting(
        "", "BPF filter for live capture and capture files, e.g. 'tcp or udp'; empty for all packets.",
        "--filter", "bpf", metavar="BPF")
    snaplen: int = _setting(
        2048, "Live capture snapshot length. Each packet takes a slot of about this size in "
        "the kernel buffer (on an interface that offloads segmentation, whatever its MTU): "
        "with 65535 a 32 MiB buffer held about 500 packets, and a 2-core x86 VM dropped "
        "packets at 100,000 packets/s; with 2048 none up to 200,000. The bundled model reads "
        "at most 48 bytes from the IP header on. IP fragments longer than this are dropped.",
        "--snaplen", "snaplen", unit="bytes", minimum=64, maximum=262144)
    promisc: bool = _setting(
        False, "Put the interface into promiscuous mode, to see traffic between other hosts "
        "on a shared link.", "--promisc/--no-promisc", "promisc")
    buffer_mib: int = _setting(
        32, "Kernel capture buffer. It absorbs bursts while the model runs: with 2 MiB (the "
        "libpcap default) a 2-core x86 VM dropped packets at 20,000 packets/s, with 32 MiB "
        "none at 50,000. On a router with little memory, 4 to 8 MiB.",
        "--buffer-mib", "buffer_mib", unit="MiB", minimum=1, maximum=1024)


@dataclasses.dataclass(frozen=True)
class ModelConfig(_Section):
    """The classifier: model file and interpreter."""

    SECTION = "model"

    path: str = _setting(
        "", "int8 .tflite model written by 'edge-etc convert'; empty for the bundled model.",
        "--model", "model_path", metavar="FILE")
    backend: str = _setting(
        "auto", "Interpreter: 'auto' tries ai-edge-litert, then tflite-runtime, then the "
        "slower built-in numpy backend, which computes what ai-edge-litert's default "
        "(XNNPACK) interpreter computes. 'numpy-reference' runs the numpy backend with "
        "TFLite's reference kernels instead.", "--backend", "backend", choices=BACKENDS)
    batch_size: int = _setting(
        64, "Windows per interpreter call.", "--batch-size", "batch_size", unit="windows",
        minimum=1, maximum=4096)


@dataclasses.dataclass(frozen=True)
class FlowConfig(_Section):
    """The flow table: its size and how long flows live."""

    SECTION = "flows"

    max_flows: int = _setting(
        65536, "Flow table capacity; the least recently used flow is evicted when it is "
        "full. Each open flow takes about 0.17 KB with the compiled flow engine and 0.35 KB "
        "in the pure-Python path (x86_64, bundled model, 100,000 flows open).", "--max-flows",
        "max_flows", unit="flows", minimum=1, maximum=10_000_000)
    idle_timeout_s: float = _setting(
        120.0, "Time without a packet after which a flow expires.", "--idle-timeout",
        "idle_timeout", unit="seconds", minimum=0.001, maximum=86400)
    max_windows: int = _setting(
        1, "Windows per flow whose class probabilities are averaged into the decision. "
        "With 1 a flow is decided on its first complete window and its packet data is freed "
        "at once.",
        "--max-windows", "max_windows", unit="windows", minimum=1, maximum=1000)


@dataclasses.dataclass(frozen=True)
class OutputConfig(_Section):
    """Destinations of the flow records and counters."""

    SECTION = "output"

    json_file: str = _setting(
        STDOUT, "File that JSON lines are appended to ('-' for stdout, empty for none); "
        "SIGHUP reopens it.", "--output", "output", metavar="FILE", short="-o")
    syslog: bool = _setting(
        False, "Also send each record to syslog.", "--syslog/--no-syslog", "syslog")
    syslog_facility: str = _setting(
        "daemon", "Syslog facility of the records.", "--syslog-facility", "syslog_facility",
        choices=SYSLOG_FACILITIES)
    syslog_address: str = _setting(
        "/dev/log", "Syslog destination: a Unix socket path, or HOST:PORT for UDP.",
        "--syslog-address", "syslog_address", metavar="ADDRESS")
    prometheus_file: str = _setting(
        "", "Prometheus text file of counters for node_exporter's textfile collector; "
        "empty for none.", "--prometheus", "prometheus", metavar="FILE")
    prometheus_interval_s: float = _setting(
        30.0, "Time between rewrites of the Prometheus file.", "--prometheus-interval",
        "prometheus_interval", unit="seconds", minimum=1, maximum=3600)
    anonymize: bool = _setting(
        False, "Replace IP addresses in records by keyed hashes (HMAC-SHA256, 16 hex "
        "digits).", "--anonymize/--no-anonymize", "anonymize")
    anonymize_key_file: str = _setting(
        "", "File with the hash key (at least 16 bytes); empty for a random key per run, "
        "so hashes match only within one run.", "--anonymize-key", "anonymize_key",
        metavar="FILE")

    def _check(self):
        host, sep, port = self.syslog_address.rpartition(":")
        if not self.syslog_address.startswith("/") and not (sep and host and port.isdigit()):
            raise SettingError("output.syslog_address",
                               f"output.syslog_address = {_shown(self.syslog_address)} is invalid: "
                               "expected a socket path starting with / or HOST:PORT")


@dataclasses.dataclass(frozen=True)
class ServiceConfig(_Section):
    """The process: logging and privileges."""

    SECTION = "service"

    log_level: str = _setting(
        "info", "Lowest level of log messages on stderr; -v and -q move it.", "--log-level",
        "log_level", choices=LOG_LEVELS)
    user: str = _setting(
        "", "User to switch to after the capture and output files are open (needs root); "
        "empty to keep the current user.", "--user", "user", metavar="NAME")

    def _check(self):
        if self.user and not _USER_NAME.fullmatch(self.user):
            raise SettingError("service.user", f"service.user = {_shown(self.user)} is invalid: "
                                               "expected a user name of letters, digits, "
                                               "'_', '.' or '-' (at most 32)")


@dataclasses.dataclass(frozen=True)
class Config:
    """All settings of one run, one attribute per TOML table."""

    capture: CaptureConfig = dataclasses.field(default_factory=CaptureConfig)
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    flows: FlowConfig = dataclasses.field(default_factory=FlowConfig)
    output: OutputConfig = dataclasses.field(default_factory=OutputConfig)
    service: ServiceConfig = dataclasses.field(default_factory=ServiceConfig)


SECTIONS = {f.name: f.default_factory for f in dataclasses.fields(Config)}
DEFAULTS = Config()


def settings():
    """Yield (key, Setting, type, default) for every key, in file order."""
    for section, cls in SECTIONS.items():
        for field in dataclasses.fields(cls):
            yield f"{section}.{field.name}", field.metadata["setting"], field.type, field.default


def setting(key):
    """Return (Setting, type, default) of `key` ("section.name"); KeyError if unknown."""
    for name, spec, kind, default in settings():
        if name == key:
            return spec, kind, default
    raise KeyError(key)


def build(values, origins=None):
    """Return the Config of `values` ({"section.name": value}); missing keys take defaults.

    Raises:
        ConfigError: a key is unknown or a value is invalid. The message starts with where
            the value came from (`origins[key]`: a file name or an option), when known.
    """
    origins = origins or {}
    known = {key for key, *_ in settings()}
    for key in values:
        if key not in known:
            raise ConfigError(f"{origins.get(key, 'settings')}: unknown key {key!r}")
    sections = {}
    for section, cls in SECTIONS.items():
        prefix = section + "."
        kwargs = {key[len(prefix):]: v for key, v in values.items() if key.startswith(prefix)}
        try:
            sections[section] = cls(**kwargs)
        except SettingError as e:
            origin = origins.get(e.key)
            raise ConfigError(f"{origin}: {e}" if origin else str(e)) from None
    return Config(**sections)


def _toml_module():
    if sys.version_info >= (3, 11):
        import tomllib
        return tomllib
    try:
        import tomli
    except ImportError:
        raise EdgeEtcError("reading a --config file needs Python 3.11 or newer, or the tomli "
                           "package on Python 3.9 and 3.10: pip install tomli") from None
    return tomli


def _decode_utf8(path, raw):
    """Return the text of a TOML file's bytes, without a leading UTF-8 byte order mark.

    TOML files are UTF-8. Editors on Windows often start them with a byte order mark,
    which tomllib rejects as an invalid statement, so it is dropped here.

    Raises:
        ConfigError: the bytes are not UTF-8; the message gives the line and column.
    """
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        column = e.start - (raw.rfind(b"\n", 0, e.start) + 1) + 1
        raise ConfigError(f"{path}: invalid TOML: byte 0x{raw[e.start]:02x} at line {line}, "
                          f"column {column} is not UTF-8 ({e.reason}); save the file as "
                          "UTF-8") from None


def read_file(path):
    """Read a TOML settings file; return {"section.name": value}.

    Raises:
        ConfigError: the file is missing, unreadable, not UTF-8, not TOML, or has a key
            that is not a setting. Values are checked later, by `build`.
        EdgeEtcError: no TOML parser (Python 3.9 or 3.10 without tomli).
    """
    toml = _toml_module()
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read config file: {e.strerror}") from None
    try:
        data = toml.loads(_decode_utf8(path, raw))
    except toml.TOMLDecodeError as e:
        raise ConfigError(f"{path}: invalid TOML: {e}") from None

    values = {}
    for section, table in data.items():
        if section not in SECTIONS:
            raise ConfigError(f"{path}: unknown table [{section}]; expected one of "
                              f"{', '.join(f'[{s}]' for s in SECTIONS)}")
        if not isinstance(table, dict):
            raise ConfigError(f"{path}: {section} must be a table ([{section}]), not a value")
        names = [f.name for f in dataclasses.fields(SECTIONS[section])]
        for name, value in table.items():
            if name not in names:
                raise ConfigError(f"{path}: unknown key {section}.{name}; keys of "
                                  f"[{section}]: {', '.join(names)}")
            values[f"{section}.{name}"] = value
    return values


def load(path=None, overrides=None, override_origins=None):
    """Return the Config of a settings file (or the defaults) with `overrides` on top.

    Args:
        path: TOML file, or None for the defaults only.
        overrides: {"section.name": value} that take precedence over the file.
        override_origins: {"section.name": "--option"} for error messages.
    """
    values = read_file(path) if path else {}
    origins = dict.fromkeys(values, path)
    values.update(overrides or {})
    origins.update(override_origins or {})
    return build(values, origins)


def options_given(ctx):
    """Return the names of `ctx`'s parameters that the user set, on the command line or
    through an EDGE_ETC_... environment variable, as opposed to click defaults."""
    from click.core import ParameterSource
    user_sources = (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT)
    return {name for name in ctx.params if ctx.get_parameter_source(name) in user_sources}


def from_options(path, params, given_params):
    """Return the Config of a run: the file at `path` (if any), then the given options.

    Args:
        path: the `--config` file or None.
        params: click parameter values of `run`, by parameter name.
        given_params: names of the parameters the user set (see `options_given`).
    """
    overrides, origins = {}, {}
    for key, spec, _kind, _default in settings():
        if spec.param in given_params:
            overrides[key] = params[spec.param]
            origins[key] = spec.option.split("/")[0]
    return load(path, overrides, origins)


def env_var(option):
    """Return the environment variable of a `run` option: "--max-flows" -> EDGE_ETC_RUN_MAX_FLOWS."""
    return "EDGE_ETC_RUN_" + option.split("/")[0].lstrip("-").upper().replace("-", "_")


def env_vars(option, param):
    """Return the environment variables `run` reads for an option: the documented name
    first, then click's name from the parameter (EDGE_ETC_RUN_BPF for --filter), which
    earlier versions read."""
    names = [env_var(option)]
    click_name = "EDGE_ETC_RUN_" + param.upper()
    if click_name not in names:
        names.append(click_name)
    return names


def variable_set(param):
    """Return the environment variable that sets the click parameter `param`, or None."""
    import os

    names = [param.envvar] if isinstance(param.envvar, str) else list(param.envvar or [])
    return next((name for name in names if os.environ.get(name)), None)


@functools.lru_cache(maxsize=None)
def _env_option_class():
    """Return a `click.Option` whose invalid value, when it came from an environment
    variable, is reported under the variable's name (click names only the option)."""
    import click
    from click.core import ParameterSource

    class EnvOption(click.Option):
        def process_value(self, ctx, value):
            try:
                return super().process_value(ctx, value)
            except click.BadParameter as e:
                if ctx.get_parameter_source(self.name) is ParameterSource.ENVIRONMENT:
                    name = variable_set(self)
                    if name:
                        e.param_hint = f"{name} (environment variable of {self.opts[-1]})"
                raise

    return EnvOption


def run_option(key):
    """Return the `click.option` decorator of the `run` option that overrides `key`."""
    import click

    spec, kind, default = setting(key)
    decls = [spec.short, spec.option] if spec.short else [spec.option]
    kwargs = {"default": default, "help": spec.help, "show_default": True,
              "envvar": env_vars(spec.option, spec.param), "cls": _env_option_class()}
    if kind is bool:
        kwargs["show_default"] = False
    elif spec.choices is not None:
        kwargs["type"] = click.Choice(spec.choices)
    elif kind is int:
        kwargs["type"] = click.IntRange(spec.minimum, spec.maximum)
    elif kind is float:
        kwargs["type"] = click.FloatRange(spec.minimum, spec.maximum)
    else:
        kwargs["show_default"] = default != ""
    if spec.metavar:
        kwargs["metavar"] = spec.metavar
    if spec.unit and kind in (int, float):
        kwargs["help"] = f"{spec.help} Unit: {spec.unit}."
    return click.option(*decls, spec.param, **kwargs)


def _toml_value(value):
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    # A TOML basic string: backslash, quote and control characters escaped.
    out = []
    for ch in value:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _wrap_comment(text, width=88):
    lines, line = [], "#"
    for word in text.split():
        if len(line) + 1 + len(word) > width and line != "#":
            lines.append(line)
            line = "#"
        line += " " + word
    lines.append(line)
    return lines


def render(config=DEFAULTS):
    """Return `config` as a commented TOML file that `read_file` reads back unchanged."""
    lines = ["# edge-etc settings for 'edge-etc run --config FILE'.",
             "# Options given on the command line override the values in this file.",
             "# 'edge-etc config --defaults' prints every key with its default.", ""]
    for section, cls in SECTIONS.items():
        lines.extend(_wrap_comment(cls.__doc__.strip()))
        lines.append(f"[{section}]")
        section_config = getattr(config, section)
        for field in dataclasses.fields(cls):
            spec = field.metadata["setting"]
            comment = spec.help
            if field.type is not str or spec.choices is not None:
                comment += f" Allowed: {describe(spec, field.type)}."
            comment += f" Option: {spec.option.split('/')[0]}."
            lines.extend(_wrap_comment(comment))
            lines.append(f"{field.name} = {_toml_value(getattr(section_config, field.name))}")
        lines.append("")
    return "\n".join(lines)
