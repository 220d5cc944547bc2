"""edge-etc: encrypted traffic classification on routers and single-board computers.

The device side (this package, less `edge_etc.convert`) needs numpy, click, pypcap and a
TFLite interpreter. The training side, `edge_etc.convert`, needs the `train` extra.
"""

__version__ = "0.1.0"
