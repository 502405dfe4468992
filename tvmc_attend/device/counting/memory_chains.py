"""Loop-carried dependency chains through memory, which llvm-mca does not model.

llvm-mca assumes a load never waits for an earlier store (``-noalias``; turning that off makes
every load wait for every store, far too slow). A register tile too big for the register file
spills an accumulator to the stack: each iteration loads it, adds to it and stores it back, a
chain of load + FMA + store latency per step that runs 2x slower than llvm-mca predicts (seen
on the host's rank check). This finds such chains in one block: for each memory operand the
block both loads and stores at an address it does not change (a stack slot, an output
element), the longest path of latencies from the slot's value at block entry to its value at
block exit. The block then costs at least that per execution.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_X86_REG = re.compile(r"%([a-z0-9]+)")
_ARM_REG = re.compile(r"\b([xwvqdshb])(\d+)\b|\b(sp|xzr|wzr)\b")
# x86 instructions whose last operand is written without being read
_X86_PURE_WRITE = re.compile(r"^v?(p?mov|lea|p?broadcast|vbroadcast|cvt|vpbroadcast|vcvt|vperm|"
                             r"vinsert|vextract|movs|movz)")
_X86_ACCUMULATE = re.compile(r"^vf(n?)m(add|sub)")
# AArch64 instructions whose first operand is read as well as written
_ARM_ACCUMULATE = {"fmla", "fmls", "mla", "mls", "bsl", "bif", "bit", "ins", "sdot", "udot",
                   "fmlal", "fmlal2", "movk"}


STACK_REGS = {"sp", "bp", "x29"}  # x86 rsp/rbp, AArch64 sp and the frame pointer


def branches_to_itself(arch: str, last: str, n_bytes: int) -> bool:
    """Whether a block whose last instruction is ``last`` (llvm-mc's disassembly: a relative
    displacement) jumps back to its own first instruction."""
    match = re.search(r"#?(-?\d+)\s*$", last.split("//")[0].split(" # ")[0])
    if not match or not last.strip().startswith(("j", "b", "cb", "tb")):
        return False
    displacement = int(match.group(1))
    # x86 counts from the next instruction, AArch64 from the branch itself (4 bytes)
    return displacement == (-n_bytes if arch == "x86_64" else -(n_bytes - 4))


@dataclass(frozen=True)
class Instruction:
    sources: frozenset[str]  # registers and memory slots read
    targets: frozenset[str]  # registers and memory slots written
    latency: float


def _split_operands(text: str) -> list[str]:
    """Operands at bracket depth 0 (an x86 ``(%r1,%r2,4)`` or AArch64 ``[x0, #16]`` is one)."""
    parts, depth, current = [], 0, ""
    for ch in text:
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(current.strip())
            current = ""
        else:
            current += ch
    if current.strip():
        parts.append(current.strip())
    return parts


def _x86_reg(name: str) -> str:
    """One name per architectural register: ymm2/xmm2/zmm2 -> v2, eax/rax -> ax, r8d -> r8."""
    if name[1:3] == "mm" and name[0] in "xyz":
        return "v" + name[3:]
    m = re.fullmatch(r"r(\d+)[dwb]?", name)
    if m:
        return "r" + m.group(1)
    return name.lstrip("er").rstrip("lx") or name


def _arm_regs(text: str) -> set[str]:
    regs = set()
    for m in _ARM_REG.finditer(text):
        if m.group(3):
            regs.add(m.group(3).replace("wzr", "xzr"))
        else:
            regs.add(("x" if m.group(1) in "xw" else "v") + m.group(2))
    return regs


def parse(arch: str, line: str, latency: float) -> Instruction:
    """Registers and memory slots one assembly line reads and writes."""
    mnemonic, _, rest = line.strip().partition("\t")
    mnemonic = mnemonic.split()[0] if mnemonic else ""
    rest = rest.split("#")[0] if arch == "x86_64" else rest.split("//")[0]
    operands = _split_operands(rest)
    sources: set[str] = set()
    targets: set[str] = set()
    if arch == "x86_64":
        for op in operands[:-1]:
            sources |= {_x86_reg(r) for r in _X86_REG.findall(op)}
            if "(" in op:
                sources.add("mem:" + op)
        if operands:
            last = operands[-1]
            if "(" in last:  # a store: the address registers are read
                sources |= {_x86_reg(r) for r in _X86_REG.findall(last)}
                targets.add("mem:" + last)
            else:
                regs = {_x86_reg(r) for r in _X86_REG.findall(last)}
                targets |= regs
                reads_target = (len(operands) <= 2 and not _X86_PURE_WRITE.match(mnemonic)) \
                    or _X86_ACCUMULATE.match(mnemonic)
                if reads_target:
                    sources |= regs
    else:
        memory = [op for op in operands if op.startswith("[")]
        registers = [op for op in operands if not op.startswith("[") and not op.startswith("#")]
        for op in memory:
            sources |= _arm_regs(op)
            if op.endswith("!") or operands.index(op) < len(operands) - 1:  # base written back
                targets |= _arm_regs(op.split(",")[0])
        slot = ["mem:" + op for op in memory]
        if mnemonic.startswith("st"):
            sources |= set().union(*(_arm_regs(r) for r in registers))
            targets |= set(slot)
        else:
            sources |= set(slot)
            if registers:
                n_dest = 2 if mnemonic.startswith("ldp") else 1
                for r in registers[:n_dest]:
                    targets |= _arm_regs(r)
                for r in registers[n_dest:]:
                    sources |= _arm_regs(r)
                if mnemonic in _ARM_ACCUMULATE:
                    sources |= _arm_regs(registers[0])
    targets.discard("xzr")
    return Instruction(frozenset(sources), frozenset(targets), latency)


def chain_cycles(block: list[Instruction], self_loop: bool) -> float:
    """The longest latency path, per execution of the block, from a value's state at entry to
    the same value's state at exit (a loop-carried chain), over chains that pass through a
    memory slot at an address the block does not change; 0 when none does. Register-only
    chains are llvm-mca's to model. Unless the block branches to itself, only stack slots
    (spills) count: another block may move any other address between two executions."""
    written_regs = set().union(*(i.targets for i in block))
    slots = {s: _address_regs(s) for i in block for s in i.sources | i.targets
             if s.startswith("mem:")}
    fixed = {s for s, regs in slots.items() if not regs & written_regs
             and (self_loop or regs & STACK_REGS)}
    moving = slots.keys() - fixed
    stored = {t for i in block for t in i.targets} & fixed
    if not stored or not {s for i in block for s in i.sources} & stored:
        return 0.0  # nothing is stored and read back at one address
    carried = {v for i in block for v in i.sources if not v.startswith("mem:")} | stored
    longest = 0.0
    for seed in carried:
        ready = {seed: 0.0}
        through_memory = False
        for instr in block:
            times = [ready[s] for s in instr.sources - moving if s in ready]
            for target in instr.targets - moving:
                if times:
                    ready[target] = max(times) + instr.latency
                    through_memory |= target in stored
                else:
                    ready.pop(target, None)
        if through_memory and ready.get(seed, 0.0) > longest:
            longest = ready[seed]
    return longest


def _address_regs(slot: str) -> set[str]:
    text = slot[4:]
    if "%" in text:
        return {_x86_reg(r) for r in _X86_REG.findall(text)}
    return _arm_regs(text)
