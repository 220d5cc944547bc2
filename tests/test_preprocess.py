"""The bytes-to-vector step: address invariance, masking, settings round trip, and the
trainer and runner building identical windows."""

import struct

import pytest

from conftest import Scan, case
from edge_etc.capfile import CaptureFile
from edge_etc.decode import Decoder
from edge_etc.errors import ConfigError
from edge_etc.preprocess import Preprocessing, vectorize


def rewrite(frame, src, dst, client_port, client_ip=b"\xc0\x00\x02\x0a"):
    """Return an Ethernet/IPv4 frame with new addresses and a new client port."""
    f = bytearray(frame)
    ihl = (f[14] & 0x0F) * 4
    s, d = bytes(f[26:30]), bytes(f[30:34])
    if s == client_ip:
        f[26:30], f[30:34] = src, dst
        struct.pack_into("!H", f, 14 + ihl, client_port)
    else:
        f[26:30], f[30:34] = dst, src
        struct.pack_into("!H", f, 14 + ihl + 2, client_port)
    return bytes(f)


def vectors_of(frames, settings):
    out = []
    decoder = Decoder()
    for ts, lt, frame, wl in frames:
        pkt = decoder.decode(ts, lt, frame, wl)
        to_server = pkt.dport == 443
        out.append(vectorize(pkt, to_server, settings))
    return out


def flow_frames(path, client_ip):
    decoder = Decoder()
    frames = []
    for ts, lt, frame, wl in CaptureFile(path):
        pkt = decoder.decode(ts, lt, frame, wl)
        if client_ip in (pkt.src, pkt.dst):
            frames.append((ts, lt, frame, wl))
    return frames


@pytest.mark.parametrize("settings", [Preprocessing(), Preprocessing(server_port=False, port_buckets=0),
                                      Preprocessing(mask_capture_fields=False, vector_bytes=784, context=False, port_buckets=0)])
def test_vectors_identical_across_addresses_and_client_port(settings):
    frames = flow_frames(case("eth_tls_2flows.pcap"), b"\xc0\x00\x02\x0a")
    moved = [(ts, lt, rewrite(fr, b"\x0a\x01\x02\x03", b"\x08\x08\x04\x04", 61234), wl)
             for ts, lt, fr, wl in frames]
    assert moved != frames
    assert vectors_of(moved, settings) == vectors_of(frames, settings)


def test_server_port_visible_only_when_set():
    frames = flow_frames(case("eth_tls_2flows.pcap"), b"\xc0\x00\x02\x0a")
    with_port = vectors_of(frames, Preprocessing())
    without = vectors_of(frames, Preprocessing(server_port=False, port_buckets=0))
    assert with_port[0][22:24] == struct.pack("!H", 443)  # client to server: dst port
    assert with_port[0][20:22] == b"\0\0"
    assert without[0][20:24] == bytes(4)


def test_capture_fields_masked():
    frames = flow_frames(case("eth_tls_2flows.pcap"), b"\xc0\x00\x02\x0a")
    for v in vectors_of(frames, Preprocessing()):
        assert v[4:9] == bytes(5)  # identification, fragment field, TTL
        assert v[10:20] == bytes(10)  # checksum, addresses
        assert v[24:32] == bytes(8)  # sequence and acknowledgement numbers
        assert v[34:40] == bytes(6)  # window, checksum, urgent pointer


def test_settings_round_trip_and_rejects():
    pre = Preprocessing(vector_bytes=256, window_rule="all", server_port=False, port_buckets=0)
    assert Preprocessing.from_dict(pre.to_dict()) == pre
    with pytest.raises(ConfigError, match="vector_bytes=10"):
        Preprocessing(vector_bytes=10)
    bad = pre.to_dict()
    bad["colour"] = "red"
    with pytest.raises(ConfigError, match="colour"):
        Preprocessing.from_dict(bad)


@pytest.mark.parametrize("name", ["tcp_zero_payload_and_keepalive.pcap", "eth_tls_2flows.pcap",
                                  "pcapng_two_linktypes.pcapng", "ipv4_fragments_udp443.pcap"])
def test_trainer_and_runner_windows_identical(name):
    """The dataset builder and the runner's pipeline feed the model the same windows."""
    from edge_etc.convert import dataset
    from edge_etc.infer import Classifier
    from edge_etc.model import default_model_path, load_model_info
    from edge_etc.runner import Pipeline

    model = load_model_info(default_model_path())
    trainer, _ = dataset.capture_windows(case(name), model.preprocessing)
    trainer_windows = {(f.client, f.client_port): w for f, w in trainer}

    classifier = Classifier(model, batch_size=4)
    seen = []
    predict = classifier.predict

    def recording_predict(windows):
        seen.extend(windows)
        return predict(windows)

    classifier.predict = recording_predict
    pipeline = Pipeline(classifier, lambda record: None, max_windows=1 << 30, batch_size=4)
    runner_windows = {}
    on_window = pipeline._on_window

    def recording_on_window(flow, ts, window):
        runner_windows.setdefault((flow.client, flow.client_port), []).append(window)
        on_window(flow, ts, window)

    pipeline.table.on_window = recording_on_window
    for record in CaptureFile(case(name)):
        pipeline.process(*record)
    pipeline.finish()

    assert runner_windows == trainer_windows
    assert sorted(seen) == sorted(w for ws in trainer_windows.values() for w in ws)
    assert len(seen) > 0


def test_settings_missing_newer_keys_mean_off():
    """A model written before the context settings existed keeps plain byte vectors."""
    old = {"format": "edge-etc-preprocessing", "version": 1, "vector_bytes": 48,
           "window_packets": 3, "window_rule": "payload", "server_port": True,
           "mask_addresses": True, "mask_capture_fields": True}
    pre = Preprocessing.from_dict(old)
    assert pre.context is False
    assert pre.port_buckets == 0
    assert pre.header_bytes == 48


def test_window_rows_equal_full_vectors():
    """The flow table keeps vectors without the port block and appends it per window: each
    window row must equal the packet's full vector."""
    settings = Preprocessing()
    assert settings.port_buckets
    scan = Scan(case("eth_tls_2flows.pcap"), settings)
    decoder = Decoder()
    full = {}
    last_ts = {}
    for ts, lt, frame, wl in CaptureFile(case("eth_tls_2flows.pcap")):
        pkt = decoder.decode(ts, lt, frame, wl)
        client = pkt.sport != 443
        key = pkt.sport if client else pkt.dport
        gap = ts - last_ts.get(key, ts)
        last_ts[key] = ts
        if pkt.payload_len:
            full.setdefault(key, []).append(vectorize(pkt, client, settings, gap))
    size = settings.vector_bytes
    for name, windows in scan.windows.items():
        port = int(name.split(":")[1].split()[0])
        rows = [w[i * size:(i + 1) * size] for w in windows for i in range(3)]
        expected = [full[port][j + i] for j in range(len(windows)) for i in range(3)]
        assert rows == expected
