"""Console entry of `edge-etc`: stop cleanly on SIGINT or SIGTERM at any time.

`edge-etc run` installs its own handlers (`edge_etc.cli.Control`) once its input is open,
so that it can write what it has classified before it exits. Before that, and in the
other commands, Python's default turned Ctrl-C into a KeyboardInterrupt traceback while
modules were still importing, and into click's "Aborted!" with exit code 1 a moment
later. The handlers below, set before anything else is imported, end the process with one
line and the documented exit code instead: 128 + the signal number.

SIGUSR1 (log the summary) and SIGHUP (reopen the output) would end `edge-etc run` with
their default action until the run's handlers exist. For `run`, this module keeps them in
`early_requests` instead, and the run acts on them when its own handlers exist, before
the first packet.

NOTE: a signal during Python's own start-up, before this module runs (site imports, about
25 ms with an editable install), still ends with a KeyboardInterrupt traceback.
"""

import os
import signal
import sys


def _stop(signum, _frame):
    """Write one line naming the signal and end the process with 128 + its number."""
    name = signal.Signals(signum).name
    sys.stderr.write(f"edge-etc: stopped by {name}\n")
    sys.stderr.flush()
    # os._exit: a SystemExit raised here could be caught by whatever code was running.
    os._exit(128 + signum)


# SIGUSR1 and SIGHUP received by `edge-etc run` before edge_etc.cli.Control took them over.
early_requests = []


def _keep_request(signum, _frame):
    early_requests.append(signum)


def main():
    for signum in (signal.SIGINT, signal.SIGTERM):
        # A signal the parent set to be ignored (SIGINT for a background job of a
        # non-interactive shell) stays ignored.
        if signal.getsignal(signum) is not signal.SIG_IGN:
            signal.signal(signum, _stop)
    # Only `run` has handlers for these; other commands keep the default action, so a
    # hangup still ends a training run in a closed terminal.
    if sys.argv[1:2] == ["run"] and hasattr(signal, "SIGUSR1"):
        for signum in (signal.SIGUSR1, signal.SIGHUP):
            if signal.getsignal(signum) is not signal.SIG_IGN:
                signal.signal(signum, _keep_request)
    from .cli import main as cli_main

    cli_main()
