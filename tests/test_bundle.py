"""Bundles end to end: `tvmc-attend compile` writes a self-contained bundle, its own loader
opens it and matches PyTorch, `tvmc-attend run` prints top-5 and latency for .npy, image and
random inputs, and an rpi4 bundle holds a real aarch64 library.

A bundle carries its TVM runtime: its loader runs it in a Python that has numpy and nothing
else, on the host and on the emulated Cortex-A72 (no TVM importable, the compiler library
never mapped), bit for bit as the installed TVM runs it.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import (
    EM_AARCH64,
    EM_X86_64,
    RTOL,
    assert_cli_error,
    assert_depends_on_input,
    cli_here,
    elf_header,
    import_bundle_loader,
    inputs,
    output,
    rel_err,
)

from tvmc_attend.models import create_model

SIZE = 64
SHAPE = (1, 3, SIZE, SIZE)
DCAC_SIZE = 16


def compile_untuned(tmp_path_factory, model: str, size: int, target: str) -> Path:
    out = tmp_path_factory.mktemp("bundle") / f"{model}-{target}"
    result = cli_here("compile", "--model", model, "--input-size", size, "--target", target,
                     "-o", out, "--untuned")
    assert result.returncode == 0, output(result)
    assert "Traceback" not in result.stderr
    assert f"compiled {model} for {target}" in result.stdout and str(out) in result.stdout
    return out


@pytest.fixture(scope="module")
def host_bundle(tmp_path_factory) -> Path:
    """attendnext at 64x64, compiled untuned for the host by the CLI (about a minute)."""
    return compile_untuned(tmp_path_factory, "attendnext", SIZE, "host")


@pytest.fixture(scope="module")
def loader(host_bundle):
    return import_bundle_loader(host_bundle)


@pytest.fixture(scope="module")
def loaded(host_bundle, loader):
    return loader.load(str(host_bundle))


@pytest.fixture(scope="module")
def reference():
    return create_model("attendnext", input_size=SIZE, seed=0)


@pytest.fixture(scope="module")
def rpi4_bundle(tmp_path_factory) -> Path:
    """The DC-AC block cross-compiled for rpi4 (fast: the library format is what matters)."""
    return compile_untuned(tmp_path_factory, "dcac", DCAC_SIZE, "rpi4")


# ---------------------------------------------------------------------------- host bundle


@pytest.mark.slow
def test_bundle_is_self_contained(host_bundle, loader) -> None:
    files = sorted(p.name for p in host_bundle.iterdir())
    assert files == sorted(["attend_runtime.py", "metadata.json", "attendnext-host.so",
                            "runtime", "run"]), files
    runtime = json.loads((host_bundle / "metadata.json").read_text())["runtime"]
    assert runtime["arch"] == os.uname().machine
    assert [f["file"] for f in runtime["files"]] == ["runtime/libtvm_ffi.so",
                                                    "runtime/libtvm_runtime.so"]
    for entry in runtime["files"]:
        assert loader.sha256_of(str(host_bundle / entry["file"])) == entry["sha256"]
    source = (host_bundle / "attend_runtime.py").read_text()
    assert not re.search(r"^\s*(from|import)\s+tvmc_attend", source, re.MULTILINE), \
        "the bundled loader must not need the tvmc_attend package"
    assert loader.__name__ != "tvmc_attend.attend_runtime"
    assert elf_header(host_bundle / "attendnext-host.so")[:1] == (2,)
    if os.uname().machine == "x86_64":
        assert elf_header(host_bundle / "attendnext-host.so")[2] == EM_X86_64


@pytest.mark.slow
def test_bundle_metadata(host_bundle, loader) -> None:
    import tvm

    meta = json.loads((host_bundle / "metadata.json").read_text())
    assert meta["format"] == loader.BUNDLE_FORMAT
    assert meta["model"] == "attendnext" and meta["source"] == "zoo"
    assert meta["input"] == {"name": meta["input"]["name"], "shape": list(SHAPE),
                             "dtype": "float32"}
    assert isinstance(meta["input"]["name"], str) and meta["input"]["name"]
    assert meta["output"] == {"shape": [1, 1000], "dtype": "float32"}
    assert meta["target"]["name"] == "host" and meta["target"]["remote"] is False
    assert meta["target"]["target"]["kind"] == "llvm"
    assert meta["target"]["target"]["mcpu"] != "native"  # resolved for this machine
    assert meta["tvm_version"] == tvm.__version__
    assert meta["tuned"] is False
    assert meta["tuning"]["records"] == 0 and meta["tuning"]["database"] is None
    assert isinstance(meta["fused_dcac"], int) and not isinstance(meta["fused_dcac"], bool)
    library = host_bundle / meta["library"]["file"]
    assert library.is_file()
    assert meta["library"]["sha256"] == loader.sha256_of(str(library))
    import hashlib

    assert meta["library"]["sha256"] == hashlib.sha256(library.read_bytes()).hexdigest()


@pytest.mark.slow
def test_loader_matches_pytorch(loaded, reference) -> None:
    assert loaded.input_shape == SHAPE and loaded.input_dtype == "float32"
    xs = inputs(SHAPE)
    refs = assert_depends_on_input(reference, xs)
    for x, ref in zip(xs, refs, strict=True):
        y = loaded(x)
        assert y.shape == (1, 1000) and y.dtype == np.float32
        err = rel_err(y, ref)
        assert err <= RTOL, f"relative error {err:.3g} > {RTOL}"
    stats = loaded.benchmark(xs[0], repeat=3, warmup=1)
    assert len(stats.times_ms) == 3 and all(t > 0 for t in stats.times_ms)
    assert stats.p10_ms <= stats.median_ms <= stats.p90_ms
    assert "median" in str(stats)


@pytest.mark.slow
def test_loader_refuses_wrong_shape_and_dtype(loaded, loader) -> None:
    with pytest.raises(loader.BundleError, match=r"input shape \(1, 3, 32, 32\) does not match"):
        loaded(np.zeros((1, 3, 32, 32), np.float32))
    with pytest.raises(loader.BundleError, match=r"dtype float64 does not match"):
        loaded(np.zeros(SHAPE, np.float64))


def _assert_run_report(result, where: str = "local") -> None:
    assert result.returncode == 0, output(result)
    assert "Traceback" not in result.stdout + result.stderr
    out = result.stdout
    assert f"attendnext on host ({where})" in out, out
    assert "top-5:" in out, out
    ranks = re.findall(r"^\s+(\d)\. class\s+(\d+)\s+p=([0-9.]+)", out, re.MULTILINE)
    assert [r[0] for r in ranks] == ["1", "2", "3", "4", "5"], out
    probs = [float(r[2]) for r in ranks]
    assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1.0001
    found = re.search(r"^latency: median [0-9.]+ ms \(p10 [0-9.]+, p90 [0-9.]+, n=\d+\), "
                      r"(\d+) TVM threads$", out, re.MULTILINE)
    assert found, out
    # every core unless the environment says otherwise (TVM alone would take half of x86's)
    assert int(found.group(1)) == int(os.environ.get("TVM_NUM_THREADS") or
                                      len(os.sched_getaffinity(0))), out


def _top_classes(stdout: str) -> list[int]:
    return [int(c) for c in re.findall(r"^\s+\d\. class\s+(\d+)", stdout, re.MULTILINE)]


# Runs the bundle's own loader in a fresh process whose environment does not size TVM's pool,
# and reports, per thread, the CPU time the inferences took (schedstat: ns).
THREAD_PROBE = """
import json, os, sys
import numpy as np
sys.path.insert(0, sys.argv[1])
import attend_runtime

def cpu_ns():
    out = {}
    for tid in os.listdir("/proc/self/task"):
        with open(f"/proc/self/task/{tid}/schedstat") as f:
            out[tid] = int(f.read().split()[0])
    return out

threads = int(sys.argv[2]) or None
m = attend_runtime.load(sys.argv[1], threads=threads)
x = np.random.default_rng(0).standard_normal(m.input_shape).astype("float32")
m(x)
before = cpu_ns()
for _ in range(40):
    m(x)
after = cpu_ns()
print(json.dumps({"threads": m.threads,
                  "cpu_ns": [after[t] - before.get(t, 0) for t in after]}))
"""


@pytest.mark.parametrize("asked", [0, 1])
def test_the_loader_runs_the_threads_asked_for(host_bundle, asked) -> None:
    """TVM sizes its pool once, from TVM_NUM_THREADS, else half an x86 machine's logical CPUs
    (one thread on two): the loader must size it before first use. Counted from what ran:
    threads that each did a real share of the work (a share, not a time, so that a loaded
    machine slows every thread alike and the count holds). The untuned model's serial kernels
    run on the calling thread, so a worker's share is small (14 % of the CPU time on an idle
    2-core Zen 4) but an idle pool thread's is zero: the bar is 5 %. Waiting threads do not
    spin here (TVM_THREAD_POOL_SPIN_COUNT=0; it does not change the pool's size): under load
    a thread that waits for a descheduled one spun long enough to push that one's share below
    the bar, so the count measured spinning, not who computed."""
    env = {k: v for k, v in os.environ.items() if k not in ("TVM_NUM_THREADS", "OMP_NUM_THREADS")}
    env["TVM_THREAD_POOL_SPIN_COUNT"] = "0"
    result = subprocess.run([sys.executable, "-c", THREAD_PROBE, str(host_bundle), str(asked)],
                            capture_output=True, text=True, env=env, timeout=300, check=False)
    assert result.returncode == 0, output(result)
    probe = json.loads(result.stdout.strip().splitlines()[-1])
    expected = asked or len(os.sched_getaffinity(0))
    assert probe["threads"] == expected, probe
    total = sum(probe["cpu_ns"])
    working = [ns for ns in probe["cpu_ns"] if ns >= 0.05 * total]
    assert len(working) == expected, probe


@pytest.mark.slow
def test_run_random_input_saves_the_output(host_bundle, loaded, tmp_path) -> None:
    from tvmc_attend.compiler.inputs import random_input

    y_path = tmp_path / "y.npy"
    result = cli_here("run", host_bundle, "--output", y_path, "--repeat", 3)
    _assert_run_report(result)
    assert "input random" in result.stdout and f"output saved to {y_path}" in result.stdout
    y = np.load(y_path)
    expected = loaded(random_input(SHAPE))
    np.testing.assert_array_equal(y, expected)
    assert _top_classes(result.stdout) == list(np.argsort(-expected.reshape(-1))[:5])


@pytest.mark.slow
def test_run_npy_input(host_bundle, loaded, reference, tmp_path) -> None:
    x = inputs(SHAPE, n=1, seed=7)[0]
    np.save(tmp_path / "x.npy", x)
    result = cli_here("run", host_bundle, "--input", tmp_path / "x.npy", "--output",
                     tmp_path / "y.npy", "--repeat", 2)
    _assert_run_report(result)
    y = np.load(tmp_path / "y.npy")
    np.testing.assert_array_equal(y, loaded(x))
    from helpers import torch_reference

    assert rel_err(y, torch_reference(reference, x)) <= RTOL


@pytest.mark.slow
def test_run_image_input(host_bundle, loaded, tmp_path) -> None:
    from PIL import Image

    from tvmc_attend.compiler.inputs import load_input

    rng = np.random.default_rng(3)
    pixels = rng.integers(0, 256, (48, 80, 3), dtype=np.uint8)  # not the model's size
    image = tmp_path / "photo.png"
    Image.fromarray(pixels, "RGB").save(image)
    result = cli_here("run", host_bundle, "--input", image, "--output", tmp_path / "y.npy",
                     "--repeat", 2)
    _assert_run_report(result)
    x = load_input(str(image), SHAPE)
    assert x.shape == SHAPE and x.dtype == np.float32
    np.testing.assert_array_equal(np.load(tmp_path / "y.npy"), loaded(x))


# ---------------------------------------------------------------------------- rpi4 bundle


# Runs a bundle's loader in a Python that can import numpy and nothing else (-S: no
# site-packages; NUMPY_ONLY holds links to numpy alone), saves the output and reports what the
# process had loaded: argv = bundle, runtime ("" = the loader's choice), input .npy, output .npy.
NUMPY_ONLY_PROBE = """
import importlib.util, json, sys
sys.path.insert(0, sys.argv[1])
import numpy as np
import attend_runtime
m = attend_runtime.load(sys.argv[1], runtime=sys.argv[2] or None)
np.save(sys.argv[4], m(np.load(sys.argv[3])))
maps = open("/proc/self/maps").read()
print(json.dumps({"runtime": m.runtime, "tvm_loaded": "tvm" in sys.modules,
                  "tvm_ffi_loaded": "tvm_ffi" in sys.modules,
                  "tvm_importable": importlib.util.find_spec("tvm") is not None,
                  "compiler_mapped": "libtvm_compiler" in maps,
                  "runtime_mapped": [line.split()[-1] for line in maps.splitlines()
                                     if line.endswith("libtvm_runtime.so")][:1]}))
"""


def _numpy_only_dir(tmp_path: Path) -> Path:
    """A folder that lets a -S Python import numpy (this venv's) and nothing else."""
    from tvmc_attend.bench.runtime_footprint import link_numpy_only

    folder = tmp_path / "numpy-only"
    folder.mkdir()
    return link_numpy_only(folder)


@pytest.mark.slow
def test_the_bundled_runtime_needs_numpy_only_and_matches_the_installed_tvm(
        host_bundle, loaded, tmp_path) -> None:
    x_path, y_path = tmp_path / "x.npy", tmp_path / "y.npy"
    x = inputs(SHAPE, n=1, seed=11)[0]
    np.save(x_path, x)
    env = {**os.environ, "PYTHONPATH": str(_numpy_only_dir(tmp_path))}
    result = subprocess.run([sys.executable, "-S", "-c", NUMPY_ONLY_PROBE, str(host_bundle), "",
                             str(x_path), str(y_path)], capture_output=True, text=True,
                            env=env, timeout=300, check=False)
    assert result.returncode == 0, output(result)
    probe = json.loads(result.stdout.strip().splitlines()[-1])
    assert probe["runtime"] == "bundled" and probe["runtime_mapped"] == [
        str((host_bundle / "runtime" / "libtvm_runtime.so").resolve())], probe
    assert not (probe["tvm_loaded"] or probe["tvm_ffi_loaded"] or probe["tvm_importable"] or
                probe["compiler_mapped"]), probe
    assert loaded.runtime == "system"  # this process imported TVM: the installed one
    np.testing.assert_array_equal(np.load(y_path), loaded(x))


@pytest.mark.slow
def test_the_loader_is_a_command_with_one_line_errors(host_bundle, loaded, tmp_path) -> None:
    """``python3 DIR/attend_runtime.py DIR --input x.npy --output y.npy``: prediction and
    latency; a wrong input, a missing or altered runtime file: one line, exit code 2."""
    x_path, y_path = tmp_path / "x.npy", tmp_path / "y.npy"
    x = inputs(SHAPE, n=1, seed=12)[0]
    np.save(x_path, x)
    env = {**os.environ, "PYTHONPATH": str(_numpy_only_dir(tmp_path))}

    def command(bundle: Path, *args: str | Path) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-S", str(bundle / "attend_runtime.py"),
                               str(bundle), *map(str, args)], capture_output=True, text=True,
                              env=env, timeout=300, check=False)

    ran = command(host_bundle, "--input", x_path, "--output", y_path, "--repeat", 3)
    assert ran.returncode == 0, output(ran)
    assert "bundled TVM runtime" in ran.stdout and "1. class" in ran.stdout, ran.stdout
    assert re.search(r"latency: median [0-9.]+ ms .*n=3\), \d+ TVM threads", ran.stdout)
    np.testing.assert_array_equal(np.load(y_path), loaded(x))

    np.save(tmp_path / "small.npy", x[:, :, :32, :32])
    (tmp_path / "text.npy").write_text("not an array")
    altered = tmp_path / "altered"
    altered.mkdir()
    for item in host_bundle.rglob("*"):  # hard links: the copy costs nothing
        target = altered / item.relative_to(host_bundle)
        target.mkdir() if item.is_dir() else os.link(item, target)
    library = altered / "runtime" / "libtvm_runtime.so"
    library.unlink()
    cases = [
        (host_bundle, ["--input", tmp_path / "small.npy"], "input shape (1, 3, 32, 32) does "
                                                           "not match"),
        (host_bundle, ["--input", tmp_path / "text.npy"], "is not a .npy array"),
        (host_bundle, ["--input", tmp_path / "none.npy"], "cannot read input"),
        (altered, [], "lacks its TVM runtime library runtime/libtvm_runtime.so"),
    ]
    for bundle, args, message in cases:
        failed = command(bundle, *args)
        assert failed.returncode == 2 and message in failed.stderr, output(failed)
        assert len(failed.stderr.strip().splitlines()) == 1, output(failed)
    library.write_bytes((host_bundle / "runtime" / "libtvm_runtime.so").read_bytes() + b"\0")
    failed = command(altered)
    assert failed.returncode == 2 and "the TVM runtime library was modified" in failed.stderr


@pytest.mark.slow
def test_the_run_program_needs_no_python_and_matches_the_loader(host_bundle, loaded,
                                                                 tmp_path) -> None:
    """``DIR/run``: the C program in the bundle, linked to the runtime beside it; an empty
    environment (no PYTHONPATH, no LD_LIBRARY_PATH), the same output bit for bit."""
    x = inputs(SHAPE, n=1, seed=14)[0]
    np.save(tmp_path / "x.npy", x)
    ran = subprocess.run([str(host_bundle / "run"), "--input", str(tmp_path / "x.npy"),
                          "--output", str(tmp_path / "y.npy"), "--repeat", "3"],
                         capture_output=True, text=True, env={}, timeout=300, check=False)
    assert ran.returncode == 0, output(ran)
    assert re.search(r"^latency: median [0-9.]+ ms .*n=3\), \d+ TVM threads$", ran.stdout,
                     re.MULTILINE), ran.stdout
    np.testing.assert_array_equal(np.load(tmp_path / "y.npy"), loaded(x))
    np.save(tmp_path / "x64.npy", x.astype(np.float64))
    for bad, message in (("x64.npy", "is not float32"), ("missing.npy", "cannot read input")):
        failed = subprocess.run([str(host_bundle / "run"), "--input", str(tmp_path / bad)],
                                capture_output=True, text=True, env={}, timeout=60,
                                check=False)
        assert failed.returncode == 2 and message in failed.stderr, output(failed)
        assert len(failed.stderr.strip().splitlines()) == 1


def test_rpi4_bundle_is_an_aarch64_library(rpi4_bundle) -> None:
    meta = json.loads((rpi4_bundle / "metadata.json").read_text())
    assert meta["target"]["name"] == "rpi4" and meta["target"]["remote"] is True
    assert meta["target"]["triple"] == "aarch64-linux-gnu"
    assert meta["target"]["target"]["mcpu"] == "cortex-a72"
    assert meta["threads"] == 4
    library = rpi4_bundle / meta["library"]["file"]
    assert library.name == "dcac-rpi4.so"
    ei_class, ei_data, e_machine = elf_header(library)
    assert ei_class == 2, "not a 64-bit ELF"
    assert ei_data == 1, "not little-endian"
    assert e_machine == EM_AARCH64, f"e_machine {e_machine}, not EM_AARCH64"
    assert (rpi4_bundle / "attend_runtime.py").is_file()


@pytest.mark.skipif(os.uname().machine in ("aarch64", "arm64"), reason="runs natively on arm64")
def test_rpi4_bundle_run_without_device_is_a_clear_error(rpi4_bundle) -> None:
    result = cli_here("run", rpi4_bundle)
    assert_cli_error(result, "compiled for rpi4", "aarch64-linux-gnu",
                     f"cannot run on this {os.uname().machine} machine", "--rpc-tracker")


@pytest.mark.emulated
def test_an_rpi4_bundle_runs_on_a_board_with_numpy_only(rpi4_bundle, host_bundle,
                                                         tmp_path) -> None:
    """On the emulated Cortex-A72: the bundle's loader in a Python with numpy only (the
    rootfs has apache-tvm installed; -S hides it) matches PyTorch, and the board's installed
    TVM and the bundle's `run` program bit for bit; a host bundle there is a one-line error."""
    from helpers import torch_reference

    from tvmc_attend.device import rootfs

    root = rootfs.ensure_rootfs()
    meta = json.loads((rpi4_bundle / "metadata.json").read_text())
    assert meta["runtime"]["arch"] == "aarch64"
    assert sum((rpi4_bundle / f["file"]).stat().st_size for f in meta["runtime"]["files"]) \
        <= 8e6  # the runtime part: libtvm_runtime.so + libtvm_ffi.so for aarch64
    x = inputs(tuple(meta["input"]["shape"]), n=1, seed=13)[0]
    np.save(tmp_path / "x.npy", x)
    site = f"/{rootfs.SITE_PACKAGES}"
    numpy_only = (f"mkdir /tmp/numpy-only && ln -s {site}/numpy {site}/numpy.libs "
                  "/tmp/numpy-only/ && export PYTHONPATH=/tmp/numpy-only; ")
    probe = NUMPY_ONLY_PROBE.replace("'", "'\\''")
    script = (numpy_only +
              f"python3 -S -c '{probe}' /b '' /io/x.npy /io/bare.npy && "
              f"python3 -c '{probe}' /b system /io/x.npy /io/system.npy && "
              "python3 -S /b/attend_runtime.py /b --input /io/x.npy --output /io/cli.npy "
              "--repeat 2 && /b/run --input /io/x.npy --output /io/run.npy --repeat 2; "
              "python3 -S /h/attend_runtime.py /h --repeat 1 || echo host-refused")
    argv = rootfs.in_rootfs_argv(root, ["/bin/sh", "-c", script],
                                 binds={str(rpi4_bundle): "/b", str(host_bundle): "/h",
                                        str(tmp_path): "/io"})
    result = subprocess.run(argv, env=rootfs.rootfs_env("cortex-a72"), capture_output=True,
                            text=True, timeout=600, check=False)
    assert result.returncode == 0, output(result)
    bare, system = (json.loads(line) for line in result.stdout.splitlines()
                    if line.startswith("{"))
    assert bare["runtime"] == "bundled" and bare["runtime_mapped"] == [
        "/b/runtime/libtvm_runtime.so"], bare
    assert not (bare["tvm_loaded"] or bare["tvm_ffi_loaded"] or bare["tvm_importable"] or
                bare["compiler_mapped"]), bare
    assert system["runtime"] == "system" and system["tvm_importable"], system
    y = np.load(tmp_path / "bare.npy")
    np.testing.assert_array_equal(y, np.load(tmp_path / "system.npy"))
    np.testing.assert_array_equal(y, np.load(tmp_path / "cli.npy"))
    np.testing.assert_array_equal(y, np.load(tmp_path / "run.npy"))  # the C program
    reference = torch_reference(create_model("dcac", input_size=DCAC_SIZE, seed=0), x)
    assert rel_err(y, reference) <= RTOL
    assert "bundled TVM runtime" in result.stdout and "host-refused" in result.stdout
    here = re.escape(os.uname().machine)
    assert re.search(rf"^error: bundle '/h' is compiled for host \({here}\) and cannot run on "
                     r"this aarch64 machine", result.stderr, re.MULTILINE), result.stderr


@pytest.mark.slow
def test_runtime_footprint_splits_the_bundle_and_times_both_runtimes(host_bundle) -> None:
    """`benchmark --op runtime-footprint`'s measurement, one run: sizes by part, and a fresh
    process per runtime that reports what it loaded."""
    from tvmc_attend.bench.runtime_footprint import footprint
    from tvmc_attend.compiler.bundle import Bundle

    report = footprint(Bundle.open(str(host_bundle)), runs=1, alternatives=False,
                       progress=lambda _m: None)
    assert set(report.sizes) == {"model library", "runtime/libtvm_ffi.so",
                                 "runtime/libtvm_runtime.so", "run (C program)",
                                 "loader (attend_runtime.py)", "metadata.json"}
    assert report.sizes["model library"] == (host_bundle / "attendnext-host.so").stat().st_size
    bundled, system = report.start_up["bundled"], report.start_up["system"]
    assert not bundled["tvm_imported"] and not bundled["compiler_mapped"], bundled
    assert system["tvm_imported"] and system["compiler_mapped"], system
    for row in (bundled, system):
        assert 0 < row["first_inference_s"] < row["total_s"]
        assert 0 < row["rss_mb"] <= row["peak_rss_mb"]
