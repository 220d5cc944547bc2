"""Outputs of `edge-etc run` besides stdout, and the switch to an unprivileged user.

`Outputs` is the `write` callable the `Pipeline` gets. For each record it replaces the IP
addresses by keyed hashes when anonymizing, then appends a JSON line (a file or stdout),
sends it to syslog and counts it for the Prometheus text file. The Prometheus file holds
only counters and the class label: never an address or a port.

Order of a run, so that a service started as root keeps no root rights while it parses
traffic: open the capture, open these outputs (`Outputs.open`), read the model and create
the interpreter, `drop_privileges`, then read packets. Every module the run needs is
imported before the switch, so the new user need not be able to read the Python
installation. The Prometheus file and a JSON file reopened on SIGHUP are written as the new
user, so their directories must be writable by that user.

hashlib, hmac, secrets, logging.handlers and tempfile are imported only by the outputs that
use them: hashlib maps OpenSSL's libcrypto, about 4 MB of the resident memory before the
first packet.
"""

import json
import logging
import os
import socket
import time

from .config import STDOUT
from .errors import ConfigError, EdgeEtcError
from .model import UNKNOWN_LABEL
from .runner import JsonLines

log = logging.getLogger(__name__)

MIN_KEY_BYTES = 16
HASH_HEX_DIGITS = 16  # 64 bits of HMAC-SHA256: collisions are unlikely below ~10^9 addresses
_WARN_INTERVAL_S = 60.0


class Anonymizer:
    """Replaces `src_ip` and `dst_ip` of records by truncated HMAC-SHA256 hex digests.

    The hash input is the packed address (4 or 16 bytes), so one address always maps to one
    hash under one key, whatever its text form.
    """

    def __init__(self, key):
        import hashlib
        import hmac

        self._key = key
        self._hmac = hmac.new
        self._sha256 = hashlib.sha256

    @classmethod
    def from_file(cls, path):
        """Read the key from `path`; trailing whitespace (a newline) is not part of it.

        Raises:
            ConfigError: the file cannot be read or contains fewer than MIN_KEY_BYTES bytes.
        """
        try:
            with open(path, "rb") as f:
                key = f.read().rstrip()
        except OSError as e:
            raise ConfigError(f"--anonymize-key {path}: cannot read key file: "
                              f"{e.strerror}") from None
        if len(key) < MIN_KEY_BYTES:
            raise ConfigError(f"--anonymize-key {path}: key of {len(key)} bytes is too short; "
                              f"expected at least {MIN_KEY_BYTES} bytes, e.g. from: "
                              f"head -c 32 /dev/urandom > {path}")
        return cls(key)

    @classmethod
    def random(cls):
        import secrets

        return cls(secrets.token_bytes(32))

    def hash_address(self, text):
        family = socket.AF_INET6 if ":" in text else socket.AF_INET
        digest = self._hmac(self._key, socket.inet_pton(family, text), self._sha256).hexdigest()
        return digest[:HASH_HEX_DIGITS]

    def __call__(self, record):
        out = dict(record)
        for field in ("src_ip", "dst_ip"):
            if field in out:
                out[field] = self.hash_address(out[field])
        return out


def _syslog_handler(address, facility):
    """Return a SysLogHandler that counts send failures and logs them at most once a
    minute, instead of printing a traceback per record."""
    import logging.handlers

    class CountingSysLogHandler(logging.handlers.SysLogHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.errors = 0
            self._last_warning = -_WARN_INTERVAL_S

        def handleError(self, record):
            self.errors += 1
            now = time.monotonic()
            if now - self._last_warning >= _WARN_INTERVAL_S:
                self._last_warning = now
                log.warning("syslog: sending a record failed (%d failures so far)", self.errors,
                            exc_info=True)

    return CountingSysLogHandler(address=address,
                                 facility=logging.handlers.SysLogHandler.facility_names[facility])


def _probe_unix_socket(path):
    """Connect to the Unix socket at `path` as a datagram socket, then as a stream socket,
    in the order SysLogHandler tries them. Raise the stream attempt's OSError if both fail."""
    for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
        with socket.socket(socket.AF_UNIX, kind) as sock:
            try:
                sock.connect(path)
                return
            except OSError:
                if kind == socket.SOCK_STREAM:
                    raise


class Syslog:
    """Syslog output: one message per record, `edge-etc[PID]: {JSON}` at level INFO."""

    def __init__(self, facility, address):
        if address.startswith("/"):
            target = address
        else:
            host, _, port = address.rpartition(":")
            target = (host.strip("[]"), int(port))
        try:
            if isinstance(target, str):
                # SysLogHandler of Python 3.11 and later defers a failed connection to the
                # first record; connecting here reports a missing syslog daemon at start.
                _probe_unix_socket(target)
            self.handler = _syslog_handler(target, facility)
        except OSError as e:
            raise EdgeEtcError(f"syslog: cannot connect to {address}: {e.strerror or e}; "
                               "is a syslog daemon running?") from None
        self.handler.ident = f"edge-etc[{os.getpid()}]: "
        # A logger of its own, so records never reach the stderr log and log lines never
        # reach syslog through this handler.
        self.logger = logging.getLogger("edge_etc.records")
        self.logger.propagate = False
        self.logger.setLevel(logging.INFO)
        self.logger.handlers[:] = [self.handler]

    def __call__(self, record):
        self.logger.info(json.dumps(record, separators=(",", ":")))

    def close(self):
        self.logger.removeHandler(self.handler)
        self.handler.close()


def _escape_label(value):
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


# (summary key, metric name, type, help) of the counters taken from Pipeline.summary().
_SUMMARY_METRICS = (
    ("records", "edge_etc_records_total", "counter", "Capture records read."),
    ("packets", "edge_etc_packets_total", "counter", "TCP and UDP packets accounted to flows."),
    ("flows", "edge_etc_flows_total", "counter", "Flows created."),
    ("open_flows", "edge_etc_open_flows", "gauge", "Flows in the flow table."),
    ("windows", "edge_etc_windows_total", "counter", "Windows classified."),
    ("too_short", "edge_etc_flows_too_short_total", "counter",
     "Flows that ended before their first window."),
    ("evictions", "edge_etc_flow_evictions_total", "counter",
     "Flows evicted because the flow table was full."),
    ("expired", "edge_etc_flows_expired_total", "counter", "Flows expired after the idle timeout."),
    ("skipped", "edge_etc_packets_skipped_total", "counter",
     "Records skipped as traffic the classifier does not take (ARP, ICMP, ESP)."),
    ("malformed", "edge_etc_packets_malformed_total", "counter", "Records skipped as malformed."),
    ("fragments_dropped", "edge_etc_fragments_dropped_total", "counter",
     "IP fragments dropped before reassembly completed."),
)


def check_prometheus_path(path):
    """Check at start-up that the Prometheus file can be created where it is requested.

    The file is written later, by `PrometheusFile`, as a new file in its directory, so the
    directory must exist and be writable. A failure to write later is a runtime error.

    Raises:
        ConfigError: the directory is missing or not writable, or `path` is a directory.
    """
    directory = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise ConfigError(f"--prometheus {path}: cannot open: is a directory")
    if not os.path.isdir(directory):
        raise ConfigError(f"--prometheus {path}: cannot open: directory {directory} not found")
    if not os.access(directory, os.W_OK | os.X_OK):
        raise ConfigError(f"--prometheus {path}: cannot open: directory {directory} is not "
                          "writable")


class PrometheusFile:
    """Counters of a run in the Prometheus text format, for node_exporter's textfile
    collector, rewritten atomically every `interval_s` and at the end of the run.

    Atomic: the text goes to a temporary file in the same directory, which `os.replace`
    then renames over the target, so a reader sees the old file or the new one. The
    temporary name ends in `.tmp`, which the textfile collector ignores (it reads `*.prom`).
    """

    def __init__(self, path, interval_s):
        import tempfile  # noqa: F401 (here, before a --user switch: `_write` uses it)

        self.path = path
        self.interval_s = interval_s
        self.pipeline = None
        self.syslog = None  # a Syslog whose send failures are reported, if any
        self.classified = {}  # label -> flows whose first decision had this label
        self.relabelled = {}  # label -> later decisions that changed a flow to this label
        self.write_errors = 0
        self.start_time = time.time()
        self._next_write = 0.0
        self._last_warning = -_WARN_INTERVAL_S

    def attach(self, pipeline):
        """Take counters from `pipeline` and write the first file.

        Raises:
            EdgeEtcError: the file cannot be written, e.g. its directory is not writable.
        """
        self.pipeline = pipeline
        for label in [*pipeline.labels, UNKNOWN_LABEL]:
            self.classified.setdefault(label, 0)
            self.relabelled.setdefault(label, 0)
        try:
            self._write()
        except OSError as e:
            raise EdgeEtcError(f"--prometheus {self.path}: cannot write: "
                               f"{e.strerror or e}") from None

    def count(self, record):
        # The runner writes a flow's first record after its first window, so `windows` is 1
        # there and larger in every later record, which reports a changed label.
        table = self.classified if record["windows"] == 1 else self.relabelled
        table[record["label"]] = table.get(record["label"], 0) + 1

    def maybe_write(self):
        if self.pipeline is not None and time.monotonic() >= self._next_write:
            self.write()

    def write(self):
        """Write the file now; a failure is counted and logged at most once a minute."""
        try:
            self._write()
        except OSError as e:
            self.write_errors += 1
            now = time.monotonic()
            if now - self._last_warning >= _WARN_INTERVAL_S:
                self._last_warning = now
                log.warning("--prometheus %s: cannot write: %s (%d failures so far)",
                            self.path, e.strerror or e, self.write_errors)

    def _write(self):
        import tempfile

        self._next_write = time.monotonic() + self.interval_s
        text = self.render()
        directory = os.path.dirname(os.path.abspath(self.path))
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".edge-etc-", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text)
                os.fchmod(f.fileno(), 0o644)
            os.replace(tmp, self.path)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise

    def render(self):
        """Return the metrics as Prometheus text exposition format (version 0.0.4)."""
        summary = self.pipeline.summary()
        lines = []

        def metric(name, kind, help_text, samples):
            lines.append(f"# HELP {name} {help_text}")
            lines.append(f"# TYPE {name} {kind}")
            for labels, value in samples:
                lines.append(f"{name}{labels} {value}")

        def by_label(table):
            return [(f'{{label="{_escape_label(label)}"}}', count)
                    for label, count in sorted(table.items())]

        metric("edge_etc_flows_classified_total", "counter",
               "Flows classified, by the label of their first decision.", by_label(self.classified))
        metric("edge_etc_flows_relabelled_total", "counter",
               "Later decisions that changed a flow's label, by the new label.",
               by_label(self.relabelled))
        for key, name, kind, help_text in _SUMMARY_METRICS:
            metric(name, kind, help_text, [("", summary[key])])
        if "capture_drops" in summary:
            metric("edge_etc_capture_drops_total", "counter",
                   "Packets the capture lost: 'kernel' for a full buffer, 'interface' for the "
                   "network interface.",
                   [('{source="kernel"}', summary["capture_drops"]),
                    ('{source="interface"}', summary["interface_drops"])])
        errors = [('{output="prometheus"}', self.write_errors)]
        if self.syslog is not None:
            errors.append(('{output="syslog"}', self.syslog.handler.errors))
        metric("edge_etc_output_errors_total", "counter",
               "Failed writes of the Prometheus file and failed syslog sends.", errors)
        metric("edge_etc_start_time_seconds", "gauge", "Start time of the run (Unix time).",
               [("", round(self.start_time, 3))])
        return "\n".join(lines) + "\n"


class Outputs:
    """The pipeline's `write` callable: anonymize, then JSON lines, syslog and counters.

    Use `Outputs.open(config.output)` while still privileged, `attach(pipeline)` once the
    pipeline exists, `flush()` after each batch, `reopen()` on SIGHUP and `close()` at the end.
    """

    def __init__(self, json_lines=None, syslog=None, prometheus=None, anonymizer=None):
        self.json_lines = json_lines
        self.syslog = syslog
        self.prometheus = prometheus
        self.anonymizer = anonymizer

    @classmethod
    def open(cls, settings, stream=None):
        """Open every output that `settings` (an `OutputConfig`) requests.

        Args:
            stream: where JSON lines go when `settings.json_file` is "-" (stdout).

        Raises:
            ConfigError: `settings.json_file` is "-" and `stream` is None (stdout is
                closed), or an output file or the anonymizing key cannot be opened.
            EdgeEtcError: the syslog daemon cannot be reached.
        """
        anonymizer = None
        if settings.anonymize:
            if settings.anonymize_key_file:
                anonymizer = Anonymizer.from_file(settings.anonymize_key_file)
                log.info("anonymizing addresses with the key in %s", settings.anonymize_key_file)
            else:
                anonymizer = Anonymizer.random()
                log.info("anonymizing addresses with a random key for this run only; hashes "
                         "of one address differ between runs (use --anonymize-key FILE to "
                         "keep them)")
        elif settings.anonymize_key_file:
            log.warning("--anonymize-key %s is ignored: --anonymize is off",
                        settings.anonymize_key_file)

        json_lines = None
        if settings.json_file == STDOUT:
            if stream is None:  # sys.stdout of a process started with its stdout closed
                raise ConfigError("--output -: standard output is closed; give --output FILE, "
                                  "or --output '' for no JSON lines")
            json_lines = JsonLines(None, stream=stream)
        elif settings.json_file:
            try:
                json_lines = JsonLines(settings.json_file)
            except OSError as e:
                raise ConfigError(f"--output {settings.json_file}: cannot open: "
                                  f"{e.strerror or e}") from None

        syslog = None
        if settings.syslog:
            syslog = Syslog(settings.syslog_facility, settings.syslog_address)
        prometheus = None
        if settings.prometheus_file:
            check_prometheus_path(settings.prometheus_file)
            prometheus = PrometheusFile(settings.prometheus_file, settings.prometheus_interval_s)
        return cls(json_lines, syslog, prometheus, anonymizer)

    def attach(self, pipeline):
        if self.prometheus is not None:
            self.prometheus.syslog = self.syslog
            self.prometheus.attach(pipeline)

    def __call__(self, record):
        if self.prometheus is not None:
            self.prometheus.count(record)
            self.prometheus.maybe_write()
        if self.anonymizer is not None:
            record = self.anonymizer(record)
        if self.json_lines is not None:
            self.json_lines(record)
        if self.syslog is not None:
            self.syslog(record)

    def text_writer(self):
        """Return a callable that writes one record formatted as a JSON line, or None when
        the records must come as dicts: with anonymizing, syslog or Prometheus, which read
        the fields, or with no JSON lines output."""
        if (self.json_lines is None or self.anonymizer is not None or self.syslog is not None
                or self.prometheus is not None):
            return None
        return self.json_lines.text_writer()

    def flush(self):
        if self.json_lines is not None:
            self.json_lines.flush()
        if self.prometheus is not None:
            self.prometheus.maybe_write()

    def reopen(self):
        """Reopen the JSON lines file (on SIGHUP, after log rotation).

        The new file is opened before the old one is closed, so a failure leaves the old
        file open and the run can still end cleanly.

        Raises:
            EdgeEtcError: the file cannot be opened, e.g. because the user the run switched
                to cannot create files in its directory. The run stops rather than write to
                a rotated file that may be compressed or deleted next.
        """
        if self.json_lines is None or self.json_lines.path is None:
            return
        path = self.json_lines.path
        try:
            new = open(path, "a", encoding="utf-8")
        except OSError as e:
            raise EdgeEtcError(f"--output {path}: cannot reopen after SIGHUP: "
                               f"{e.strerror or e}") from None
        old, self.json_lines.f = self.json_lines.f, new
        old.close()
        log.info("reopened output file %s", path)

    def close(self):
        """Write the last Prometheus file and close every output."""
        if self.prometheus is not None and self.prometheus.pipeline is not None:
            self.prometheus.write()
        if self.syslog is not None:
            self.syslog.close()
        if self.json_lines is not None:
            self.json_lines.close()


def drop_privileges(user):
    """Switch the process to `user` and that user's groups, for good.

    Call it after the capture and the output files are open and the model is loaded: the
    open handles stay usable, but a module imported later must be readable by `user`.
    Switching needs root. Without root, it succeeds only when the process already runs as
    `user`, so a service started as that user (e.g. by systemd with CAP_NET_RAW) can keep
    the setting.

    Raises:
        ConfigError: no such user.
        EdgeEtcError: the process is not root, or a system call failed.
    """
    import pwd

    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        raise ConfigError(f"--user {user}: no such user") from None
    if os.geteuid() != 0:
        if os.geteuid() == entry.pw_uid:
            return
        raise EdgeEtcError(f"--user {user}: switching users needs root (running as uid "
                           f"{os.geteuid()}); start as root, or run as {user} with the "
                           "CAP_NET_RAW capability and without --user")
    try:
        os.setgroups(os.getgrouplist(user, entry.pw_gid))
        os.setgid(entry.pw_gid)
        os.setuid(entry.pw_uid)
    except OSError as e:
        raise EdgeEtcError(f"--user {user}: cannot switch to the user: {e.strerror or e}") from None
    if entry.pw_uid != 0:
        try:
            os.setuid(0)
        except PermissionError:
            pass
        else:
            raise EdgeEtcError(f"--user {user}: root rights could be regained after the switch")
    log.info("switched to user %s (uid %d, gid %d)", user, entry.pw_uid, entry.pw_gid)
