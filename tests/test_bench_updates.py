"""
Checks of benchmarks/bench_updates.py's machine diagnosis and of the MKL preload it points AMD users to
(benchmarks/mkl_intel_path.c). No timing asserts: speed is measured by the benchmark itself.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.bench_updates import cpuinfo_field, mkl_generic_path

ROOT = Path(__file__).resolve().parents[1]
GFLOPS = 1e9


@pytest.mark.parametrize(
    "mm, onednn, vendor, expected",
    [
        (92, 196, "AuthenticAMD", True),  # measured on an AMD EPYC (Zen 5): MKL's generic path
        (213, 209, "AuthenticAMD", False),  # the same CPU with the preload
        (92, 196, "GenuineIntel", False),  # a slow MKL on an Intel CPU is another story
        (110, 196, "AuthenticAMD", True),  # the threshold: under 60% of oneDNN (117.6 here)
        (125, 196, "AuthenticAMD", False),
        (120, 196, "", False),  # vendor unknown
    ],
)
def test_mkl_generic_path(mm, onednn, vendor, expected):
    rates = {"fp32 torch.mm": mm * GFLOPS, "fp32 oneDNN linear": onednn * GFLOPS}
    assert mkl_generic_path(rates, vendor) is expected


def test_mkl_generic_path_needs_both_rates():
    assert not mkl_generic_path({"fp32 torch.mm": 50 * GFLOPS}, "AuthenticAMD")
    assert not mkl_generic_path({"fp32 oneDNN linear": 200 * GFLOPS}, "AuthenticAMD")
    assert not mkl_generic_path({"fp32 torch.mm": 0.0, "fp32 oneDNN linear": 200 * GFLOPS}, "AuthenticAMD")


@pytest.mark.skipif(not Path("/proc/cpuinfo").exists(), reason="needs /proc/cpuinfo")
def test_cpuinfo_field():
    assert cpuinfo_field("vendor_id")  # "GenuineIntel", "AuthenticAMD", ... on x86
    assert cpuinfo_field("processor") == "0"  # the first line of that name
    assert cpuinfo_field("no such field") is None


@pytest.mark.skipif(not sys.platform.startswith("linux") or shutil.which("gcc") is None, reason="needs Linux and gcc")
def test_mkl_preload_builds_and_keeps_fp32_results(tmp_path):
    """With the preload loaded, torch's fp32 matmuls still give fp32 results (against float64), on any x86 CPU."""
    library = tmp_path / "libmkl_intel_path.so"
    subprocess.run(
        ["gcc", "-shared", "-fPIC", "-O2", str(ROOT / "benchmarks" / "mkl_intel_path.c"), "-o", str(library)], check=True
    )
    script = (
        "import torch; torch.manual_seed(0); torch.set_num_threads(1)\n"
        "a, w = torch.randn(300, 257), torch.randn(257, 129)\n"
        "ref = a.double() @ w.double()\n"
        "for out in (a @ w, torch.nn.functional.linear(a, w.t()), torch.addmm(torch.zeros(129), a, w)):\n"
        "    err = ((out.double() - ref).abs().max() / ref.abs().max()).item()\n"
        "    assert err < 1e-5, err\n"
        "print('ok')\n"
    )
    env = dict(os.environ, LD_PRELOAD=str(library))
    completed = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.strip() == "ok"
