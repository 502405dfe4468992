"""The `tvmc-attend` command line: every verb's --help, and every bad input a user is likely to
type ends in one `error: ...` line on stderr, a non-zero exit and no traceback.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import assert_cli_error, cli_here, output, run_cli

from tvmc_attend.targets import list_boards

DCAC_SIZE = 8


def command_paths() -> list[tuple[str, ...]]:
    """Every command and sub-command the app registers (new verbs are covered automatically)."""
    import typer

    from tvmc_attend.cli.main import app

    paths: list[tuple[str, ...]] = []

    def walk(command, prefix: tuple[str, ...]) -> None:
        # typer vendors click: a group is whatever has sub-commands
        if getattr(command, "commands", None):
            for name, sub in command.commands.items():
                paths.append((*prefix, name))
                walk(sub, (*prefix, name))

    walk(typer.main.get_command(app), ())
    return paths


COMMANDS = command_paths()


@pytest.fixture(scope="module")
def dcac_bundle(tmp_path_factory) -> Path:
    """A small host bundle (the DC-AC block at 8x8), built in-process: seconds."""
    from tvmc_attend.compiler.frontend import ModelSource
    from tvmc_attend.compiler.pipeline import compile_bundle
    from tvmc_attend.targets import get_board

    out = tmp_path_factory.mktemp("cli") / "dcac"
    compile_bundle(ModelSource("dcac", input_size=DCAC_SIZE), get_board("host"), str(out),
                   untuned=True)
    return out


@pytest.fixture
def bundle_copy(dcac_bundle, tmp_path) -> Path:
    copy = tmp_path / "copy"
    shutil.copytree(dcac_bundle, copy)
    return copy


# ---------------------------------------------------------------------------- help


def test_the_contract_verbs_are_registered() -> None:
    top = {path[0] for path in COMMANDS}
    assert {"models", "targets", "compile", "run", "tune", "device", "tracker",
            "doctor"} <= top, top
    assert {("device", "emulate"), ("device", "serve")} <= set(COMMANDS)


def test_top_level_help_lists_every_command() -> None:
    result = run_cli("--help", timeout=60)
    assert result.returncode == 0, output(result)
    assert "Usage:" in result.stdout
    for name in {path[0] for path in COMMANDS}:
        assert name in result.stdout, name
    bare = run_cli(timeout=60)  # no arguments: help, not a traceback
    assert "Usage:" in bare.stdout + bare.stderr and "Traceback" not in bare.stderr


@pytest.mark.parametrize("path", COMMANDS, ids=" ".join)
def test_command_help(path: tuple[str, ...]) -> None:
    result = cli_here(*path, "--help")
    assert result.returncode == 0, output(result)
    assert "Usage:" in result.stdout and " ".join(path) in result.stdout, output(result)
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("verb", "flags"),
    [
        ("compile", ["--model", "--target", "--output", "--untuned", "--log-dir", "--database",
                     "--input-size", "--no-fuse-dcac"]),
        ("benchmark", ["--model", "--target", "--json", "--plot", "--op", "--no-fuse-dcac"]),
        ("run", ["--input", "--output", "--repeat", "--rpc-tracker", "--rpc-key", "--rpc-host"]),
        ("tune", ["--model", "--target", "--trials", "--trials-per-task", "--log-dir",
                  "--rpc-tracker", "--rpc-key", "--rpc-host", "--no-fuse-dcac"]),
    ],
)
def test_contract_flags_are_documented(verb: str, flags: list[str]) -> None:
    result = cli_here(verb, "--help")
    for flag in flags:
        assert flag in result.stdout, f"{verb} --help lacks {flag}"


def test_targets_json_lists_the_presets() -> None:
    result = cli_here("targets", "--json")
    assert result.returncode == 0, output(result)
    names = [entry["name"] for entry in json.loads(result.stdout)]
    assert names == [board.name for board in list_boards()]
    assert {"host", "rpi4"} <= set(names)


# ---------------------------------------------------------------------------- bad inputs

# Run in a fresh process, one after the other: what each error path imported is then known.
_ERROR_PATHS_WITHOUT_TVM = """
import json, sys
from tvmc_attend.cli.main import run
seen = []
for args in json.loads(sys.argv[1]):
    code = run(args)
    seen.append([args, code, "tvm" in sys.modules])
print(json.dumps(seen))
"""


def test_error_paths_never_import_tvm(dcac_bundle, tmp_path) -> None:
    """Arguments, paths, files and databases are checked before TVM is imported (seconds):
    the error paths of compile, run, tune and benchmark end without it."""
    out = str(tmp_path / "out")
    a_file = tmp_path / "file"
    a_file.write_text("x")
    np.save(tmp_path / "x.npy", np.zeros((1, 3, 8, 8), np.float32))
    not_a_bundle = tmp_path / "empty"
    not_a_bundle.mkdir()
    cases = [
        ["compile", "--model", "resnet9000", "-o", out],
        ["compile", "--model", "dcac", "--target", "rpi9", "-o", out],
        ["compile", "--model", str(tmp_path / "absent.onnx"), "-o", out],
        ["compile", "--model", "attendnext", "--input-size", "100", "-o", out],
        ["compile", "--model", "dcac", "--database", str(tmp_path / "nodb"), "-o", out],
        ["compile", "--model", "dcac", "--checkpoint", str(tmp_path / "absent.pt"), "-o", out],
        ["compile", "--model", "dcac", "-o", str(a_file)],
        ["run", str(tmp_path / "nowhere")],
        ["run", str(not_a_bundle)],
        ["run", str(dcac_bundle), "--input", str(tmp_path / "x.npy")],
        ["tune", "--model", "resnet9000", "--log-dir", str(tmp_path)],
        ["tune", "--model", "dcac", "--target", "rpi4", "--log-dir", str(tmp_path)],
        ["tune", "--model", "dcac", "--log-dir", str(tmp_path), "--warm-start-from",
         str(tmp_path / "nowhere")],
        ["benchmark", "--model", "resnet9000"],
        ["benchmark", "--model", "dcac", "--target", "rpi9"],
    ]
    result = subprocess.run([sys.executable, "-c", _ERROR_PATHS_WITHOUT_TVM,
                             json.dumps(cases)], capture_output=True, text=True, timeout=300,
                            check=False, cwd=tmp_path)
    assert result.returncode == 0, output(result)
    seen = json.loads(result.stdout.strip().splitlines()[-1])
    assert [code for _args, code, _tvm in seen] == [2] * len(cases), output(result)
    assert [args for args, _code, tvm in seen if tvm] == [], output(result)
    assert result.stderr.count("error: ") == len(cases), output(result)


@pytest.mark.parametrize("verb", ["compile", "tune"])
def test_unknown_target_lists_the_valid_ones(verb, tmp_path) -> None:
    extra = ["-o", str(tmp_path / "out")] if verb == "compile" else ["--log-dir", str(tmp_path)]
    result = cli_here(verb, "--model", "dcac", "--target", "rpi9", *extra)
    message = assert_cli_error(result, "unknown target 'rpi9'", "valid targets:")
    for board in list_boards():
        assert board.name in message
    assert not (tmp_path / "out").exists()


def test_unknown_model_lists_the_valid_ones(tmp_path) -> None:
    result = cli_here("compile", "--model", "resnet9000", "--target", "host", "-o",
                     tmp_path / "out")
    assert_cli_error(result, "'resnet9000'", "valid models:", "attendnext", "dcac")
    assert not (tmp_path / "out").exists()


def test_missing_model_file(tmp_path) -> None:
    result = cli_here("compile", "--model", tmp_path / "absent.onnx", "--target", "host", "-o",
                     tmp_path / "out")
    assert_cli_error(result, "absent.onnx", "does not exist")


def test_output_over_a_non_bundle_directory_is_refused(tmp_path) -> None:
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me\n")
    result = cli_here("compile", "--model", "dcac", "--input-size", DCAC_SIZE, "--target", "host",
                     "-o", precious, "--untuned")
    assert_cli_error(result, str(precious), "not a tvmc-attend bundle")
    assert [p.name for p in precious.iterdir()] == ["notes.txt"]
    assert (precious / "notes.txt").read_text() == "keep me\n"


def test_output_over_a_file_is_refused(tmp_path) -> None:
    target = tmp_path / "file"
    target.write_text("x")
    result = cli_here("compile", "--model", "dcac", "--input-size", DCAC_SIZE, "--target", "host",
                     "-o", target, "--untuned")
    assert_cli_error(result, "is a file")
    assert target.read_text() == "x"


def test_missing_database_is_refused(tmp_path) -> None:
    result = cli_here("compile", "--model", "dcac", "--input-size", DCAC_SIZE, "--target", "host",
                     "-o", tmp_path / "out", "--database", tmp_path / "nodb")
    assert_cli_error(result, "no tuning database at", "nodb")


@pytest.mark.parametrize("flag, fused", [(None, 1), ("--no-fuse-dcac", 0)])
def test_compile_records_how_many_dcac_blocks_were_fused(flag, fused, tmp_path) -> None:
    out = tmp_path / "bundle"
    result = cli_here("compile", "--model", "dcac", "--input-size", DCAC_SIZE, "--target", "host",
                     "-o", out, "--untuned", *([flag] if flag else []))
    assert result.returncode == 0, output(result)
    assert f"{fused} DC-AC blocks fused" in result.stdout
    assert json.loads((out / "metadata.json").read_text())["fused_dcac"] == fused


@pytest.mark.parametrize("args, fragment", [
    ((), "missing --model"),
    (("--op", "conv9"), "unknown operator 'conv9' for --op; valid: dcac"),
    (("--op", "dcac", "--emulate"), "--op measures on this host only"),
    (("--op", "cache-flush", "--target", "rpi4"), "measures on this host; use --target host"),
    (("--op", "cache-flush", "--model", "dcac", "--log-dir", "no-such-dir"),
     "no tuning database at"),
    (("--op", "in-model", "--target", "rpi4"), "measures on this host; use --target host"),
])
def test_benchmark_bad_flags(args, fragment) -> None:
    assert_cli_error(cli_here("benchmark", *args), fragment)


def test_recompiling_over_a_bundle_replaces_it(dcac_bundle, bundle_copy) -> None:
    """-o may point at an earlier bundle: it is replaced atomically."""
    from tvmc_attend.compiler.frontend import ModelSource
    from tvmc_attend.compiler.pipeline import compile_bundle
    from tvmc_attend.targets import get_board

    (bundle_copy / "stale.txt").write_text("old")
    meta = compile_bundle(ModelSource("dcac", input_size=DCAC_SIZE), get_board("host"),
                          str(bundle_copy), untuned=True).metadata
    assert not (bundle_copy / "stale.txt").exists()
    assert json.loads((bundle_copy / "metadata.json").read_text()) == meta.to_json()
    assert not [p for p in bundle_copy.parent.iterdir() if p.name.startswith(".bundle-")]


def test_bundle_metadata_reads_back_as_written(dcac_bundle) -> None:
    from tvmc_attend.compiler.bundle import Bundle

    text = (dcac_bundle / "metadata.json").read_text()
    meta = Bundle.open(str(dcac_bundle)).metadata
    assert json.dumps(meta.to_json(), indent=2) + "\n" == text  # byte for byte
    assert meta.verified is None and meta.input.shape == (1, 40, DCAC_SIZE, DCAC_SIZE)


def test_run_wrong_input_shape(dcac_bundle, tmp_path) -> None:
    np.save(tmp_path / "x.npy", np.zeros((1, 3, 8, 8), np.float32))
    result = cli_here("run", dcac_bundle, "--input", tmp_path / "x.npy")
    assert_cli_error(result, "input shape (1, 3, 8, 8) does not match", "(1, 40, 8, 8)")


def test_run_wrong_input_dtype(dcac_bundle, tmp_path) -> None:
    np.save(tmp_path / "x.npy", np.zeros((1, 40, 8, 8), np.float64))
    result = cli_here("run", dcac_bundle, "--input", tmp_path / "x.npy")
    assert_cli_error(result, "dtype float64 does not match")


def test_run_npy_on_the_dcac_bundle_works(dcac_bundle, tmp_path) -> None:
    """Control for the error tests above: the same bundle runs (a non-classifier output)."""
    x = np.random.default_rng(0).standard_normal((1, 40, 8, 8)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    result = cli_here("run", dcac_bundle, "--input", tmp_path / "x.npy", "--output",
                     tmp_path / "y.npy", "--repeat", 2)
    assert result.returncode == 0, output(result)
    assert "output [1, 40, 8, 8]: mean" in result.stdout and "latency: median" in result.stdout
    assert np.load(tmp_path / "y.npy").shape == (1, 40, 8, 8)


def test_run_tampered_library(bundle_copy) -> None:
    meta = json.loads((bundle_copy / "metadata.json").read_text())
    library = bundle_copy / meta["library"]["file"]
    data = bytearray(library.read_bytes())
    data[len(data) // 2] ^= 0x01
    library.write_bytes(bytes(data))
    result = cli_here("run", bundle_copy)
    assert_cli_error(result, "does not match the sha256", "recompile")


def test_run_missing_library(bundle_copy) -> None:
    meta = json.loads((bundle_copy / "metadata.json").read_text())
    (bundle_copy / meta["library"]["file"]).unlink()
    result = cli_here("run", bundle_copy)
    assert_cli_error(result, "lacks its library")


def test_run_missing_metadata(bundle_copy) -> None:
    (bundle_copy / "metadata.json").unlink()
    result = cli_here("run", bundle_copy)
    assert_cli_error(result, "has no metadata.json", "not a tvmc-attend bundle")


def test_run_damaged_metadata(bundle_copy) -> None:
    (bundle_copy / "metadata.json").write_text("{ not json")
    result = cli_here("run", bundle_copy)
    assert_cli_error(result, "is not valid JSON")


def test_run_bundle_that_does_not_exist(tmp_path) -> None:
    result = cli_here("run", tmp_path / "nowhere")
    assert_cli_error(result, "nowhere", "does not exist")


def test_run_unsupported_input_type(dcac_bundle, tmp_path) -> None:
    (tmp_path / "x.txt").write_text("1 2 3\n")
    result = cli_here("run", dcac_bundle, "--input", tmp_path / "x.txt")
    assert_cli_error(result, "unsupported input", "x.txt", ".npy")


def test_run_missing_input_file(dcac_bundle, tmp_path) -> None:
    result = cli_here("run", dcac_bundle, "--input", tmp_path / "absent.npy")
    assert_cli_error(result, "absent.npy", "does not exist")


def test_run_image_on_a_non_image_model(dcac_bundle, tmp_path) -> None:
    from PIL import Image

    Image.new("RGB", (8, 8)).save(tmp_path / "x.png")
    result = cli_here("run", dcac_bundle, "--input", tmp_path / "x.png")
    assert_cli_error(result, "an image input needs a model with input 1x3xHxW")


@pytest.mark.parametrize(
    ("flags", "fragment"),
    [
        (["--rpc-tracker", "localhost", "--rpc-key", "k"], "--rpc-tracker expects HOST:PORT"),
        (["--rpc-tracker", "127.0.0.1:notaport", "--rpc-key", "k"], "expects HOST:PORT"),
        (["--rpc-host", "127.0.0.1"], "--rpc-host expects HOST:PORT"),
        (["--rpc-tracker", "127.0.0.1:9190", "--rpc-host", "127.0.0.1:9090"], "not both"),
    ],
)
def test_run_malformed_rpc_flags(dcac_bundle, flags, fragment) -> None:
    result = cli_here("run", dcac_bundle, *flags)
    assert_cli_error(result, fragment)


def test_tune_malformed_rpc_tracker(tmp_path) -> None:
    result = cli_here("tune", "--model", "dcac", "--target", "rpi4", "--rpc-tracker",
                     "no-port-here", "--log-dir", tmp_path)
    assert_cli_error(result, "--rpc-tracker expects HOST:PORT", "no-port-here")
    assert not any(tmp_path.iterdir())


def test_tune_board_without_device(tmp_path) -> None:
    result = cli_here("tune", "--model", "dcac", "--input-size", DCAC_SIZE, "--target", "rpi4",
                     "--log-dir", tmp_path)
    assert_cli_error(result, "rpi4 is a board", "--rpc-tracker")
    assert not any(tmp_path.iterdir())


def test_tune_unreachable_tracker_is_fast(tmp_path) -> None:
    from tvmc_attend.device.endpoints import free_port

    port = free_port()
    result = cli_here("tune", "--model", "dcac", "--input-size", DCAC_SIZE, "--target", "rpi4",
                     "--rpc-tracker", f"127.0.0.1:{port}", "--rpc-key", "rpi4", "--log-dir",
                     tmp_path)
    assert_cli_error(result, f"cannot reach RPC tracker at 127.0.0.1:{port}")


def test_report_tables_print_whole_in_a_log(capsys) -> None:
    """Not on a terminal, a table is as wide as its numbers need: no label split over two
    lines, no number cut short (a loaded machine's 1000x ratios once wrapped "PyTorch eager")."""
    from rich.table import Table

    from tvmc_attend.cli.report import show_report

    table = Table(title="wide")
    for col in ("variant", *(f"ratio {i}" for i in range(12))):
        table.add_column(col, justify="left" if col == "variant" else "right")
    table.add_row("PyTorch eager", *["1003.62x"] * 12)
    show_report(object(), [table], ["a note"], width=60)
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if "PyTorch eager" in line)
    assert row.count("1003.62x") == 12 and "…" not in out
