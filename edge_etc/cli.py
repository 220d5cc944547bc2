"""The `edge-etc` command.

Exit codes: 0 success; 1 runtime failure (interpreter, capture device, conversion, a
missing optional dependency); 2 invalid input (usage, unreadable or invalid capture or
model file, invalid settings); 3 with `--strict`, a capture file that stopped early (cut
inside a record, or a corrupt or oversized record); 128 + N when signal N stopped a
capture file run, the start-up of a run or another command (130 SIGINT, 143 SIGTERM;
see edge_etc._entry). A live run stopped by a signal exits 0.

Imports stay inside the command bodies: `edge-etc --help` and `edge-etc run` never import
TensorFlow, and `--help` does not even import numpy.
"""

import os

# One BLAS thread, set before anything imports numpy: the numpy backend's matrix products
# are small, and OpenBLAS threads competing for a router's few cores made it several times
# slower (measured on a loaded 2-core machine: 17,158 against 2,590 windows/s).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import logging
import signal
import sys

import click

from . import config
from .errors import EdgeEtcError, ExitCode

log = logging.getLogger("edge_etc")

TRAIN_EXTRA_HINT = "pip install 'edge-etc[train]' (from a source checkout: pip install '.[train]')"


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
    f = click.option("-q", "--quiet", count=True, help="Less log output (repeatable): -q keeps warnings and errors, "
                     "so no summary line; -qq errors only.")(f)
    return f


# Raised by click 8.2 and later when a group is called without a command.
_NO_ARGS_IS_HELP = getattr(click.exceptions, "NoArgsIsHelpError", ())


class _OneLineErrors(click.Group):
    """Command group that reports click's usage errors in one line, like every other
    edge-etc error. Click itself prints a usage block for an unknown option or a bad value."""

    def main(self, *args, **kwargs):
        kwargs["standalone_mode"] = False
        try:
            result = super().main(*args, **kwargs)
        except _NO_ARGS_IS_HELP as e:  # `edge-etc` without a command prints the help
            e.show()
            sys.exit(e.exit_code)
        except click.UsageError as e:
            command = e.ctx.command_path if e.ctx else "edge-etc"
            message = e.format_message().rstrip()
            if not message.endswith((".", "?", "!")):
                message += "."
            fail(f"{message} Run '{command} --help' for the options.", e.exit_code)
        except click.ClickException as e:
            fail(e.format_message(), e.exit_code)
        except click.Abort:
            fail("aborted", 1)
        # Without standalone mode, click returns the code of --help and --version.
        sys.exit(result if isinstance(result, int) else 0)


@click.group(cls=_OneLineErrors, context_settings={"help_option_names": ["-h", "--help"],
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
    reopens the output file. Handlers only set flags; `tick` acts on them. Requests that
    arrived during start-up (`edge_etc._entry.early_requests`) are acted on at once."""

    def __init__(self, on_summary, on_reopen):
        self.stop = False
        self.signal_number = None
        self.signal_name = None
        self._summary = False
        self._reopen = False
        self._on_summary = on_summary
        self._on_reopen = on_reopen
        for signum in (signal.SIGINT, signal.SIGTERM):
            # A signal ignored by the parent (SIGINT in a background job of a
            # non-interactive shell) stays ignored, as in edge_etc._entry.
            if signal.getsignal(signum) is not signal.SIG_IGN:
                signal.signal(signum, self._stop)
        if hasattr(signal, "SIGUSR1"):
            signal.signal(signal.SIGUSR1, self._flag_summary)
            signal.signal(signal.SIGHUP, self._flag_reopen)
            from ._entry import early_requests

            for signum in early_requests:
                self._summary |= signum == signal.SIGUSR1
                self._reopen |= signum == signal.SIGHUP
            early_requests.clear()
            self.tick()

    def _stop(self, signum, _frame):
        self.stop = True
        self.signal_number = signum
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
@click.option("--config", "config_file", metavar="FILE",
              envvar=config.env_vars("--config", "config_file"),
              help="TOML settings file ('edge-etc config --defaults' prints one); options "
                   "given on the command line override it.")
@click.option("--pcap", "pcap_file", metavar="FILE", envvar=config.env_vars("--pcap", "pcap_file"),
              help="Classify a capture file (pcap or pcapng, optionally gzip/bzip2/xz); '-' "
                   "reads standard input.")
@config.run_option("capture.interface")
@config.run_option("capture.filter")
@config.run_option("model.path")
@config.run_option("model.backend")
@config.run_option("output.json_file")
@config.run_option("flows.max_flows")
@config.run_option("flows.idle_timeout_s")
@config.run_option("flows.max_windows")
@config.run_option("model.batch_size")
@config.run_option("capture.snaplen")
@config.run_option("capture.promisc")
@config.run_option("capture.buffer_mib")
@config.run_option("output.syslog")
@config.run_option("output.syslog_facility")
@config.run_option("output.syslog_address")
@config.run_option("output.prometheus_file")
@config.run_option("output.prometheus_interval_s")
@config.run_option("output.anonymize")
@config.run_option("output.anonymize_key_file")
@config.run_option("service.log_level")
@config.run_option("service.user")
@click.option("--strict", is_flag=True,
              help="Exit with code 3 when a capture file stops early: it ends inside a record, "
                   "or a record is corrupt or longer than 262144 bytes.")
@_verbosity
@click.pass_context
def run(ctx, config_file, pcap_file, strict, verbose, quiet, **options):
    """Classify the flows of a capture file or a live interface.

    Writes one JSON object per line for each flow when it is first classified, and again
    when a later window changes its label. Logs and the summary go to stderr.
    """
    given_options = config.options_given(ctx)
    try:
        settings = config.from_options(config_file, options, given_options)
    except EdgeEtcError as e:
        fail(str(e), e.exit_code)
    setup_logging(verbose, quiet, default=logging.getLevelName(settings.service.log_level.upper()))
    if pcap_file and "iface" in given_options and options["iface"]:
        # As for every option, the command line wins over the environment: a source given
        # there replaces the other source set in a variable. Two sources at one level
        # are an error.
        from click.core import ParameterSource
        pcap_source = ctx.get_parameter_source("pcap_file")
        iface_source = ctx.get_parameter_source("iface")
        if pcap_source == iface_source:
            if pcap_source == ParameterSource.ENVIRONMENT:
                raise click.UsageError(f"set only one of {config.env_var('--pcap')} and "
                                       f"{config.env_var('--iface')}")
            raise click.UsageError("give exactly one of --pcap FILE or --iface IFACE")
        if pcap_source != ParameterSource.COMMANDLINE:
            pcap_file = None
    # --pcap replaces the live interface of a --config file or variable; an empty --iface
    # means none.
    iface = None if pcap_file else settings.capture.interface
    if not pcap_file and not iface:
        raise click.UsageError("give --pcap FILE or --iface IFACE, or set capture.interface "
                               "in the --config file")
    try:
        code = _run(pcap_file, iface, settings, strict)
    except EdgeEtcError as e:
        fail(str(e), e.exit_code)
    sys.exit(code)


def _run(pcap_file, iface, settings, strict):
    from . import fastpath
    from .capfile import CaptureFile
    from .decode import SUPPORTED_LINKTYPES
    from .errors import CaptureFileError
    from .infer import Classifier
    from .model import default_model_path, load_model_info
    from .outputs import Outputs, drop_privileges
    from . import engine  # noqa: F401 (imported by make_pipeline, here before --user)
    from .runner import make_pipeline, run_file  # noqa: F401 (for _classify, before --user)

    # Open the input first: a bad file name is the most common mistake and needs no model.
    capture = handle = keep = None
    if pcap_file:
        if settings.capture.filter:
            from .capture import FileFilter
            keep = FileFilter(settings.capture.filter)
        capture = CaptureFile(pcap_file)
        unknown = [lt for lt in capture.linktypes if lt not in SUPPORTED_LINKTYPES]
        if unknown and len(unknown) == len(capture.linktypes):
            capture.close()
            raise CaptureFileError(f"{pcap_file}: link type {unknown[0]} is not supported "
                                   f"(supported: {', '.join(str(k) for k in sorted(SUPPORTED_LINKTYPES))})")
    else:
        from .capture import open_live
        handle = open_live(iface, settings.capture.filter, snaplen=settings.capture.snaplen,
                           promisc=settings.capture.promisc,
                           buffer_bytes=settings.capture.buffer_mib * 1024 * 1024)

    # Open every output, read the model and create the interpreter while still privileged:
    # after the switch to --user, files and modules that user cannot read would fail. The
    # switch comes before the first packet is parsed.
    outputs = Outputs.open(settings.output, stream=sys.stdout)
    model = load_model_info(settings.model.path or default_model_path())
    pre = model.preprocessing
    log.info("model %s: labels %s; vectors of %d bytes, windows of %d %s packets",
             model.path, ",".join(model.labels), pre.vector_bytes, pre.window_packets,
             "payload-carrying" if pre.window_rule == "payload" else "")
    log.info("packet path: %s", fastpath.describe())
    classifier = Classifier(model, batch_size=settings.model.batch_size,
                            backend=settings.model.backend)
    if settings.service.user:
        drop_privileges(settings.service.user)
    try:
        return _classify(pcap_file, capture, handle, keep, settings, strict, model, classifier,
                         outputs)
    except ImportError as e:
        # Every module the run needs is imported above; this names a missed lazy import.
        user = settings.service.user
        hint = f"; the Python installation must be readable by user {user}" if user else ""
        raise EdgeEtcError(f"cannot import {e.name or e} while running{hint}") from None


def _classify(pcap_file, capture, handle, keep, settings, strict, model, classifier, outputs):
    from .runner import make_pipeline, run_file

    pre = model.preprocessing
    # 14 bytes: the smallest common link header (Ethernet) before the IP header. The model
    # reads header_bytes from the IP header on; the rest of a vector is flow context.
    snaplen = capture.snaplen if capture is not None else settings.capture.snaplen
    source = pcap_file if capture is not None else f"--iface {settings.capture.interface}"
    if snaplen and snaplen - 14 < pre.header_bytes:
        log.warning("%s: snapshot length %d leaves less than the model's %d bytes per packet "
                    "after the link header; vectors are zero-padded after the captured bytes",
                    source, snaplen, pre.header_bytes)

    flows = settings.flows
    pipeline = make_pipeline(classifier, outputs, max_flows=flows.max_flows,
                             idle_timeout_s=flows.idle_timeout_s, max_windows=flows.max_windows,
                             batch_size=settings.model.batch_size)
    outputs.attach(pipeline)
    control = Control(pipeline.log_summary, outputs.reopen)

    def on_wait():
        # Runs every 0.2 s while a pipe is read. It writes out what is decided, as a live
        # run does.
        pipeline.infer()
        outputs.flush()
        control.tick()
        return control.stop

    try:
        if capture is not None:
            capture.on_wait = on_wait
            with capture:
                run_file(pipeline, capture, control, keep)
        else:
            from .capture import run_live  # imported by open_live above
            run_live(handle, pipeline, control, outputs.flush)
        if control.stop:
            log.info("stopping on %s", control.signal_name)
        pipeline.finish()
        outputs.flush()  # here, so a full disk is reported as an error
    except BrokenPipeError:
        # The reader of stdout went away (e.g. `| head`): stop quietly.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return ExitCode.OK
    except OSError as e:
        pipeline.log_summary()
        target = settings.output.json_file if settings.output.json_file not in (None, "-") else "stdout"
        raise EdgeEtcError(f"--output {target}: writing failed: {e.strerror or e}") from None
    finally:
        try:
            outputs.close()
        except OSError:
            pass  # already reported, or the reader of stdout is gone
    pipeline.log_summary()
    if capture is not None and control.stop:
        # The records of a file stopped partway are written, but the run is not complete.
        return ExitCode.SIGNAL_BASE + control.signal_number
    if capture is not None and capture.stopped and strict:
        return ExitCode.INCOMPLETE
    return ExitCode.OK


@main.command("config")
@click.option("--defaults", is_flag=True, help="Print every key with its default.")
@click.argument("config_file", metavar="[FILE]", required=False)
def show_config(defaults, config_file):
    """Print the settings of `run` as a commented TOML file.

    With --defaults, print every key with its default; the output is a valid settings
    file. With FILE, check FILE and print the settings that `run --config FILE` would use:
    FILE's, then the EDGE_ETC_RUN_* variables set, defaults filled in.
    """
    if defaults == bool(config_file):
        raise click.UsageError("give either --defaults or a settings FILE")
    if defaults:
        click.echo(config.render(config.DEFAULTS), nl=False)
        return
    # `run`'s own options resolve the variables, so their values and errors are the same.
    try:
        run_ctx = run.make_context("run", [], parent=click.get_current_context().parent)
    except click.ClickException as e:
        # Report it as this command's error, because `run`'s usage lines would mislead.
        fail(e.format_message(), ExitCode.BAD_INPUT)
    # With no arguments, every option `run` reports as given was set by a variable.
    from_variables = (config.options_given(run_ctx)
                      - {"config_file", "pcap_file", "strict", "verbose", "quiet"})
    options = {name: run_ctx.params[name] for name in from_variables}
    try:
        settings = config.from_options(config_file, options, from_variables)
    except EdgeEtcError as e:
        fail(str(e), e.exit_code)
    params = {param.name: param for param in run_ctx.command.params}
    variables = sorted(config.variable_set(params[name]) or name for name in from_variables)
    if variables:
        click.echo(f"# {config_file}, then the variables {', '.join(variables)}")
    click.echo(config.render(settings), nl=False)


def _training_module(name):
    """Import a training-side module, or exit with the install command for the extra."""
    import importlib
    import importlib.util
    # The training modules load TensorFlow with its start-up notes dropped, unless -vv.
    for needed in ("tensorflow", "keras", "sklearn"):
        if importlib.util.find_spec(needed) is None:
            fail(f"this command needs the training extra ({needed} is not installed); "
                 f"install it with: {TRAIN_EXTRA_HINT}", ExitCode.RUNTIME)
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
    # Checked before the import of TensorFlow, which takes seconds.
    if os.path.isdir(keras_model):
        fail(f"{keras_model}: is a directory, not a model file", ExitCode.BAD_INPUT)
    if not os.path.isfile(keras_model):
        fail(f"{keras_model}: model file not found", ExitCode.BAD_INPUT)
    if output and not os.path.isdir(os.path.dirname(os.path.abspath(output))):
        fail(f"--output {output}: directory {os.path.dirname(os.path.abspath(output))} not found",
             ExitCode.BAD_INPUT)
    if corpus and not os.path.isdir(corpus):
        fail(f"--corpus {corpus}: folder not found", ExitCode.BAD_INPUT)
    mod = _training_module("tflite")
    try:
        mod.convert_command(keras_model, output, corpus, force, seed)
    except EdgeEtcError as e:
        fail(str(e), e.exit_code)


def _preprocessing_options(f):
    """Options shared by `train` and `evaluate`: the corpus, the seed and the settings."""
    options = [
        click.option("--corpus", metavar="DIR", default=None,
                     help="Captures with FLOWS.tsv [default: ../shared/corpus or $EDGE_ETC_CORPUS]."),
        click.option("--seed", type=int, default=0, show_default=True, help="Random seed."),
        click.option("--vector-bytes", type=click.IntRange(40, 4096), default=None,
                     help="Bytes per packet vector [default: the preprocessing default]."),
        click.option("--window-rule", type=click.Choice(["payload", "all"]), default=None,
                     help="Which packets form windows [default: payload]."),
        click.option("--no-server-port", is_flag=True, help="Mask the server port too."),
        click.option("--context/--no-context", default=None,
                     help="End each packet vector with flow context bytes (direction, gap, size, "
                          "port, TCP flags) [default: the preprocessing default]."),
        click.option("--port-buckets", type=click.IntRange(0, 4096), default=None,
                     help="One-hot server port buckets after the context bytes (needs --context)."),
        click.option("--port-prior/--no-port-prior", default=True, show_default=True,
                     help="Multiply the class mix of the training flows on each server port "
                          "into the networks' probabilities (needs the server port in the "
                          "context bytes)."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


_weighting_option = click.option(
    "--weighting", type=click.Choice(["capture", "flow"]), default="capture", show_default=True,
    help="Training weights: every capture of a class the same total weight, or every flow.")


def _members_option(default):
    return click.option(
        "--members", type=click.IntRange(1, 16), default=None,
        help="CNN-LSTMs trained one after the other, each with its own seed and validation "
             "captures, and averaged in one model. Each adds one network's inference time "
             f"[default: {default}].")


@main.command()
@_preprocessing_options
@click.option("-o", "--output", metavar="DIR", default="model", show_default=True,
              help="Folder for model.h5, labels and settings.")
@click.option("--epochs", type=click.IntRange(1, 1000), default=None,
              help="Training epochs (a fixed number: no early stopping) [default: 7].")
@_weighting_option
@_members_option(5)
@click.option("--limit-captures", type=click.IntRange(1), default=None,
              help="Use only N captures, spread over the classes (for quick tests).")
@_verbosity
def train(corpus, seed, vector_bytes, window_rule, no_server_port, context, port_buckets,
          port_prior, output, epochs, limit_captures, weighting, members, verbose, quiet):
    """Train the CNN-LSTM on labelled captures, holding out captures for evaluation."""
    setup_logging(verbose, quiet)
    mod = _training_module("train")
    try:
        mod.train_command(corpus, output, epochs, seed, vector_bytes, window_rule,
                          no_server_port, limit_captures, context=context,
                          port_buckets=port_buckets, weighting=weighting, members=members,
                          port_prior=port_prior)
    except EdgeEtcError as e:
        fail(str(e), e.exit_code)


@main.command()
@_preprocessing_options
@click.option("-o", "--output", metavar="DIR", default="evaluation", show_default=True,
              help="Folder for evaluation.json, evaluation.txt, confusion matrices and "
              "probabilities.npz (every test window's class probabilities).")
@click.option("--preset", type=click.Choice(["full", "ci"]), default="full", show_default=True,
              help="full: 5 folds, 7 epochs, 10 training repeats; ci: 2 folds, 2 epochs, 30 "
                   "captures, 2 repeats.")
@click.option("--repeats", type=click.IntRange(1, 100), default=None,
              help="Train and score every network on the same folds this many times with "
                   "different seeds, and report the mean [default: the preset's].")
@click.option("--window-packets", type=click.IntRange(1, 16), default=None,
              help="Packets per window (ablation: 1, 2, 3, 5).")
@click.option("--no-mask-addresses", is_flag=True, help="Ablation: leave IP addresses visible.")
@click.option("--max-windows", type=click.IntRange(1, 1000), default=config.DEFAULTS.flows.max_windows,
              show_default=True,
              help="Windows combined per flow decision (ablation: 5).")
@click.option("--first-only", is_flag=True,
              help="Ablation: train on windows from the first packets of flows only, for "
                   "as many steps as a training on all windows takes.")
@click.option("--baselines/--no-baselines", default=True, show_default=True,
              help="Also score the port, statistics and one-packet baselines.")
@click.option("--int8/--no-int8", default=True, show_default=True, help="Also quantize and score int8 models.")
@_weighting_option
@_members_option(1)
@click.option("--average-size", type=click.IntRange(2, 100), default=None,
              help="Networks per average: every fold also scores averages of the networks of "
                   "this many consecutive repeats (with 3: repeats 0-2, 3-5, ...), each "
                   "converted to int8 as one model, as `train --members` makes them "
                   "[default: 5, the bundled model's members].")
@click.option("--class-weight-power", type=click.FloatRange(0, 1), default=None,
              help="Class balance of the training weights: 1 equal per class, 0 in proportion "
                   "to the class's captures (or flows) [default: 0.5].")
@_verbosity
def evaluate(corpus, seed, vector_bytes, window_rule, no_server_port, context, port_buckets,
             port_prior, output, preset, repeats, window_packets, no_mask_addresses, max_windows, first_only, baselines,
             int8, weighting, members, average_size, class_weight_power, verbose, quiet):
    """Cross-validate the CNN-LSTM by capture file, with baselines and ablations."""
    setup_logging(verbose, quiet)
    mod = _training_module("evaluate")
    try:
        mod.evaluate_command(corpus, output, preset, seed, vector_bytes, window_rule, no_server_port,
                             no_mask_addresses, context, window_packets, max_windows, first_only,
                             baselines, int8, port_buckets=port_buckets,
                             class_power=class_weight_power, weighting=weighting, repeats=repeats,
                             members=members, average_size=average_size, port_prior=port_prior)
    except EdgeEtcError as e:
        fail(str(e), e.exit_code)


@main.command()
@click.argument("model_path", metavar="[MODEL.tflite]", required=False)
def info(model_path):
    """Show a model's labels, preprocessing settings and operators (the bundled model's
    without an argument)."""
    import json

    from .model import default_model_path, load_model_info
    try:
        m = load_model_info(model_path or default_model_path())
    except EdgeEtcError as e:
        fail(str(e), e.exit_code)
    def without_confusion(value):
        if isinstance(value, dict):
            return {k: without_confusion(v) for k, v in value.items() if k != "confusion"}
        return value

    click.echo(json.dumps({"path": m.path, "bytes": len(m.data), "labels": m.labels,
                           "preprocessing": m.preprocessing.to_dict(),
                           "unknown_threshold": m.unknown_threshold, "networks": m.networks,
                           "port_prior": ({"ports": len(m.port_prior.ports),
                                           "smoothing": m.port_prior.smoothing}
                                          if m.port_prior else None),
                           "operators": m.operators,
                           "info": without_confusion(m.info)}, indent=1))


if __name__ == "__main__":
    main()
