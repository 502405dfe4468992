"""The counting device: the QEMU plugin's counts and cache model, the counting core that runs
TVM-built functions under it, tuning by counting, and how counted and timed databases meet.

The plugin is checked on small C programs whose exact loads and misses are known by hand
(LRU conflict patterns, a working set larger or smaller than a level); the counting core on
TVM kernels under qemu-x86_64 (this host's architecture, no rootfs); tuning by counting and
`run --counted` on the emulated Cortex-A72 (rootfs, marked emulated).
"""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest
from helpers import assert_cli_error, cli_here, output, record_count, run_cli

from tvmc_attend.device.counting import CostModel, CountingCore, CountingError, GuestSpec
from tvmc_attend.device.counting.plugin import plugin_path, qemu_binary
from tvmc_attend.targets import CacheLevel, CoreModel, get_board

MARKER = 0x5CA1E
# Reads `reps` rounds of `count` lines `stride` bytes apart, one volatile load per line;
# round 0 is bracketed as tag 0 (cold), the rest as tag 1.
ACCESS_PROGRAM = r"""
#include <stdlib.h>
/* The marker syscall inline, not through libc's wrapper: nothing but the loop's own loads
   falls inside the bracket. */
static void mark(long op, long tag) {
#if defined(__x86_64__)
    long ret;
    __asm__ volatile("syscall" : "=a"(ret) : "a"(MARKER), "D"(op), "S"(tag)
                     : "rcx", "r11", "memory");
#elif defined(__aarch64__)
    register long x8 __asm__("x8") = MARKER, x0 __asm__("x0") = op, x1 __asm__("x1") = tag;
    __asm__ volatile("svc #0" : "+r"(x0) : "r"(x8), "r"(x1) : "memory");
#endif
}
int main(int argc, char **argv) {
    long stride = atol(argv[1]), count = atol(argv[2]), reps = atol(argv[3]);
    volatile char *mem = aligned_alloc(4096, stride * count + 4096);
    long sum = 0;
    mark(1, 0);
    for (long i = 0; i < count; i++) sum += mem[i * stride];
    mark(2, 0);
    mark(1, 1);
    for (long r = 1; r < reps; r++)
        for (long i = 0; i < count; i++) sum += mem[i * stride];
    mark(2, 1);
    return (int)(sum & 1);
}
""".replace("MARKER", str(MARKER))

# L1: 4 sets x 2 ways x 64 B = 512 B; L2: 8 sets x 4 ways = 2 KiB.
L1 = CacheLevel(bytes=512, ways=2, miss_cycles=10)
L2 = CacheLevel(bytes=2048, ways=4, miss_cycles=100)
TINY = CoreModel(ipc=1.0, line_bytes=64, caches=(L1, L2), source="test")


@pytest.fixture(scope="module")
def access_program(tmp_path_factory) -> Path:
    src = tmp_path_factory.mktemp("prog") / "access.c"
    src.write_text(ACCESS_PROGRAM)
    exe = src.with_suffix("")
    subprocess.run(["gcc", "-O1", "-o", str(exe), str(src)], check=True)
    return exe


def _counts(program: Path, tmp_path: Path, *args: int,
            blocks: Path | None = None) -> dict[int, list[int]]:
    out = tmp_path / f"counts-{'-'.join(map(str, args))}.txt"
    plugin = (f"{plugin_path()},out={out},line=64,l1={L1.bytes},l1_ways={L1.ways},"
              f"l2={L2.bytes},l2_ways={L2.ways}" + (f",blocks={blocks}" if blocks else ""))
    subprocess.run([qemu_binary(os.uname().machine), "-plugin", plugin, str(program),
                    *map(str, args)], check=False, capture_output=True, timeout=60)
    rows = [list(map(int, line.split())) for line in out.read_text().splitlines()]
    return {row[0]: row[1:] for row in rows}  # tag -> insns loads stores m1 m2 m3


def test_plugin_counts_loads_and_lru_conflicts(access_program, tmp_path) -> None:
    # Lines 256 B apart all map to L1 set 0 (4 sets of 64 B): two fit its two ways.
    two = _counts(access_program, tmp_path, 256, 2, 5)
    assert two[0][1] == 2 and two[0][3] == 2  # two loads, two cold misses
    assert two[1][1] == 8 and two[1][3] == 0  # four more rounds: all hits
    # Three lines in a 2-way set under LRU: every access evicts the next one needed.
    three = _counts(access_program, tmp_path, 256, 3, 5)
    assert three[1][1] == 12 and three[1][3] == 12
    # ... but L2 (8 sets: lines 256 B apart use sets 0 and 4, 4 ways each) holds them all.
    assert three[1][4] == 0
    # A working set over L2 (2 KiB): 64 lines streamed, LRU misses both levels every time.
    stream = _counts(access_program, tmp_path, 64, 64, 3)
    assert stream[1][1] == 128 and stream[1][3] == 128 and stream[1][4] == 128
    # Within L2 but not L1: 16 lines (1 KiB): L1 misses all, L2 none once warm.
    mid = _counts(access_program, tmp_path, 64, 16, 3)
    assert mid[1][3] == 32 and mid[1][4] == 0
    # Instructions grow with the work bracketed.
    assert stream[1][0] > 4 * two[1][0] > 0


def test_plugin_reports_each_block_and_how_often_it_ran(access_program, tmp_path) -> None:
    blocks = tmp_path / "blocks.txt"
    counts = _counts(access_program, tmp_path, 64, 37, 6, blocks=blocks)
    rows = [line.split() for line in blocks.read_text().splitlines()]
    for tag in (0, 1):
        mine = [r for r in rows if r[0] == str(tag)]
        # every instruction counted in the bracket belongs to a reported block
        assert sum(int(r[2]) * int(r[3]) for r in mine) == counts[tag][0]
        assert all(len(r[7]) >= 2 * int(r[3]) for r in mine)  # its bytes, >= 1 per instruction
        # every miss of the bracket is charged to the block that accessed memory
        for level in (1, 2):
            assert sum(int(r[3 + level]) for r in mine) == counts[tag][2 + level]
    # the loop body ran once per load (37 a round; tag 1 holds 5 rounds)
    hot = max((r for r in rows if r[0] == "1"), key=lambda r: int(r[2]))
    assert int(hot[2]) in (5 * 37, 5 * 37 - 5)  # loop rotation may peel one per round
    assert len({r[1] for r in rows if r[0] == "1"}) >= 2  # entry and loop blocks apart


def test_plugin_refuses_a_bad_cache_geometry(access_program, tmp_path) -> None:
    plugin = f"{plugin_path()},out={tmp_path / 'x.txt'},l1=1000,l1_ways=3,l2=2048,l2_ways=4"
    result = subprocess.run([qemu_binary(os.uname().machine), "-plugin", plugin,
                             str(access_program), "64", "1", "1"], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode != 0
    assert "bad geometry of cache level 1" in result.stderr


def _matmul(n: int, path: Path) -> Path:
    import tvm
    from tvm import te

    a = te.placeholder((n, n), name="a")
    b = te.placeholder((n, n), name="b")
    k = te.reduce_axis((0, n), name="k")
    c = te.compute((n, n), lambda i, j: te.sum(a[i, k] * b[k, j], axis=k), name="c")
    func = te.create_prim_func([a, b, c]).with_attr("global_symbol", "main")
    target = tvm.target.Target({"kind": "llvm", "mcpu": "haswell"})  # qemu 7.2 has no AVX-512
    tvm.compile(tvm.IRModule({"main": func}), target=target).export_library(str(path))
    return path


@pytest.mark.slow
def test_counting_core_counts_tvm_kernels_deterministically(tmp_path) -> None:
    small, large = _matmul(64, tmp_path / "mm64.so"), _matmul(128, tmp_path / "mm128.so")
    args = [([64, 64], "float32")] * 3
    with CountingCore(GuestSpec.for_host(), TINY) as core:
        first = core.count(str(small), args)
        again = core.count(str(small), args)
        bigger = core.count(str(large), [([128, 128], "float32")] * 3)
        with pytest.raises(CountingError, match="cannot find file"):
            core.count(str(tmp_path / "missing.so"), [])
        # a dead guest is restarted for the next candidate
        assert core._proc is not None
        core._proc.kill()
        with pytest.raises(CountingError):
            core.count(str(small), args)
        restarted = core.count(str(small), args)
    assert abs(again.instructions - first.instructions) <= 0.001 * first.instructions
    assert restarted.instructions == pytest.approx(first.instructions, rel=1e-3)
    # 8x the multiply-adds (same loop nest, 64 -> 128): instructions and loads grow ~8x
    assert 7 < bigger.instructions / first.instructions < 9.5
    assert 7 < bigger.loads / first.loads < 9.5
    tiny = CostModel(TINY, os.uname().machine)  # no llvm-mca cpu: instructions / ipc
    assert tiny.cycles(first) > first.instructions  # misses add to the cost
    # on llvm-mca's model of a real core, blocks weigh by their cycles: 8x the work, ~8x
    mca = CostModel(replace(TINY, mca_cpu="haswell"), os.uname().machine)
    assert first.blocks and 6 < mca.cost(bigger).compute / mca.cost(first).compute < 10
    assert sum(b.executions * b.instructions for b in first.blocks) == first.instructions
    # each block where it ran, retranslations merged: what joins pieces of one body (traces.py)
    assert all(b.address for b in first.blocks)
    assert len({(b.address, b.code) for b in first.blocks}) == len(first.blocks)


def _small_rank_check():
    """The 3 costliest tasks x 5 sampled schedules of AttendNeXt at 64 px, timed here and
    counted under qemu-x86_64 on llvm-mca's model of this host's CPU."""
    from tvmc_attend.bench.counted import rank_check
    from tvmc_attend.compiler.frontend import ModelSource

    return rank_check(ModelSource(model="attendnext", input_size=64), tasks=3, candidates=5,
                      progress=lambda _m: None)


@pytest.mark.slow
def test_rank_check_times_and_counts_sampled_conv_schedules() -> None:
    """The rank check's plumbing, small: every sampled candidate is exported, timed and
    counted, and the counts tell candidates apart."""
    report = _small_rank_check()
    assert len(report.candidates) >= 12
    assert len(report.per_task) == 3
    assert all(c["timed_ms"] > 0 and c["compute_mcycles"] > 0 and c["blocks"] > 0
               for c in report.candidates)
    assert len({round(c["counted_mcycles"], 3) for c in report.candidates}) > 3
    assert -1.0 <= report.pooled <= 1.0
    assert all(t["regret"] >= 0 for t in report.per_task.values())
    assert report.calibration["compute_scale"] > 0
    # each kernel timed twice, loaded afresh: the clock's agreement with itself beside the cost's
    for c in report.candidates:
        first, second = c["timed_ms_passes"]
        assert c["timed_ms"] == pytest.approx((first * second) ** 0.5) and min(first, second) > 0
    assert all(-1.0 <= t["clock_spearman"] <= 1.0 and t["clock_regret"] >= 0
               for t in report.per_task.values())


@pytest.mark.bench  # a measurement of the cost model's quality, machine-dependent: `make bench`
def test_counted_cost_ranks_sampled_conv_schedules_like_the_clock() -> None:
    """Does the counted cost rank like the clock on this machine? Before llvm-mca (issue 21)
    pooled 0.49-0.79 on a Zen 5 VM, -0.04 and -0.01 on a Zen 4 VM. Full-size figures and the
    goals: docs/benchmarks.md."""
    report = _small_rank_check()
    assert report.pooled > 0.5, report.as_json()


def test_counted_and_timed_databases_do_not_mix(tmp_path) -> None:
    from tvmc_attend.compiler.tuning.database import COUNTED, TIMED, TuningDatabase
    from tvmc_attend.errors import UserError

    board = get_board("rpi4")
    warnings: list[str] = []
    counted = TuningDatabase(str(tmp_path / "counted"))
    counted.open(board, "m", create=True, measured_by=COUNTED, warn=warnings.append)
    info = counted.read_info()
    assert info.counted and info.core_model["qemu_cpu"] == "cortex-a72"
    assert info.core_model["caches"][0]["bytes"] == 32768
    # a timed run takes over: the counted files move aside, the identity says timed
    counted.open(board, "m", create=True, measured_by=TIMED, warn=warnings.append)
    assert not counted.read_info().counted
    aside = Path(counted.path) / "counted"
    assert json.loads((aside / "tuning.json").read_text())["measured_by"] == "counted"
    assert any("replace it" in w for w in warnings)
    # a counted run refuses a database of timings
    with pytest.raises(UserError, match="holds timings from a device"):
        counted.open(board, "m", create=True, measured_by=COUNTED)
    # ... and one counted under another core model (another llvm-mca cpu: other units)
    other = TuningDatabase(str(tmp_path / "other"))
    other.open(board, "m", create=True, measured_by=COUNTED)
    changed = replace(board, core_model=replace(board.core_model, mca_cpu="cortex-a57"))
    with pytest.raises(UserError, match="counted under another core model"):
        other.open(changed, "m", create=True, measured_by=COUNTED)
    other.open(board, "m", create=True, measured_by=COUNTED)  # the same model reopens
    # ... and one whose counts were weighed by an older cost formula, on the same core model
    info_path = Path(other.path) / "tuning.json"
    info = json.loads(info_path.read_text())
    info["core_model"]["cost_version"] -= 1
    info_path.write_text(json.dumps(info))
    with pytest.raises(UserError, match="or cost formula"):
        other.open(board, "m", create=True, measured_by=COUNTED)


@pytest.mark.bench  # a whole model counted and timed (~60 s even tiny): `make bench`
def test_estimate_vs_measured_sets_counted_cycles_beside_the_clock(tmp_path) -> None:
    """A whole model counted under qemu-x86_64 on this CPU's llvm-mca model, over the clock,
    beside its single-thread latency here; labelled an estimate."""
    report_path = tmp_path / "estimate.json"
    result = run_cli("benchmark", "--op", "estimate-vs-measured", "--model", "dcac",
                     "--input-size", "8", "--target", "host", "--json", report_path,
                     timeout=900)
    assert result.returncode == 0, output(result)
    assert "estimated from the counted cost (not measured)" in result.stdout
    report = json.loads(report_path.read_text())
    assert report["threads"] == 1 and report["counts"]["blocks"] > 0
    assert report["estimated_ms"] > 0 and report["measured_ms"] > 0
    assert report["estimated_ms"] == pytest.approx(report["compute_ms"] + report["memory_ms"])
    assert "not a measurement" in report["note"]


def test_estimate_vs_measured_is_for_this_host() -> None:
    result = run_cli("benchmark", "--op", "estimate-vs-measured", "--model", "dcac",
                     "--target", "rpi4")
    assert_cli_error(result, "use --target host")


def test_counted_flags_refuse_what_cannot_count(tmp_path) -> None:
    result = run_cli("tune", "--model", "dcac", "--target", "host", "--counted",
                     "--log-dir", tmp_path)
    assert_cli_error(result, "--counted is for a board")
    result = run_cli("tune", "--model", "dcac", "--target", "rpi4", "--counted",
                     "--rpc-host", "127.0.0.1:9", "--log-dir", tmp_path)
    assert_cli_error(result, "drop --rpc-tracker/--rpc-host")
    result = run_cli("tune", "--model", "dcac", "--target", "aarch64", "--counted",
                     "--log-dir", tmp_path)
    assert_cli_error(result, "no core model")
    assert not list(tmp_path.iterdir())


@pytest.mark.emulated
def test_tune_by_counting_compile_and_count(emulated_rpi4, tmp_path) -> None:
    """tune --counted on the emulated Cortex-A72, compile says so, run --counted counts; then
    a timed run on a board (the emulated one, over the tracker) takes the database over."""
    log_dir = tmp_path / "logs"
    database = log_dir / "rpi4" / "dcac"
    result = run_cli("tune", "--model", "dcac", "--input-size", "8", "--target", "rpi4",
                     "--counted", "--trials", "4", "--log-dir", log_dir, "--json",
                     tmp_path / "tune.json", timeout=1200)
    assert result.returncode == 0, output(result)
    assert "Mcycles (counted)" in result.stdout and "not a latency" in result.stdout
    assert "latency " not in result.stdout.replace("not a latency", "")
    info = json.loads((database / "tuning.json").read_text())
    assert info["measured_by"] == "counted" and info["core_model"]["qemu_cpu"] == "cortex-a72"
    assert info["emulated"] is False
    assert record_count(database) >= 1
    report = json.loads((tmp_path / "tune.json").read_text())
    assert report["measured_by"] == "counted" and "estimated_ms" not in report
    assert report["counted_mcycles"] > 0

    bundle = tmp_path / "bundle"
    result = cli_here("compile", "--model", "dcac", "--input-size", "8", "--target", "rpi4",
                     "--log-dir", log_dir, "-o", bundle)
    assert result.returncode == 0, output(result)
    assert "tuned by counting on an emulated cortex-a72 core" in result.stdout
    meta = json.loads((bundle / "metadata.json").read_text())
    assert meta["tuning"]["measured_by"] == "counted"

    result = cli_here("run", bundle, "--counted")
    assert result.returncode == 0, output(result)
    assert "not a latency" in result.stdout and "instructions" in result.stdout
    assert "latency:" not in result.stdout

    # untuned vs tuned, counted: whole model and per task, in one command
    result = run_cli("benchmark", "--model", "dcac", "--input-size", "8", "--target", "rpi4",
                     "--counted", "--log-dir", log_dir, "--json", tmp_path / "counted.json",
                     timeout=1200)
    assert result.returncode == 0, output(result)
    counted = json.loads((tmp_path / "counted.json").read_text())
    assert counted["measured_by"] == "counted" and counted["counted_on"] == "cortex-a72"
    whole = counted["whole_model"]
    assert whole["untuned"]["instructions"] > 0 and whole["tuned"]["mcycles"] > 0
    assert counted["untuned_over_tuned"] == pytest.approx(
        whole["untuned"]["mcycles"] / whole["tuned"]["mcycles"])
    (task,) = counted["tasks"]
    assert task["untuned_mcycles"] > 0 and task["tuned_mcycles"] > 0
    assert "latency" not in result.stdout.replace("not a latency", "")

    result = run_cli("tune", "--model", "dcac", "--input-size", "8", "--target", "rpi4",
                     "--rpc-tracker", emulated_rpi4.tracker, "--rpc-key", emulated_rpi4.key,
                     "--trials", "2", "--log-dir", log_dir, timeout=1200)
    assert result.returncode == 0, output(result)
    assert "tuned by counting; this run's timings on a device replace it" in result.stderr
    info = json.loads((database / "tuning.json").read_text())
    assert info["measured_by"] == "timed" and info["emulated"] is True
    assert json.loads((database / "counted" / "tuning.json").read_text())["measured_by"] == \
        "counted"
    result = cli_here("compile", "--model", "dcac", "--input-size", "8", "--target", "rpi4",
                     "--log-dir", log_dir, "-o", tmp_path / "timed")
    assert result.returncode == 0, output(result)
    assert "tuned by counting" not in result.stdout
