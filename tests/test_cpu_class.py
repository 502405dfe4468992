"""Host databases are keyed by CPU class: every CPU of a class applies them, a wider CPU
applies a narrower class's database by compiling that class's code, and nothing here needs TVM
(the choice is made from /proc/cpuinfo flags and tuning.json files before any import)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import REPO, assert_cli_error, cli_here, output

from tvmc_attend.compiler.build_board import build_board
from tvmc_attend.targets import cpu_class, get_board
from tvmc_attend.targets.cpu_class import CLASSES, classes_here, host_class

# /proc/cpuinfo flags of real CPUs (abridged to what the classes look at, plus noise)
ZEN1 = frozenset("fpu sse4_2 avx avx2 fma bmi1 bmi2 f16c movbe sha_ni".split())
ROCKET_LAKE = ZEN1 | frozenset("avx512f avx512cd avx512bw avx512dq avx512vl avx512_vnni".split())
KNIGHTS_LANDING = ZEN1 | frozenset("avx512f avx512cd avx512er avx512pf".split())
SANDY_BRIDGE = frozenset("fpu sse4_2 avx".split())


@pytest.mark.parametrize("flags, expected", [
    (ROCKET_LAKE, ["x86-64-avx512", "x86-64-avx2"]),
    (ZEN1, ["x86-64-avx2"]),
    (KNIGHTS_LANDING, ["x86-64-avx2"]),  # AVX-512F without BW/DQ/VL: skylake-avx512 code faults
    (SANDY_BRIDGE, []),
], ids=["rocket-lake", "zen1", "knights-landing", "sandy-bridge"])
def test_classes_a_cpu_runs(flags, expected) -> None:
    assert [c.name for c in classes_here(flags)] == expected
    assert (host_class(flags).name if expected else None) == (expected[0] if expected else None)


def test_host_shares_its_class_folder() -> None:
    host = get_board("host")
    if host.isa_class is None:
        pytest.skip("not an x86-64 CPU with AVX2")
    assert host.database_name == host.isa_class.preset
    assert get_board(host.isa_class.preset).isa_class is host.isa_class
    assert get_board("rpi4").database_name == "rpi4" and get_board("rpi4").isa_class is None


def _database(log_dir: Path, preset: str, model: str, lowering: str = "blocked-v1") -> Path:
    """A tuning.json as `tune` writes it (build_board reads nothing else)."""
    db = log_dir / preset / model
    db.mkdir(parents=True)
    board = get_board(preset)
    (db / "tuning.json").write_text(json.dumps({
        "model": model, "target_name": preset, "target": board.target, "lowering": lowering,
        "cpu_class": board.isa_class.name, "tuned_on": ["a test"]}))
    (db / "database_tuning_record.json").write_text("")
    return db


@pytest.mark.parametrize("cpu, tuned, chosen", [
    (ROCKET_LAKE, ["host-avx512", "host-avx2"], "host"),  # its own class wins
    (ROCKET_LAKE, ["host-avx2"], "host-avx2"),  # only a narrower one: compile its code
    (ZEN1, ["host-avx512", "host-avx2"], "host"),  # the AVX2 one is its own
    (ZEN1, ["host-avx512"], "host"),  # cannot run AVX-512 code: untuned, native
    (ROCKET_LAKE, [], "host"),
], ids=["own-class", "narrower", "avx2-cpu", "wider-only", "none"])
def test_build_board_picks_the_widest_database_that_runs(tmp_path, monkeypatch, cpu, tuned,
                                                         chosen) -> None:
    monkeypatch.setattr(cpu_class, "cpu_flags", lambda: cpu)
    monkeypatch.setattr(cpu_class.platform, "machine", lambda: "x86_64")
    for preset in tuned:
        _database(tmp_path, preset, "attendnext")
    notes: list[str] = []
    board = build_board(get_board("host"), "attendnext", str(tmp_path), warn=notes.append)
    assert board.name == chosen
    assert bool(notes) == (chosen != "host"), notes
    if notes:
        assert "x86-64-avx2" in notes[0] and "host-avx2" in notes[0]


def test_build_board_ignores_another_lowering_and_untuned(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(cpu_class, "cpu_flags", lambda: ROCKET_LAKE)
    monkeypatch.setattr(cpu_class.platform, "machine", lambda: "x86_64")
    _database(tmp_path, "host-avx2", "attendnext", lowering="nhwc-v1")
    host = get_board("host")
    assert build_board(host, "attendnext", str(tmp_path)).name == "host"
    assert build_board(host, "attendnext", str(tmp_path), layout="nhwc").name == "host-avx2"
    assert build_board(host, "attendnext", str(tmp_path), layout="nhwc",
                       untuned=True).name == "host"


def test_every_committed_host_database_names_its_class_and_machine() -> None:
    dbs = sorted((REPO / "tuning_logs").glob("host-*/*/tuning.json"))
    assert dbs, "no committed host databases"
    for path in dbs:
        info = json.loads(path.read_text())
        assert info["cpu_class"] == CLASSES[info["cpu_class"]].name, path
        assert path.parent.parent.name == CLASSES[info["cpu_class"]].preset, path
        assert info["tuned_on"] and all("TVM thread" in m for m in info["tuned_on"]), path


def test_a_class_preset_refuses_a_cpu_that_cannot_run_it(monkeypatch) -> None:
    from tvmc_attend.errors import UserError
    from tvmc_attend.targets import board as board_module

    monkeypatch.setattr(board_module, "cpu_flags", lambda: ZEN1)
    with pytest.raises(UserError, match="needs a CPU with avx512"):
        get_board("host-avx512").check_runs_here()
    get_board("host-avx2").check_runs_here()


def test_choosing_the_class_imports_no_tvm() -> None:
    code = ("import sys; from tvmc_attend.compiler.build_board import build_board; "
            "from tvmc_attend.targets import get_board; "
            "b = build_board(get_board('host'), 'attendnext', 'tuning_logs', warn=print); "
            "print(b.name, 'tvm' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=REPO, timeout=120, check=False)
    assert result.returncode == 0, output(result)
    assert result.stdout.split()[-1] == "False", output(result)


def test_unknown_class_preset_on_cli(tmp_path) -> None:
    result = cli_here("compile", "--model", "dcac", "--target", "host-avx3", "-o",
                     tmp_path / "x")
    assert_cli_error(result, "unknown target 'host-avx3'", "host-avx2", "host-avx512")


def test_shipped_databases_are_found_from_any_directory(tmp_path, monkeypatch) -> None:
    """Package data: a user elsewhere gets the shipped database; their own ./tuning_logs
    one (what `tune` writes) wins over it; --log-dir is taken as given."""
    from tvmc_attend.compiler.tuning.database import TuningDatabase

    rpi4 = get_board("rpi4")
    monkeypatch.chdir(tmp_path)
    shipped = TuningDatabase.to_apply(None, rpi4, "attendnext")
    assert shipped.exists() and Path(shipped.path) == REPO / "tuning_logs" / "rpi4" / "attendnext"
    own = _database(tmp_path / "tuning_logs", "host-avx2", "attendnext").parent.parent
    assert TuningDatabase.to_apply(None, get_board("host-avx2"), "attendnext").path == \
        str(own / "host-avx2" / "attendnext")
    given = TuningDatabase.to_apply(str(tmp_path / "elsewhere"), rpi4, "attendnext")
    assert given.path == str(tmp_path / "elsewhere" / "rpi4" / "attendnext")
    assert not given.exists()
