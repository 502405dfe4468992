"""The counted cost's parts that need no TVM and no emulator: llvm-mca's block throughput on
assembled blocks, chains through memory, and the rank statistics of the counted-vs-timed
check. Fast (llvm-mc and llvm-mca are milliseconds per block)."""

from __future__ import annotations

import re
import subprocess

import numpy as np
import pytest

from tvmc_attend.bench.rank_stats import calibrate, roofline_cycles, spearman, top1_regret
from tvmc_attend.device.counting import CodeBlock, CostModel, Counts, memory_chains
from tvmc_attend.device.counting.cost import roofline
from tvmc_attend.device.counting.throughput import BlockThroughput, llvm_tools
from tvmc_attend.device.counting.traces import join_fall_through
from tvmc_attend.errors import UserError
from tvmc_attend.targets import CacheLevel, CoreModel


def _assemble(triple: str, lines: list[str]) -> bytes:
    """Machine code of ``lines`` by llvm-mc's encoder (what the plugin hands over)."""
    mc = llvm_tools()[0]
    listing = subprocess.run([mc, f"-triple={triple}", "-show-encoding"],
                             input="\n".join(lines) + "\n", capture_output=True, text=True,
                             check=True).stdout
    code = b""
    for match in re.finditer(r"encoding: \[([^\]]*)\]", listing):
        code += bytes(int(b, 16) for b in match.group(1).split(","))
    return code


def _fma_loop(accumulators: int, steps: int = 8) -> list[str]:
    """``steps`` FMAs into ``accumulators`` registers in turn, then the loop's branch."""
    body = [f"fmla v{i % accumulators}.4s, v20.4s, v21.4s" for i in range(steps)]
    return [*body, "subs x0, x0, #1", f"b.ne #-{4 * (steps + 1)}"]


@pytest.fixture(scope="module")
def a72(tmp_path_factory, monkeypatch_module) -> BlockThroughput:
    return BlockThroughput("aarch64", "cortex-a72")


@pytest.fixture(scope="module")
def monkeypatch_module(tmp_path_factory):
    # a private analysis cache, so the test sees llvm-mca run (and its cache work) afresh
    mp = pytest.MonkeyPatch()
    mp.setenv("TVMC_ATTEND_CACHE", str(tmp_path_factory.mktemp("cache")))
    yield mp
    mp.undo()


def test_accumulator_chains_cost_what_their_latency_says(a72) -> None:
    """One accumulator: each FMA waits for the last (the A72's FMA latency); four: they
    overlap. Instruction counts are equal; the cycles are not."""
    one, four = (_assemble("aarch64", _fma_loop(n)) for n in (1, 4))
    c_one, c_four = a72.cycles([one, four])
    assert len(one) == len(four) == 40
    assert c_one > 2.5 * c_four, (c_one, c_four)
    for steps in (1, 3, 16):  # odd, tiny and long bodies scale with their chains
        single = a72.cycles([_assemble("aarch64", _fma_loop(1, steps))])[0]
        assert single == pytest.approx(c_one / 8 * steps, rel=0.35), steps


def test_analysis_is_cached_by_code(a72) -> None:
    code = _assemble("aarch64", _fma_loop(2, 5))
    first = a72.cycles([code])
    lines = a72._path.read_text().count("\n")
    assert BlockThroughput("aarch64", "cortex-a72").cycles([code]) == first  # from disk
    assert a72._path.read_text().count("\n") == lines


def test_blocks_that_do_not_decode_alone_are_analysed_one_by_one(a72) -> None:
    """A truncated last instruction (qemu hands over what crosses a page cut) must not shift
    the blocks after it."""
    good = _assemble("x86_64", ["vfmadd231ps %ymm1, %ymm2, %ymm0", "addq $1, %rax"])
    x86 = BlockThroughput("x86_64", "znver3")
    truncated = good + b"\xc4"  # the first byte of a VEX prefix
    both = x86.cycles([truncated, good])
    assert both[1] == x86.cycles([good])[0]


def test_unknown_cpu_is_a_one_line_error() -> None:
    with pytest.raises(UserError, match="no model of cpu 'cortex-z9'") as err:
        BlockThroughput("aarch64", "cortex-z9")
    assert "\n" not in str(err.value)


def _chain(arch: str, lines: list[tuple[str, float]], self_loop: bool = False) -> float:
    block = [memory_chains.parse(arch, text, lat) for text, lat in lines]
    return memory_chains.chain_cycles(block, self_loop)


def test_a_spilled_accumulator_is_a_chain_through_memory() -> None:
    x86 = [("vmovups\t(%rsp), %ymm2", 8), ("vfmadd231ps\t%ymm4, %ymm0, %ymm2", 4),
           ("vmovups\t%ymm2, (%rsp)", 1)]
    assert _chain("x86_64", x86) == 13
    # the same chain entering through the register and leaving through it, twice per block
    rotated = [x86[1], x86[2], x86[0], x86[1]]
    assert _chain("x86_64", rotated) == 17
    arm = [("ldr\tq0, [sp, #16]", 5), ("fmla\tv0.4s, v1.4s, v2.4s", 10),
           ("str\tq0, [sp, #16]", 2), ("ldr\tq3, [x0], #16", 5), ("str\tq3, [x1, #16]", 2)]
    assert _chain("aarch64", arm) == 17


def test_moving_or_foreign_addresses_carry_no_chain() -> None:
    # the address register advances in the block: each execution touches another element
    moving = [("ldr\tq0, [x1]", 5), ("fmla\tv0.4s, v1.4s, v2.4s", 10), ("str\tq0, [x1]", 2),
              ("add\tx1, x1, #16", 1)]
    assert _chain("aarch64", moving, self_loop=True) == 0
    # a fixed non-stack address counts only in a block that loops on itself
    output = [("vmovups\t(%rsi), %ymm1", 8), ("vaddps\t%ymm0, %ymm1, %ymm1", 3),
              ("vmovups\t%ymm1, (%rsi)", 1)]
    assert _chain("x86_64", output, self_loop=False) == 0
    assert _chain("x86_64", output, self_loop=True) == 12
    # a register-only chain is llvm-mca's, not this
    assert _chain("x86_64", [("vaddps\t%ymm0, %ymm1, %ymm1", 3)]) == 0


def test_branches_to_itself() -> None:
    assert memory_chains.branches_to_itself("x86_64", "jne\t-88", 88)
    assert not memory_chains.branches_to_itself("x86_64", "ja\t24", 88)
    assert memory_chains.branches_to_itself("aarch64", "b.ne\t#-16", 20)
    assert memory_chains.branches_to_itself("aarch64", "cbnz\tx0, #-16", 20)
    assert not memory_chains.branches_to_itself("aarch64", "ret", 20)


def test_rank_statistics() -> None:
    assert spearman([1, 2, 3, 4], [10, 20, 30, 45]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(0.8)
    assert spearman([1, 2, 3, 4], [1, 1, 2, 2]) == pytest.approx(0.894, abs=1e-3)  # ties
    # the cost's favourite runs 1.5x the fastest; candidates tied for first count by their
    # mean time (a 0.5 % difference in cost is a tie)
    assert top1_regret([2.0, 3.0, 4.0], [5.0, 1.0, 9.0]) == pytest.approx(0.5)
    assert top1_regret([2.0, 4.0, 4.0], [1.0, 1.005, 9.0]) == pytest.approx(0.5)
    assert top1_regret([2.0, 3.0], [1.0, 2.0]) == 0.0


def test_calibration_recovers_the_terms_it_was_built_from() -> None:
    rng = np.random.default_rng(0)
    terms = [[(rng.uniform(1e4, 1e6), rng.uniform(0, 4e6)) for _ in range(5)]
             for _ in range(40)]
    rest = list(rng.uniform(1e4, 1e5, 40))
    timed = [0.7 * roofline_cycles(t, r, 0.3) * rng.uniform(0.99, 1.01)
             for t, r in zip(terms, rest, strict=True)]
    fit = calibrate(timed, terms, rest)
    assert fit.compute_scale == pytest.approx(0.7, rel=0.05)
    assert fit.exposed_miss == pytest.approx(0.3)
    assert fit.median_error < 0.02
    # misses that explain nothing get no weight
    hidden = calibrate([0.5 * (r + sum(c for c, _m in t)) for t, r in zip(terms, rest,
                                                                        strict=True)],
                       terms, rest)
    assert hidden.exposed_miss == 0.0 and hidden.median_error < 1e-9


def test_roofline_charges_only_memory_beyond_compute() -> None:
    cost = roofline([(100.0, 50.0), (100.0, 300.0), (10.0, 0.0)], exposed_miss=1.0)
    assert cost.compute == 210.0 and cost.memory == 200.0
    assert roofline([(100.0, 300.0)], exposed_miss=0.5).memory == 50.0
    assert roofline_cycles([(100.0, 300.0)], 10.0, 0.5) == 160.0  # the check's mirror agrees


def _pieces(arch: str, parts: list[list[str]], executions: list[int],
            start: int = 0x4000) -> tuple[CodeBlock, ...]:
    """``parts`` assembled back to back from ``start``, as the plugin reports blocks."""
    blocks, address = [], start
    for lines, n in zip(parts, executions, strict=True):
        code = _assemble(arch, lines)
        blocks.append(CodeBlock(code, n, len(lines), (n, 0), address=address))
        address += len(code)
    return tuple(blocks)


def _reduction(pieces: int, steps: int) -> list[list[str]]:
    """One loop body: a fresh accumulator, ``steps`` FMAs into it per piece, stored; the loop
    branch at the end (as qemu cuts an unrolled reduction into pieces)."""
    parts = [[f"fmla v0.4s, v{1 + i % 8}.4s, v20.4s" for i in range(steps)]
             for _ in range(pieces)]
    parts[0].insert(0, "movi v0.4s, #0")
    size = 4 * (sum(len(p) for p in parts) + 2)
    parts[-1] += ["str q0, [x1], #16", f"cbnz x0, #-{size - 4}"]
    return parts


@pytest.mark.parametrize("pieces,steps", [(2, 5), (3, 12), (4, 1)])
def test_pieces_of_one_body_are_weighed_as_the_body(pieces, steps, monkeypatch_module) -> None:
    """Alone, each piece after the first looks like a loop carrying its accumulator; joined,
    the fresh accumulator each time round lets the core overlap iterations. The joined block
    is the body's bytes, a loop on itself, weighed as the body assembled whole."""
    parts = _reduction(pieces, steps)
    blocks = _pieces("aarch64", parts, [1000] * pieces)
    (joined,) = join_fall_through(blocks)
    whole = _assemble("aarch64", [line for part in parts for line in part])
    assert joined.code == whole and joined.executions == 1000
    assert joined.instructions == sum(len(p) for p in parts)
    assert joined.misses == (1000 * pieces, 0) and joined.address == blocks[0].address
    last = BlockThroughput("aarch64", "cortex-a72")._disassemble([whole])[0][-1]
    assert memory_chains.branches_to_itself("aarch64", last, len(whole))
    core = CoreModel(ipc=1.0, line_bytes=64, source="test", mca_cpu="cortex-a72",
                     caches=(CacheLevel(bytes=32768, ways=2, miss_cycles=0.0),) * 2)
    cost = CostModel(core, "aarch64")
    counts = Counts(instructions=0, loads=0, stores=0, misses=(0, 0), blocks=blocks)
    apart = sum(cost.throughput.cycles([b.code for b in blocks]))
    (body,) = cost.throughput.cycles([whole])
    assert cost.cost(counts).compute == pytest.approx(1000 * body)
    if steps > 1:  # a chain of one FMA per piece carries too little to tell
        assert body < 0.75 * apart, (body, apart)


def test_only_pieces_that_always_follow_each_other_join() -> None:
    a, b, c = _pieces("aarch64", [["add x0, x0, #1"]] * 3, [100, 100, 40])
    assert [j.instructions for j in join_fall_through((a, b, c))] == [2, 1]  # c ran apart
    gap = CodeBlock(b.code, 100, 1, address=b.address + 4)  # not where a ends
    assert len(join_fall_through((a, gap))) == 2
    twice = CodeBlock(b"\x1f\x20\x03\xd5", 100, 1, address=b.address)  # two codes there
    assert len(join_fall_through((a, b, twice))) == 3
    unplaced = CodeBlock(a.code, 100, 1)
    assert join_fall_through((unplaced,)) == (unplaced,)
    assert sorted(j.instructions for j in join_fall_through((c, b, a))) == [1, 2]  # any order
