"""The `edge-etc` command.

Exit codes: 0 success; 1 runtime failure (interpreter, capture device, conversion, a
missing optional dependency); 2 invalid input (usage, unreadable or invalid capture or
model file, invalid settings); 3 with `--strict`, a capture file that ended inside a record.

Imports stay inside the command bodies: `edge-etc --help` and `edge-etc run` never import
TensorFlow, and `--help` does not even import numpy.
"""

import logging
import os
import signal
import sys

import click

from .errors import EdgeEtcError, ExitCode

log = logging.getLogger("edge_etc")

TRAIN_EXTRA_HINT = "pip install 'edge-etc[train]'"


def setup_logging(verbose, quiet, default=logging.INFO):
    level = default - 10 * verbose + 10 * quiet
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("edge-etc: %(levelname)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(max(logging.DEBUG, min(level, logging.CRITICAL)))


def fail(message, code):
    """Print one error line on stderr and exit with `code`."""
    click.echo(f"edge-etc: error: {message}", err=True)
    sys.exit(code)


def _verbosity(f):
    f = click.option("-v", "--verbose", count=True, help="More log output (repeatable).")(f)
    f = click.option("-q", "--quiet", count=True, help="Less log output (repeatable).")(f)
    return f


@click.group(context_settings={"help_option_names": ["-h", "--help"],
                               "auto_envvar_prefix": "EDGE_ETC"})
@click.version_option(package_name="edge-etc")
def main():
    """Classify encrypted network traffic on the device that carries it.

    A CNN-LSTM reads any three consecutive packets of a TCP or UDP flow and names the
    flow's traffic class. `run` classifies a capture file or a live interface with an int8
    TFLite model; `train`, `evaluate` and `convert` (training extra) build such models.
    """


class Control:
    """Signal state of a run: SIGINT/SIGTERM stop it, SIGUSR1 logs the summary and SIGHUP
    reopens the output file. Handlers only set flags; `tick` acts on them."""

    def __init__(self, on_summary, on_reopen):
        self.stop = False
        self.signal_name = None
        self._summary = False
        self._reopen = False
        self._on_summary = on_summary
        self._on_reopen = on_reopen
        signal.signal(signal.SIGINT, self._stop)
        signal.signal(signal.SIGTERM, self._stop)
        if hasattr(signal, "SIGUSR1"):
            signal.signal(signal.SIGUSR1, self._flag_summary)
            signal.signal(signal.SIGHUP, self._flag_reopen)

    def _stop(self, signum, _frame):
        self.stop = True
        self.signal_name = signal.Signals(signum).name

    def _flag_summary(self, _signum, _frame):
        self._summary = True

    def _flag_reopen(self, _signum, _frame):
        self._reopen = True

    def tick(self):
        if self._summary:
            self._summary = False
            self._on_summary()
        if self._reopen:
            self._reopen = False
            self._on_reopen()


@main.command()
@click.option("--pcap", "pcap_file", metavar="FILE",
              help="Classify a capture file (pcap or pcapng, optionally gzip/bzip2/xz).")
@click.option("--iface", metavar="IFACE", help="Classify live traffic on a network interface ('any' for all).")
@click.option("--filter", "bpf", metavar="BPF", help="BPF filter for live capture, e.g. 'tcp or udp'.")
@click.option("--model", "model_path", metavar="FILE",
              help="int8 .tflite model written by 'edge-etc convert' [default: the bundled model].")
@click.option("--backend", type=click.Choice(["auto", "litert", "tflite-runtime"]), default="auto",
              show_default=True, help="TFLite interpreter package to use.")
@click.option("-o", "--output", metavar="FILE",
              help="Append JSON lines to FILE instead of stdout; SIGHUP reopens it.")
@click.option("--max-flows", type=click.IntRange(1, 10_000_000), default=65536, show_default=True,
              help="Flow table capacity; the least recently used flow is evicted when full.")
@click.option("--idle-timeout", type=click.FloatRange(0.001), default=120.0, show_default=True,
              help="Seconds without a packet after which a flow expires.")
@click.option("--max-windows", type=click.IntRange(1, 1000), default=5, show_default=True,
              help="Windows per flow whose probabilities are averaged into the decision.")
@click.option("--batch-size", type=click.IntRange(1, 4096), default=64, show_default=True,
              help="Windows per interpreter call.")
@click.option("--snaplen", type=click.IntRange(64, 262144), default=65535, show_default=True,
              help="Live capture snapshot length in bytes.")
@click.option("--promisc", is_flag=True, help="Put the interface into promiscuous mode.")
@click.option("--strict", is_flag=True, help="Exit with code 3 when a capture file ends inside a record.")
@_verbosity
def run(pcap_file, iface, bpf, model_path, backend, output, max_flows, idle_timeout,
        max_windows, batch_size, snaplen, promisc, strict, verbose, quiet):
    """Classify the flows of a capture file or a live interface.

    Writes one JSON object per line for each flow when it is first classified, and again
    when a later window changes its label. Logs and the summary go to stderr.
    """
    setup_logging(verbose, quiet)
    if bool(pcap_file) == bool(iface):
        raise click.UsageError("give exactly one of --pcap FILE or --iface IFACE")
    try:
        code = _run(pcap_file, iface, bpf, model_path, backend, output, max_flows, idle_timeout,
                    max_windows, batch_size, snaplen, promisc, strict)
    except EdgeEtcError as e:
        fail(str(e), e.exit_code)
    sys.exit(code)


def _run(pcap_file, iface, bpf, model_path, backend, output, max_flows, idle_timeout,
         max_windows, batch_size, snaplen, promisc, strict):
    from .capfile import CaptureFile
    from .decode import SUPPORTED_LINKTYPES
    from .errors import CaptureFileError
    from .infer import Classifier
    from .model import default_model_path, load_model_info
    from .runner import JsonLines, Pipeline, run_file

    # Open the input first: a bad file name is the most common mistake and needs no model.
    capture = handle = None
    if pcap_file:
        capture = CaptureFile(pcap_file)
        unknown = [lt for lt in capture.linktypes if lt not in SUPPORTED_LINKTYPES]
        if unknown and len(unknown) == len(capture.linktypes):
            capture.close()
            raise CaptureFileError(f"{pcap_file}: link type {unknown[0]} is not supported "
                                   f"(supported: {', '.join(str(k) for k in sorted(SUPPORTED_LINKTYPES))})")
    else:
        from .capture import open_live
        handle = open_live(iface, bpf, snaplen=snaplen, promisc=promisc)

    model = load_model_info(model_path or default_model_path())
    pre = model.preprocessing
    log.info("model %s: labels %s; vectors of %d bytes, windows of %d %s packets",
             model.path, ",".join(model.labels), pre.vector_bytes, pre.window_packets,
             "payload-carrying" if pre.window_rule == "payload" else "")
    classifier = Classifier(model, batch_size=batch_size, backend=backend)
    # 14 bytes: the smallest common link header (Ethernet) before the IP header.
    if capture is not None and capture.snaplen and capture.snaplen - 14 < pre.vector_bytes:
        log.warning("%s: snapshot length %d leaves less than the model's %d bytes per packet "
                    "after the link header; vectors are zero-padded after the captured bytes",
                    pcap_file, capture.snaplen, pre.vector_bytes)

    sink = JsonLines(output, stream=sys.stdout)
    pipeline = Pipeline(classifier, sink, max_flows=max_flows, idle_timeout_s=idle_timeout,
                        max_windows=max_windows, batch_size=batch_size)
    control = Control(pipeline.log_summary, sink.reopen)
    try:
        if capture is not None:
            with capture:
                run_file(pipeline, capture, control)
        else:
            from .capture import run_live
            run_live(handle, pipeline, control, sink.flush)
        if control.stop:
            log.info("stopping on %s", control.signal_name)
        pipeline.finish()
    except BrokenPipeError:
        # The reader of stdout went away (e.g. `| head`): stop quietly.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return ExitCode.OK
    finally:
        try:
            sink.close()
        except BrokenPipeError:
            pass
    pipeline.log_summary()
    if capture is not None and capture.stopped and strict:
        return ExitCode.INCOMPLETE
    return ExitCode.OK


def _training_module(name):
    """Import a training-side module, or exit with the install command for the extra."""
    import importlib
    try:
        return importlib.import_module(f"edge_etc.convert.{name}")
    except ImportError as e:
        missing = getattr(e, "name", None) or str(e)
        fail(f"this command needs the training extra ({missing} is not installed); "
             f"install it with: {TRAIN_EXTRA_HINT}", ExitCode.RUNTIME)


@main.command()
@click.argument("keras_model", metavar="MODEL.h5")
@click.option("-o", "--output", metavar="FILE", help="Output .tflite [default: MODEL.tflite].")
@click.option("--corpus", metavar="DIR", default=None,
              help="Captures with FLOWS.tsv for calibration and parity [default: ../shared/corpus "
                   "or $EDGE_ETC_CORPUS].")
@click.option("--force", is_flag=True, help="Write the model even when int8/float agreement is under 0.95.")
@click.option("--seed", type=int, default=0, show_default=True, help="Random seed.")
@_verbosity
def convert(keras_model, output, corpus, force, seed, verbose, quiet):
    """Convert a Keras CNN-LSTM to a full-integer int8 TFLite model with a parity report."""
    setup_logging(verbose, quiet)
    mod = _training_module("tflite")
    try:
        mod.convert_command(keras_model, output, corpus, force, seed)
    except EdgeEtcError as e:
        fail(str(e), e.exit_code)


@main.command()
@click.option("--corpus", metavar="DIR", default=None,
              help="Captures with FLOWS.tsv [default: ../shared/corpus or $EDGE_ETC_CORPUS].")
@click.option("-o", "--output", metavar="DIR", default="model", show_default=True,
              help="Folder for model.h5, labels and settings.")
@click.option("--epochs", type=click.IntRange(1, 1000), default=30, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True, help="Random seed.")
@click.option("--vector-bytes", type=click.IntRange(40, 4096), default=None,
              help="Bytes per packet vector [default: the preprocessing default].")
@click.option("--window-rule", type=click.Choice(["payload", "all"]), default=None,
              help="Which packets form windows [default: payload].")
@click.option("--no-server-port", is_flag=True, help="Mask the server port too.")
@click.option("--limit-captures", type=click.IntRange(1), default=None,
              help="Use only the first N captures (for quick tests).")
@_verbosity
def train(corpus, output, epochs, seed, vector_bytes, window_rule, no_server_port,
          limit_captures, verbose, quiet):
    """Train the CNN-LSTM on labelled captures, holding out captures for evaluation."""
    setup_logging(verbose, quiet)
    mod = _training_module("train")
    try:
        mod.train_command(corpus, output, epochs, seed, vector_bytes, window_rule,
                          no_server_port, limit_captures)
    except EdgeEtcError as e:
        fail(str(e), e.exit_code)


@main.command()
@click.argument("model_path", metavar="MODEL.tflite", required=False)
def info(model_path):
    """Show a model's labels, preprocessing settings and operators."""
    import json

    from .model import default_model_path, load_model_info
    try:
        m = load_model_info(model_path or default_model_path())
    except EdgeEtcError as e:
        fail(str(e), e.exit_code)
    click.echo(json.dumps({"path": m.path, "bytes": len(m.data), "labels": m.labels,
                           "preprocessing": m.preprocessing.to_dict(),
                           "unknown_threshold": m.unknown_threshold, "operators": m.operators,
                           "info": m.info}, indent=2))


if __name__ == "__main__":
    main()
