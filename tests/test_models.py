"""Model zoo: registry, AttendNeXt size, DC-AC shapes, seeded init, checkpoints.

Kept fast (64x64 inputs; only the size test builds at 224, one forward under the FLOP counter).
"""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from tvmc_attend.errors import UserError
from tvmc_attend.models import (
    ModelStats,
    create_model,
    get_model_spec,
    list_models,
    model_stats,
)

ZOO = [
    "attendnext",
    "attendnext_s",
    "dcac",
    "mobilenetv3_large_100",
    "mobileone_s1",
    "fbnetc_100",
    "mobilevit_xs",
]
SMALL = 64


def _inputs(shape: tuple[int, ...], n: int = 2, seed: int = 1234) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=generator) for _ in range(n)]


def _run(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x)


def _assert_one_line_error(excinfo: pytest.ExceptionInfo, *fragments: str) -> None:
    message = str(excinfo.value)
    assert "\n" not in message, message
    for fragment in fragments:
        assert fragment in message, message


def _assert_non_degenerate(model: torch.nn.Module, shape: tuple[int, ...]) -> None:
    """The output must depend on the input, and differ across classes (no collapse to the bias)."""
    a, b = (_run(model, x) for x in _inputs(shape))
    assert torch.isfinite(a).all() and torch.isfinite(b).all()
    assert ((a - b).norm() / a.norm()).item() > 1e-2
    assert (a.std() / a.abs().mean()).item() > 1e-3


@pytest.fixture(scope="module")
def attendnext_small() -> torch.nn.Module:
    return create_model("attendnext", input_size=SMALL, seed=0)


# ----------------------------------------------------------------------------------- registry


def test_list_models_has_the_zoo_in_order() -> None:
    specs = list_models()
    assert [s.name for s in specs] == ZOO
    for spec in specs:
        assert spec.description
        assert spec.family == ("timm" if spec.name not in ZOO[:3] else "attendnext")
    assert get_model_spec("attendnext").default_input_shape == (1, 3, 224, 224)
    assert get_model_spec("dcac").default_input_shape == (1, 40, 56, 56)


def test_unknown_model_names_the_valid_ones() -> None:
    with pytest.raises(UserError) as excinfo:
        get_model_spec("resnet9000")
    _assert_one_line_error(excinfo, "'resnet9000'", "valid models:", "attendnext", "mobilevit_xs")


@pytest.mark.parametrize("size", [100, 0, -32])
def test_input_size_must_be_multiple_of_32(size: int) -> None:
    with pytest.raises(UserError) as excinfo:
        create_model("attendnext", input_size=size)
    _assert_one_line_error(excinfo, "multiple of 32")


def test_dcac_has_no_classifier() -> None:
    with pytest.raises(UserError) as excinfo:
        create_model("dcac", num_classes=10)
    _assert_one_line_error(excinfo, "no classifier")


def test_import_does_not_load_timm() -> None:
    code = "import sys, tvmc_attend.models; sys.exit('timm' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


# ----------------------------------------------------------------------------------- hub names


@pytest.mark.parametrize(("name", "shape"), [
    ("torchvision:resnet18", (1, 3, 224, 224)),
    ("torchvision:inception_v3", (1, 3, 299, 299)),  # the size its weights were trained at
    ("timm:efficientnet_b3", (1, 3, 288, 288)),
    ("timm:mobilenetv3_small_050", (1, 3, 224, 224)),
])
def test_hub_names_resolve_offline_at_their_trained_size(name, shape) -> None:
    spec = get_model_spec(name)
    assert spec.name == name and spec.family == name.split(":")[0]
    assert spec.default_input_shape == shape
    assert [s.name for s in list_models()] == ZOO, "a hub name is not listed in the zoo"


@pytest.mark.parametrize(("name", "fragments"), [
    ("timm:resnet19", ("timm has no model 'resnet19'", "timm:resnet18", "models --all")),
    ("torchvision:resnet", ("torchvision has no model 'resnet'", "torchvision:resnet18")),
    ("hub:resnet18", ("unknown model 'hub:resnet18'", "timm:<name>")),
])
def test_unknown_hub_name_suggests_the_closest(name, fragments) -> None:
    with pytest.raises(UserError) as excinfo:
        get_model_spec(name)
    _assert_one_line_error(excinfo, *fragments)


@pytest.mark.parametrize("name", ["timm:mobilenetv3_small_050", "torchvision:squeezenet1_1"])
def test_hub_models_are_seeded_and_not_degenerate(name) -> None:
    """Random weights from the seed (no download), any input size, the classes asked for."""
    model = create_model(name, input_size=65, num_classes=7, seed=3)
    again = create_model(name, input_size=65, num_classes=7, seed=3)
    (x,) = _inputs((1, 3, 65, 65), n=1)
    assert _run(model, x).shape == (1, 7)
    assert torch.equal(_run(model, x), _run(again, x))
    _assert_non_degenerate(model, (2, 3, 65, 65))


# ----------------------------------------------------------------------------------- architecture


def test_attendnext_size_at_224() -> None:
    spec = get_model_spec("attendnext")
    torch.manual_seed(0)
    stats = model_stats(spec.factory(), spec.default_input_shape)
    assert isinstance(stats, ModelStats)
    assert isinstance(stats.params, int) and isinstance(stats.macs, int)
    assert 3.8e6 <= stats.params <= 3.9e6, stats
    assert 0.5e9 <= stats.macs <= 0.65e9, stats
    small = get_model_spec("attendnext_s").factory()
    assert model_stats(small, (1, 3, SMALL, SMALL)).params < stats.params


@pytest.mark.parametrize("size", [7, 56])
def test_dcac_keeps_the_input_shape(size: int) -> None:
    model = create_model("dcac", input_size=size)
    shape = get_model_spec("dcac").input_shape(size)
    assert shape == (1, 40, size, size)
    (x,) = _inputs(shape, n=1)
    assert _run(model, x).shape == x.shape


def test_attendnext_s_runs_small() -> None:
    model = create_model("attendnext_s", input_size=SMALL)
    (x,) = _inputs((1, 3, SMALL, SMALL), n=1)
    assert _run(model, x).shape == (1, 1000)


# ----------------------------------------------------------------------------------- weights


def test_seed_determines_the_weights(attendnext_small: torch.nn.Module) -> None:
    (x,) = _inputs((1, 3, SMALL, SMALL), n=1)
    reference = _run(attendnext_small, x)
    same = _run(create_model("attendnext", input_size=SMALL, seed=0), x)
    other = _run(create_model("attendnext", input_size=SMALL, seed=1), x)
    assert torch.equal(reference, same)
    assert not torch.allclose(reference, other, rtol=1e-3, atol=0)


def test_attendnext_outputs_are_not_degenerate(attendnext_small: torch.nn.Module) -> None:
    assert not attendnext_small.training
    _assert_non_degenerate(attendnext_small, (2, 3, SMALL, SMALL))


def test_timm_peer_outputs_are_not_degenerate() -> None:
    model = create_model("mobilenetv3_large_100", input_size=SMALL, num_classes=100)
    assert not model.training
    (x,) = _inputs((1, 3, SMALL, SMALL), n=1)
    assert _run(model, x).shape == (1, 100)
    _assert_non_degenerate(model, (2, 3, SMALL, SMALL))


@pytest.mark.parametrize("wrap", [None, "state_dict", "model"])
def test_checkpoint_round_trip(attendnext_small: torch.nn.Module, tmp_path, wrap) -> None:
    state = attendnext_small.state_dict()
    path = tmp_path / "attendnext.pt"
    torch.save(state if wrap is None else {wrap: state, "epoch": 3}, path)
    loaded = create_model("attendnext", input_size=SMALL, checkpoint=path, seed=7)
    (x,) = _inputs((1, 3, SMALL, SMALL), n=1)
    assert torch.equal(_run(loaded, x), _run(attendnext_small, x))


def _missing_keys(state: dict) -> dict:
    return {k: v for k, v in state.items() if not k.startswith("stages.3.")}


def _extra_key(state: dict) -> dict:
    return {**state, "head.extra.weight": torch.zeros(3)}


def _wrong_shape(state: dict) -> dict:
    torch.manual_seed(0)
    return get_model_spec("attendnext").factory(num_classes=10).state_dict()


@pytest.mark.parametrize(
    ("make", "fragments"),
    [
        (_missing_keys, ("does not fit attendnext", "missing keys (e.g. stages.3.")),
        (_extra_key, ("does not fit attendnext", "1 unexpected keys (e.g. head.extra.weight)")),
        (_wrong_shape, ("2 shape mismatches", "checkpoint [10, 744] vs model [1000, 744]")),
        (lambda state: torch.zeros(3), ("is not a state dict",)),
        (lambda state: {"epoch": 3}, ("is not a state dict",)),
    ],
)
def test_wrong_checkpoint_is_a_user_error(attendnext_small, tmp_path, make, fragments) -> None:
    path = tmp_path / "bad.pt"
    torch.save(make(attendnext_small.state_dict()), path)
    with pytest.raises(UserError) as excinfo:
        create_model("attendnext", input_size=SMALL, checkpoint=path)
    _assert_one_line_error(excinfo, str(path), *fragments)


def test_unreadable_checkpoint_is_a_user_error(tmp_path) -> None:
    with pytest.raises(UserError) as excinfo:
        create_model("attendnext", checkpoint=tmp_path / "absent.pt")
    _assert_one_line_error(excinfo, "not found")
    garbage = tmp_path / "garbage.pt"
    garbage.write_text("not a checkpoint\n" * 3)
    with pytest.raises(UserError) as excinfo:
        create_model("attendnext", checkpoint=garbage)
    _assert_one_line_error(excinfo, "cannot read checkpoint")
