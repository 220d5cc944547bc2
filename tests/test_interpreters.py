"""The runner on each interpreter package, in real virtual environments the test builds:
tflite-runtime 2.14 with numpy<2 must give the records of ai-edge-litert, and beside
numpy 2 it must fail with one line (explicit backend) or fall back to numpy (auto)."""

import json
import os
import platform
import subprocess
import sys

import pytest

from conftest import ROOT, case, run_cli

pytestmark = pytest.mark.slow

if platform.machine() != "x86_64" or sys.version_info[:2] not in ((3, 9), (3, 10), (3, 11)):
    pytest.skip("tflite-runtime 2.14 wheels: x86-64, Python 3.9 to 3.11", allow_module_level=True)


def make_venv(path, *packages, no_deps=()):
    subprocess.run([sys.executable, "-m", "venv", str(path)], check=True)
    pip = [str(path / "bin" / "python"), "-m", "pip", "install", "-q"]
    if no_deps:
        r = subprocess.run(pip + ["--no-deps", *no_deps], capture_output=True, text=True)
        if r.returncode:
            pytest.skip(f"pip install {' '.join(no_deps)} failed: {r.stderr.strip()[-200:]}")
    r = subprocess.run(pip + list(packages), capture_output=True, text=True)
    if r.returncode:
        pytest.skip(f"pip install {' '.join(packages)} failed: {r.stderr.strip()[-200:]}")
    return str(path / "bin" / "python")


def run_in(python, *args):
    env = dict(os.environ, PYTHONPATH=ROOT)
    return subprocess.run([python, "-m", "edge_etc", "run", *args], capture_output=True, text=True,
                          env=env, timeout=300)


@pytest.fixture(scope="module")
def numpy1_tflite(tmp_path_factory):
    return make_venv(tmp_path_factory.mktemp("tflrt"), "tflite-runtime==2.14.0", "numpy<2", "click>=8")


@pytest.fixture(scope="module")
def numpy2_tflite(tmp_path_factory):
    return make_venv(tmp_path_factory.mktemp("tflrt_np2"), "numpy>=2", "click>=8",
                     no_deps=("tflite-runtime==2.14.0",))


def test_tflite_runtime_same_records(numpy1_tflite):
    capture = case("eth_tls_2flows.pcap")
    r = run_in(numpy1_tflite, "--pcap", capture)
    assert r.returncode == 0, r.stderr
    assert "interpreter: tflite-runtime 2.14.0" in r.stderr
    reference = run_cli("run", "--pcap", capture, "--backend", "litert")
    ours = [json.loads(x) for x in r.stdout.splitlines()]
    theirs = [json.loads(x) for x in reference.stdout.splitlines()]
    assert [(x["src_port"], x["label"], x["windows"]) for x in ours] == \
        [(x["src_port"], x["label"], x["windows"]) for x in theirs]


def test_tflite_runtime_numpy2_one_line(numpy2_tflite):
    r = run_in(numpy2_tflite, "--pcap", case("eth_tls_2flows.pcap"), "--backend", "tflite-runtime")
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert lines[-1].startswith("edge-etc: error: tflite-runtime 2.14.0 cannot run with numpy 2")
    assert "Traceback" not in r.stderr


def test_auto_falls_back_to_numpy(numpy2_tflite):
    r = run_in(numpy2_tflite, "--pcap", case("eth_tls_2flows.pcap"))
    assert r.returncode == 0, r.stderr
    assert "using the numpy backend instead" in r.stderr
    assert "interpreter: edge-etc numpy" in r.stderr
    assert len(r.stdout.splitlines()) == 2
