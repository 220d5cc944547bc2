"""Exception tree and exit codes shared by the device side and the training side.

Every error that reaches the command line carries a one-line message that names the input
and the problem. The CLI prints that line and exits with the code of the error class.
"""


class ExitCode:
    """Documented process exit codes of the `edge-etc` command."""

    OK = 0
    RUNTIME = 1  # a failure while running: interpreter, capture device, conversion
    BAD_INPUT = 2  # usage errors, unreadable or invalid files, invalid settings
    INCOMPLETE = 3  # --strict only: a capture file stopped early (cut short or a corrupt record)
    # A capture file run stopped by signal N exits with 128 + N, as shells report a process
    # killed by N: 130 for SIGINT, 143 for SIGTERM. A live run ends on a signal with OK.
    SIGNAL_BASE = 128


class EdgeEtcError(Exception):
    """Base class. `exit_code` is the code the CLI exits with."""

    exit_code = ExitCode.RUNTIME


class ConfigError(EdgeEtcError):
    """An invalid option, configuration key or preprocessing setting."""

    exit_code = ExitCode.BAD_INPUT


class CaptureFileError(EdgeEtcError):
    """A capture file that cannot be read at all (missing, empty, not a capture)."""

    exit_code = ExitCode.BAD_INPUT


class CaptureError(EdgeEtcError):
    """A live capture that cannot be opened or fails while running."""

    exit_code = ExitCode.RUNTIME


class ModelError(EdgeEtcError):
    """A model file that is missing, invalid or lacks the preprocessing settings."""

    exit_code = ExitCode.BAD_INPUT


class InterpreterError(EdgeEtcError):
    """No usable TFLite interpreter, or the interpreter failed."""

    exit_code = ExitCode.RUNTIME


class PacketError(EdgeEtcError):
    """A packet to skip. `reason` is a short stable counter name.

    `malformed` is True for headers that contradict themselves and False for valid traffic
    that is not for the classifier (ARP, ICMP, ESP).
    """

    def __init__(self, reason, malformed=False):
        super().__init__(reason)
        self.reason = reason
        self.malformed = malformed
