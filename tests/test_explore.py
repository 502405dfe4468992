"""`tvmc-attend explore`: the design space, the NASWOT proxy, Pareto fronts, and a tiny seeded
search on the host that is reproducible, respects --max-params and whose front members compile
by name.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import REPO, cli_env, cli_path, output, run_cli
from torch import nn

from tvmc_attend.errors import UserError
from tvmc_attend.explore.design_space import mutate, sample
from tvmc_attend.explore.naswot import naswot_score
from tvmc_attend.explore.pareto import Objective, pareto_front, pareto_layers
from tvmc_attend.explore.search import ExploreOptions, screen
from tvmc_attend.models import DCAC, create_model
from tvmc_attend.models.design import NAME_PREFIX, Design, build_model
from tvmc_attend.models.stats import count_params

# ------------------------------------------------------------------------------- design space


def test_reconstruction_is_the_default_design() -> None:
    design = Design()
    assert design.name.startswith(NAME_PREFIX)
    assert count_params(build_model(design)) == count_params(create_model("attendnext",
                                                                          input_size=32))


def test_design_names_are_stable_and_round_trip() -> None:
    design = Design(widths=(32, 72, 152, 328), depths=(2, 2, 6, 2),
                    dcac=(True, False, True, False), dcac_reduction=8, groups=8)
    again = Design.from_dict(json.loads(json.dumps(design.as_dict())))
    assert again == design and again.name == design.name
    assert design.name != Design().name


def test_sampled_and_mutated_designs_obey_the_constraints() -> None:
    rng = random.Random(7)
    designs = [sample(rng) for _ in range(40)]
    designs += [mutate(d, rng) for d in designs]
    for d in designs:
        d.validate()  # early attention, >= 2 columns, widths split into columns, never shrink
    assert [sample(random.Random(3)) for _ in range(3)] == [sample(random.Random(3))
                                                            for _ in range(3)]


def test_dcac_placement_decides_which_stages_attend() -> None:
    model = build_model(Design(dcac=(True, False, True, False)))
    assert sum(isinstance(m, DCAC) for m in model.modules()) == 2
    with torch.no_grad():
        assert model.eval()(torch.zeros(1, 3, 32, 32)).shape == (1, 1000)


def test_a_design_outside_the_space_is_a_one_line_user_error() -> None:
    data = Design().as_dict() | {"dcac": [False, True, True, True]}
    with pytest.raises(UserError) as excinfo:
        Design.from_dict(data)
    assert "early self-attention" in str(excinfo.value) and "\n" not in str(excinfo.value)


# -------------------------------------------------------------------------------------- NASWOT


def _brute_force_naswot(model: nn.Module, x: torch.Tensor) -> float:
    """log|det K_H| with K_H[i, j] = N_A - Hamming(c_i, c_j), codes from pre-activations."""
    codes = []
    hooks = [m.register_forward_pre_hook(lambda _m, inp: codes.append(inp[0].flatten(1) > 0))
             for m in model.modules() if isinstance(m, (nn.ReLU, nn.SiLU))]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    c = torch.cat(codes, 1).numpy()
    n_a = c.shape[1]
    kernel = np.array([[n_a - np.sum(a != b) for b in c] for a in c], dtype=np.float64)
    return float(np.linalg.slogdet(kernel)[1])


def test_naswot_is_the_papers_kernel_and_deterministic() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.SiLU(),
                          nn.Flatten()).eval()
    score = naswot_score(model, (1, 3, 8, 8), batch=6, seed=1)
    x = torch.randn((6, 3, 8, 8), generator=torch.Generator().manual_seed(1))
    assert score == pytest.approx(_brute_force_naswot(model, x), rel=1e-9)
    assert score == naswot_score(model, (1, 3, 8, 8), batch=6, seed=1)
    with pytest.raises(ValueError):
        naswot_score(nn.Conv2d(3, 3, 1), (1, 3, 8, 8))


# ---------------------------------------------------------------------------------- Pareto


def test_pareto_front_treats_latency_within_the_band_as_equal() -> None:
    a = {"proxy": 1.0, "ms": 10.0, "params": 5}
    b = {"proxy": 1.2, "ms": 10.5, "params": 5}  # better proxy, 5 % slower
    c = {"proxy": 0.9, "ms": 12.0, "params": 6}  # worse everywhere
    exact = [Objective(key=lambda d: d["proxy"], maximize=True),
             Objective(key=lambda d: d["ms"]), Objective(key=lambda d: d["params"])]
    banded = [exact[0], Objective(key=lambda d: d["ms"], tolerance=0.1), exact[2]]
    assert pareto_front([a, b, c], exact) == [a, b]
    assert pareto_front([a, b, c], banded) == [b]  # a is no faster than b within the band
    assert pareto_layers([a, b, c], banded) == [[b], [a], [c]]


# ------------------------------------------------------------------------- end to end (host)

BUDGET = 4
SIZE = 32
MAX_PARAMS = 3_000_000
EXPLORE_ARGS = ("explore", "--target", "host", "--max-params", MAX_PARAMS, "--budget", BUDGET,
                "--screen", 6, "--seed", 3, "--input-size", SIZE, "--rounds", 2)


@pytest.fixture(scope="module")
def explored(tmp_path_factory) -> tuple[Path, dict, dict]:
    """The same seeded search twice (the second reuses the first's untuned bundles, but
    screens, orders, times and picks its front from scratch)."""
    out = tmp_path_factory.mktemp("explored")
    reports = []
    for run in (1, 2):
        json_path, plot_path = out / f"run{run}.json", out / f"run{run}.png"
        result = run_cli(*EXPLORE_ARGS, "--out", out, "--json", json_path, "--plot", plot_path,
                         timeout=900)
        assert result.returncode == 0, output(result)
        assert "Pareto front" in result.stdout and "Traceback" not in result.stderr
        assert plot_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        reports.append(json.loads(json_path.read_text()))
    return out, reports[0], reports[1]


def _front_of(report: dict) -> list[str]:
    """The Pareto front recomputed from a report's measured candidates."""
    objectives = (Objective(key=lambda c: c["naswot"], maximize=True),
                  Objective(key=lambda c: c["latency"]["median_ms"],
                            tolerance=report["latency_tolerance"]),
                  Objective(key=lambda c: c["params"]))
    measured = [c for c in report["candidates"] if c["status"] == "measured"]
    return [c["name"] for c in pareto_front(measured, objectives)]


@pytest.mark.slow
def test_explore_is_reproducible_for_a_seed(explored) -> None:
    """The seed fixes what is screened, scored and measured. The front also depends on the
    measured latencies: within the noise band it is the same, beyond it (a loaded machine)
    it may differ, so each run's front is checked against its own measurements."""
    _, first, second = explored
    screened = [(c["name"], c["params"], c["naswot"], c["status"]) for c in first["candidates"]]
    assert screened == [(c["name"], c["params"], c["naswot"], c["status"])
                        for c in second["candidates"]]
    for report in (first, second):
        assert report["front"] and sorted(report["front"]) == sorted(_front_of(report))


@pytest.mark.slow
def test_explore_respects_max_params_and_documents_its_report(explored) -> None:
    out, report, _ = explored
    for key in ("kind", "target", "emulated", "threads", "date", "machine", "seed", "budget",
                "max_params", "max_latency_ms", "input_size", "proxy", "notes", "front",
                "candidates"):
        assert key in report, key
    assert report["threads"] == len(os.sched_getaffinity(0))
    assert all(c["params"] <= MAX_PARAMS for c in report["candidates"])
    measured = [c for c in report["candidates"] if c["status"] == "measured"]
    assert len(measured) == BUDGET
    for c in measured:
        assert c["latency"]["median_ms"] > 0 and c["latency"]["emulated"] is False
        assert c["latency"]["max_rel_err_vs_torch"] <= 1e-5
    for name in report["front"]:
        saved = json.loads((out / f"{name}.json").read_text())
        assert saved["name"] == name and Design.from_dict(saved["design"]).name == name
    assert "reduced" in report["notes"][0]


@pytest.mark.slow
def test_front_member_compiles_by_name(explored, tmp_path) -> None:
    out, report, _ = explored
    name = report["front"][0]
    bundle = tmp_path / "bundle"
    env = cli_env() | {"TVMC_ATTEND_EXPLORED": str(out)}
    result = run_cli_env(env, "compile", "--model", name, "--target", "host", "--input-size",
                         SIZE, "--untuned", "-o", bundle)
    assert result.returncode == 0, output(result)
    meta = json.loads((bundle / "metadata.json").read_text())
    assert meta["model"] == name and meta["input"]["shape"] == [1, 3, SIZE, SIZE]


def run_cli_env(env: dict[str, str], *args) -> subprocess.CompletedProcess:
    """``run_cli`` with an environment of our own (the saved designs' directory)."""
    return subprocess.run([cli_path(), *map(str, args)], capture_output=True, text=True,
                          timeout=900, check=False, cwd=REPO, env=env)


def test_an_impossible_parameter_limit_is_refused_before_any_work() -> None:
    with pytest.raises(UserError, match="raise --max-params") as excinfo:
        screen(ExploreOptions(max_params=1000, budget=1))
    assert "\n" not in str(excinfo.value)
