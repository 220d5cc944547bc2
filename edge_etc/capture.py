"""Live capture with pypcap (libpcap), the only module that imports `pcap`.

The handle is opened in immediate mode, so a quiet link delivers each packet at once
instead of after the kernel buffer's timeout. It is read in non-blocking mode behind
`select`, so a signal stops the loop within one poll interval. A blocking libpcap read
would hold the GIL and ignore Ctrl-C.
"""

import logging
import select
import time

from .errors import CaptureError, ConfigError

log = logging.getLogger(__name__)

POLL_INTERVAL_S = 0.2


def open_live(iface, bpf=None, snaplen=2048, promisc=False, buffer_bytes=0):
    """Open a live capture on `iface` and return the pypcap handle.

    `buffer_bytes` is the kernel capture buffer; 0 keeps libpcap's default (2 MiB on Linux).

    Raises:
        CaptureError: pypcap is missing, the interface does not exist, the process lacks
            CAP_NET_RAW, or the filter does not compile.
    """
    try:
        import pcap
    except ImportError as e:
        raise CaptureError(f"live capture needs pypcap, which failed to import ({e}); "
                           "install it with: pip install pypcap") from None
    try:
        handle = pcap.pcap(name=iface, snaplen=snaplen, promisc=promisc, immediate=True,
                           timeout_ms=int(POLL_INTERVAL_S * 1000), buffer_size=buffer_bytes)
    except OSError as e:
        msg = _libpcap_message(e)
        if "No such device" in msg:
            raise CaptureError(f"{iface}: no such network interface (see `ip link`)") from None
        if "ermission" in msg or "not permitted" in msg:
            msg += " (capturing needs root or the CAP_NET_RAW capability)"
        raise CaptureError(f"{iface}: cannot open for capture: {msg}") from None
    if bpf:
        try:
            handle.setfilter(bpf)
        except OSError as e:
            raise ConfigError(f"{iface}: invalid BPF filter {bpf!r}: {_libpcap_message(e)}") from None
    handle.setnonblock(True)
    return handle


def _libpcap_message(err):
    """Return libpcap's own words from a pypcap error, without pypcap's wrapping."""
    text = str(err)
    for quote in ("b'", 'b"'):
        start = text.find(quote)
        if start >= 0:
            return text[start + 2:].rstrip("'\")").strip()
    return text


_LIBPCAP_NAMES = ("libpcap.so.1", "libpcap.so.0.8", "libpcap.so", "libpcap.dylib")
_PCAP_NETMASK_UNKNOWN = 0xFFFFFFFF


def _compile_error(expression, linktype):
    """Return libpcap's own message for an expression that does not compile, or None.

    pypcap's `bpf` compiles without a handle and reports only "bad filter". A dead handle
    (`pcap_open_dead`) keeps libpcap's message, e.g. "can't parse filter expression: syntax
    error", which is what a live capture reports. libpcap is loaded with ctypes, only on
    this error path; None when it cannot be found.
    """
    import ctypes
    import ctypes.util

    names = [ctypes.util.find_library("pcap"), *_LIBPCAP_NAMES]
    lib = None
    for name in filter(None, names):
        try:
            lib = ctypes.CDLL(name)
            break
        except OSError:
            continue
    if lib is None:
        return None

    class BpfProgram(ctypes.Structure):
        _fields_ = [("bf_len", ctypes.c_uint), ("bf_insns", ctypes.c_void_p)]

    lib.pcap_open_dead.restype = ctypes.c_void_p
    lib.pcap_open_dead.argtypes = [ctypes.c_int, ctypes.c_int]
    lib.pcap_compile.argtypes = [ctypes.c_void_p, ctypes.POINTER(BpfProgram), ctypes.c_char_p,
                                 ctypes.c_int, ctypes.c_uint32]
    lib.pcap_geterr.restype = ctypes.c_char_p
    lib.pcap_geterr.argtypes = [ctypes.c_void_p]
    lib.pcap_freecode.argtypes = [ctypes.POINTER(BpfProgram)]
    lib.pcap_close.argtypes = [ctypes.c_void_p]

    handle = lib.pcap_open_dead(linktype, 65535)
    if not handle:
        return None
    try:
        program = BpfProgram()
        if lib.pcap_compile(handle, ctypes.byref(program), expression.encode(), 1,
                            _PCAP_NETMASK_UNKNOWN) == 0:
            lib.pcap_freecode(ctypes.byref(program))
            return None
        message = lib.pcap_geterr(handle)
        return message.decode(errors="replace") if message else None
    finally:
        lib.pcap_close(handle)


class FileFilter:
    """A BPF filter for capture file records, compiled once per link type with libpcap.

    Returns True for records the filter accepts. Records of a link type the expression
    cannot be compiled for are rejected and counted in `uncompilable`.
    """

    def __init__(self, expression):
        try:
            import pcap
        except ImportError as e:
            raise CaptureError(f"--filter needs pypcap, which failed to import ({e})") from None
        self._pcap = pcap
        self.expression = expression
        self._compiled = {}
        self.uncompilable = 0
        self.check(1)  # a syntax error shows at once, not at the first packet

    def check(self, linktype):
        if linktype not in self._compiled:
            try:
                self._compiled[linktype] = self._pcap.bpf(self.expression.encode(), linktype)
            except OSError as e:
                if linktype == 1:
                    message = _compile_error(self.expression, linktype) or str(e)
                    raise ConfigError(f"invalid BPF filter {self.expression!r}: {message}") from None
                log.warning("BPF filter %r does not compile for link type %d; its records are skipped",
                            self.expression, linktype)
                self._compiled[linktype] = None
        return self._compiled[linktype]

    def __call__(self, linktype, frame):
        compiled = self._compiled.get(linktype) or self.check(linktype)
        if compiled is None:
            self.uncompilable += 1
            return False
        return bool(compiled.filter(frame))


def drops(handle):
    """Return (dropped by the kernel, dropped by the interface) since the capture opened."""
    try:
        _received, dropped, ifdropped = handle.stats()
    except OSError:
        return None
    return dropped, ifdropped


def run_live(handle, pipeline, control, flush):
    """Read packets until `control.stop` is set, classifying as they come.

    Pending windows are classified after every poll that read packets, so a decision
    waits for at most one poll interval, and `flush` writes them out.
    """
    linktype = handle.datalink()
    fd = handle.fileno()
    process = pipeline.process
    log.info("capturing on %s (link type %d)", handle.name, linktype)
    while not control.stop:
        ready, _, _ = select.select([fd], [], [], POLL_INTERVAL_S)
        if ready:
            while True:
                try:
                    packets = handle.readpkts()
                except OSError as e:
                    raise CaptureError(f"{handle.name}: capture failed: {e}") from None
                if not packets:
                    break
                for ts, frame in packets:
                    # pypcap passes only the captured length; the IP header's lengths are trusted.
                    process(ts, linktype, frame, None)
                if control.stop:
                    break
        pipeline.advance(time.time())  # expire idle flows even when the link is quiet
        pipeline.infer()
        flush()
        control.tick()
        pipeline.stats.capture_drops = drops(handle)
    pipeline.stats.capture_drops = drops(handle)
