"""Server port prior: the class mix of the training flows on each server port, multiplied
into the network's class probabilities.

The network reads the server port through 256 hashed buckets, which ports of other
classes share. A port that no training flow used lands in a bucket trained on other
ports. The prior counts exact ports instead. For a window whose server port p is in the table, the
probability of class c is multiplied by

    factor(p, c) = ((n(p, c) + a * s(c)) / (n(p) + a)) / s(c)

and the row is rescaled to sum 1. n(p, c) is the number of labelled training flows
of class c on port p, n(p) their sum, s(c) the class's share of all labelled training
flows, and a the smoothing (in flows). The factor is the port's class mix, pulled towards
the overall mix by a flows, relative to the overall mix. A port not in the table leaves
the probabilities unchanged.

The port is read from the window itself, in the first packet's context bytes (see
edge_etc.preprocess), so the trainer and the runner apply the prior to the same windows
in the same way. The model metadata carries the table as

    "port_prior": {"smoothing": 1.0, "class_flows": [n(c) per label],
                   "ports": {"443": [n(443, c) per label], ...}}
"""

import numpy as np

from .errors import ModelError
# Offset of the server port's high byte within the context bytes (edge_etc.preprocess).
PORT_OFFSET = 5
SMOOTHING = 1.0
MAX_PORT = 65535
# Smoothing accepted in model metadata, in flows. Far below the minimum, float32 factors
# of classes absent on a port round to 0.
MIN_SMOOTHING = 0.001
MAX_SMOOTHING = 1e6


class PortPrior:
    """Per-port class factors, from flow counts (see the module docstring).

    Args:
        class_flows: labelled training flows per class, one count per label.
        port_flows: {server port: flows per class on that port}.
        smoothing: a, in flows.
    """

    def __init__(self, class_flows, port_flows, smoothing=SMOOTHING):
        self.class_flows = np.asarray(class_flows, dtype=np.float64)
        self.smoothing = float(smoothing)
        self.ports = np.array(sorted(int(p) for p in port_flows), dtype=np.int64)
        # One row of counts per port, in the order of `ports`: one array instead of one
        # per port keeps the runner's start-up memory down.
        self.port_counts = np.array([port_flows[p] for p in self.ports.tolist()],
                                    dtype=np.float64).reshape(len(self.ports), len(self.class_flows))
        share = self.class_flows / self.class_flows.sum()
        mix = ((self.port_counts + self.smoothing * share)
               / (self.port_counts.sum(axis=1, keepdims=True) + self.smoothing))
        factors = np.ones_like(mix)
        # A class without training flows has no share to compare with, so its factor stays 1.
        present = share > 0
        factors[:, present] = mix[:, present] / share[present]
        self.factors = factors.astype(np.float32)

    @classmethod
    def count(cls, labels, ports, n_classes, smoothing=SMOOTHING):
        """Return the prior of flows with class indices `labels` and server `ports`."""
        labels = np.asarray(labels, dtype=np.int64)
        ports = np.asarray(ports, dtype=np.int64)
        class_flows = np.bincount(labels, minlength=n_classes)
        port_flows = {}
        for port in np.unique(ports):
            port_flows[int(port)] = np.bincount(labels[ports == port], minlength=n_classes)
        return cls(class_flows, port_flows, smoothing)

    def to_dict(self):
        """Return the metadata form (see the module docstring)."""
        return {"smoothing": self.smoothing,
                "class_flows": [int(n) for n in self.class_flows],
                "ports": {str(p): [int(n) for n in row]
                          for p, row in zip(self.ports.tolist(), self.port_counts)}}

    @classmethod
    def from_dict(cls, doc, n_labels, source):
        """Return the prior stored in model metadata, or raise ModelError naming `source`."""
        def invalid(what):
            return ModelError(f"{source}: invalid port_prior in the model metadata: {what}")

        if not isinstance(doc, dict):
            raise invalid("expected an object with smoothing, class_flows and ports")
        smoothing = doc.get("smoothing")
        if (isinstance(smoothing, bool) or not isinstance(smoothing, (int, float))
                or not MIN_SMOOTHING <= smoothing <= MAX_SMOOTHING):
            raise invalid(f"smoothing={smoothing!r}, expected a number from {MIN_SMOOTHING} "
                          f"to {MAX_SMOOTHING:.0f}")
        class_flows = doc.get("class_flows")
        if not _is_counts(class_flows, n_labels):
            raise invalid(f"class_flows must be a list of {n_labels} whole numbers from 0 to 2**53")
        if sum(class_flows) == 0:
            raise invalid("class_flows are all 0")
        ports = doc.get("ports")
        if not isinstance(ports, dict):
            raise invalid("ports must map port numbers to flow counts")
        port_flows = {}
        on_ports = np.zeros(n_labels, dtype=np.float64)
        for key, counts in ports.items():
            # Plain ASCII digits without leading zeros, so no two keys name the same port.
            if not (isinstance(key, str) and key.isascii() and key.isdigit() and len(key) <= 5
                    and (key == "0" or key[0] != "0") and int(key) <= MAX_PORT):
                shown = repr(key) if len(repr(key)) <= 20 else repr(key)[:20] + "..."
                raise invalid(f"port {shown} is not a number from 0 to {MAX_PORT}")
            if not _is_counts(counts, n_labels):
                raise invalid(f"port {key} must have a list of {n_labels} whole numbers from 0 to 2**53")
            port_flows[int(key)] = counts
            on_ports += counts
        # Every counted flow is on one port, so no class has more flows on ports than in all.
        over = np.flatnonzero(on_ports > np.asarray(class_flows, dtype=np.float64))
        if len(over):
            raise invalid(f"the ports have more flows of class {over[0]} than class_flows gives")
        return cls(class_flows, port_flows, smoothing)

    def apply(self, probabilities, ports):
        """Return `probabilities` (rows of class probabilities) with each row whose server
        port in `ports` is in the table multiplied by that port's factors and rescaled to
        sum 1, as float32. Other rows keep their values, and so the sum the model gave them
        (int8 outputs sum to 1 only up to rounding). When no row's port is in the table,
        the result is `probabilities` itself."""
        if not len(self.ports):
            return probabilities
        row = np.searchsorted(self.ports, ports)
        row = np.minimum(row, len(self.ports) - 1)
        known = self.ports[row] == ports
        if not known.any():
            return probabilities
        out = probabilities.astype(np.float32, copy=True)
        scaled = out[known] * self.factors[row[known]]
        total = scaled.sum(axis=1, keepdims=True)
        # A row whose every probability was 0 (int8 rounding) stays as it was.
        np.divide(scaled, total, out=scaled, where=total > 0)
        out[known] = np.where(total > 0, scaled, out[known])
        return out


def _is_counts(values, n):
    return (isinstance(values, list) and len(values) == n and
            all(type(v) is int and 0 <= v < 2 ** 53 for v in values))


def window_server_ports(windows, settings):
    """Return the server port of each window, read from its first packet's context bytes.

    Args:
        windows: uint8 windows, shape (n, packets, vector_bytes) or (n, packets * vector_bytes).
        settings: the `Preprocessing` the windows were built with; it must have context
            bytes and the server port visible.
    """
    flat = windows.reshape(len(windows), -1)
    offset = settings.header_bytes + PORT_OFFSET
    return flat[:, offset].astype(np.int64) * 256 + flat[:, offset + 1]


def check_settings(settings, source):
    """Raise ModelError unless windows of `settings` carry the server port for the prior."""
    if not (settings.context and settings.server_port):
        raise ModelError(f"{source}: the model has a port_prior, but its preprocessing settings "
                         "leave the server port out of the windows (context and server_port must "
                         "be true)")

