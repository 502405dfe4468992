"""Import a model into Relax: a zoo name (via torch.export), a .onnx file, or a .pt2 program.

Frontends are registered by source kind; ``import_model`` picks one from the model argument.
Every frontend returns an ``ImportedModel`` whose Relax module holds the graph exactly as the
frontend produced it (BatchNorm included); graph rewrites come after (``prepare``).
"""

from __future__ import annotations

import contextlib
import io
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tvmc_attend.errors import UserError

from .stages import StageError, stage


@dataclass
class ModelSource:
    """What the user asked for: a zoo name or a file, and how to instantiate it."""

    model: str
    input_size: int | None = None
    checkpoint: str | None = None
    seed: int = 0
    input_shape: tuple[int, ...] | None = None  # binds a file's symbolic input dims

    @property
    def kind(self) -> str:
        ext = os.path.splitext(self.model)[1].lower()
        if ext in _FRONTENDS:
            return ext
        return "zoo"

    @property
    def name(self) -> str:
        if self.kind == "zoo":
            return self.model
        return os.path.splitext(os.path.basename(self.model))[0]

    def check(self) -> None:
        """What can be checked without importing TVM: the zoo name and its input size, the
        model file, the checkpoint file. (A zoo lookup imports torch, for the registry.)"""
        if self.kind != "zoo":
            _require_file(self.model)
            return
        from tvmc_attend.models import get_model_spec

        if self.input_shape:
            raise UserError("--input-shape binds the symbolic dims of a model file; a zoo "
                            "model takes --input-size")
        get_model_spec(self.model).input_shape(self.input_size)
        if self.checkpoint and not os.path.isfile(self.checkpoint):
            raise UserError(f"checkpoint {self.checkpoint} not found; pass the path of a file "
                            "(save it with torch.save(model.state_dict(), path))")


@dataclass
class ImportedModel:
    """A model in Relax plus the facts the build, bundle and tests need about it."""

    name: str
    source: str  # "zoo", ".onnx" or ".pt2"
    mod: Any  # tvm.IRModule
    input_name: str
    input_shape: tuple[int, ...]
    input_dtype: str
    output_shape: tuple[int, ...]
    output_dtype: str
    torch_module: Any = field(default=None, repr=False)  # the PyTorch reference (zoo, .pt2)
    path: str | None = None  # the model file (.onnx / .pt2), None for zoo models


def _relax_io(mod: Any) -> tuple[str, tuple[int, ...], str, tuple[int, ...], str]:
    import tvm
    from tvm import relax

    main = mod["main"]
    if len(main.params) != 1:
        raise UserError(f"the model has {len(main.params)} inputs; tvmc-attend compiles "
                        "single-input vision models only")
    param = main.params[0]
    # TVM 0.27 calls struct info "types": Var.ty / Function.ret_ty.
    in_type = param.ty
    out_type = main.ret_ty
    if isinstance(out_type, relax.TupleType):
        if len(out_type.fields) != 1:
            raise UserError(f"the model has {len(out_type.fields)} outputs; tvmc-attend "
                            "compiles single-output models only")
        out_type = out_type.fields[0]
    for what, ty in (("input", in_type), ("output", out_type)):
        dims = getattr(getattr(ty, "shape", None), "values", None)
        if dims is None or not all(isinstance(d, tvm.tirx.IntImm) for d in dims):
            raise UserError(f"the model's {what} shape is not static; export it with a fixed "
                            "shape (batch 1)")
    in_shape = tuple(int(d) for d in in_type.shape.values)
    out_shape = tuple(int(d) for d in out_type.shape.values)
    return param.name, in_shape, str(in_type.dtype), out_shape, str(out_type.dtype)


def _from_exported_program(exported: Any) -> Any:
    from tvm.relax.frontend.torch import from_exported_program

    from .torch_converters import TORCH_CONVERTERS

    # the frontend raises bare asserts/ValueErrors on unsupported ops
    with stage("import (TVM's torch frontend)"):
        # unwrap_unit_return_tuple: a tuple result has no .numpy() over RPC.
        return from_exported_program(exported, keep_params_as_input=False,
                                     unwrap_unit_return_tuple=True,
                                     custom_convert_map=TORCH_CONVERTERS)


def _import_zoo(source: ModelSource) -> ImportedModel:
    import torch

    from tvmc_attend.models import create_model, get_model_spec

    if source.input_shape:
        raise UserError("--input-shape binds the symbolic dims of a model file; a zoo model "
                        "takes --input-size")
    spec = get_model_spec(source.model)
    model = create_model(source.model, input_size=source.input_size,
                         checkpoint=source.checkpoint, seed=source.seed)
    shape = list(spec.default_input_shape)
    if source.input_size:
        shape[-2:] = [source.input_size, source.input_size]
    example = torch.zeros(shape, dtype=torch.float32)
    with stage("import (torch.export)"), torch.no_grad():
        exported = torch.export.export(model, (example,))
    mod = _from_exported_program(exported)
    return _imported(source, mod, torch_module=model)


def _import_pt2(source: ModelSource) -> ImportedModel:
    import torch

    _require_file(source.model)
    try:
        exported = torch.export.load(source.model)
    except Exception as err:
        raise UserError(f"cannot load '{source.model}' as a torch.export program "
                        f"({type(err).__name__}); save it with torch.export.save") from None
    (user_input,) = [spec.arg.name for spec in exported.graph_signature.input_specs
                     if spec.kind.name == "USER_INPUT"] or [None]
    if user_input is None:
        raise UserError(f"'{source.model}' takes no tensor input; tvmc-attend compiles "
                        "single-input vision models")
    node = next(n for n in exported.graph.nodes if n.op == "placeholder" and
                n.name == user_input)
    declared = [int(d) if isinstance(d, int) or str(d).isdigit() else str(d)
                for d in node.meta["val"].shape]
    shape = bind_input_shape(f"'{source.model}'", declared, source)
    if shape != declared:  # dynamic (or resized): re-export at the bound, static shape
        try:
            with torch.no_grad():
                exported = torch.export.export(exported.module(), (torch.zeros(shape),))
        except Exception as err:  # the program's own guards reject the shape
            first = str(err).strip().splitlines()[0] if str(err).strip() else repr(err)
            raise UserError(f"'{source.model}' does not accept input shape "
                            f"{format_shape(shape)} ({first}); pass a shape its dynamic "
                            "dims allow") from None
    mod = _from_exported_program(exported)
    return _imported(source, mod, torch_module=exported.module())


def _import_onnx(source: ModelSource) -> ImportedModel:
    import onnx

    from .onnx_shapes import fold_runtime_shapes, has_runtime_shapes

    _require_file(source.model)
    try:
        proto = onnx.load(source.model)
    except Exception as err:
        raise UserError(f"cannot read '{source.model}' as ONNX ({type(err).__name__}); "
                        "check the file") from None
    initializers = {init.name for init in proto.graph.initializer}
    inputs = [i for i in proto.graph.input if i.name not in initializers]
    if len(inputs) != 1:
        raise UserError(f"'{source.model}' has {len(inputs)} inputs; tvmc-attend compiles "
                        "single-input vision models only")
    declared = [d.dim_value if d.dim_value > 0 else (d.dim_param or "?")
                for d in inputs[0].type.tensor_type.shape.dim]
    shape = bind_input_shape(f"'{source.model}' input '{inputs[0].name}'", declared, source)
    if has_runtime_shapes(proto):
        with stage("import (folding run-time shapes with ONNX Runtime)"):
            proto = fold_runtime_shapes(proto, inputs[0].name, shape)
    return _imported(source, _relax_from_onnx(proto, inputs[0].name, shape))


def _relax_from_onnx(proto: Any, input_name: str, shape: list[int]) -> Any:
    """TVM's ONNX frontend on ``proto``; a failure names the operator it was converting (the
    frontend prints it, then raises)."""
    from tvm.relax.frontend.onnx import from_onnx

    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed):
            return from_onnx(proto, shape_dict={input_name: shape}, keep_params_in_input=False)
    except Exception as err:
        found = re.search(r"Error converting operator (\w+)", printed.getvalue())
        raise StageError("import (TVM's ONNX frontend)", err,
                         where=f"operator {found.group(1)}" if found else None) from err


def format_shape(shape: list[int | str] | tuple[int, ...]) -> str:
    return "x".join(str(d) for d in shape)


def bind_input_shape(what: str, declared: list[int | str], source: ModelSource) -> list[int]:
    """A static input shape for a model whose declared shape may have symbolic dims (names).

    ``--input-shape`` binds every dim (it must agree with the static ones); otherwise a
    symbolic batch becomes 1 (bundles are compiled for batch-1 inference) and ``--input-size``
    sets H and W of an NCHW input. Any other symbolic dim is a one-line error naming it.
    """
    if source.input_shape:
        given = list(source.input_shape)
        clash = len(given) != len(declared) or any(
            isinstance(d, int) and d != g for d, g in zip(declared, given, strict=False))
        if clash:
            raise UserError(f"--input-shape {format_shape(given)} does not fit {what}, whose "
                            f"shape is {format_shape(declared)}")
        return given
    shape = list(declared)
    if shape and not isinstance(shape[0], int):
        shape[0] = 1
    if source.input_size and len(shape) == 4:
        shape[-2:] = [source.input_size, source.input_size]
    symbolic = [str(d) for d in shape if not isinstance(d, int)]
    if symbolic:
        example = format_shape([d if isinstance(d, int) else 224 for d in shape])
        raise UserError(f"{what} has symbolic dimension{'s' if len(symbolic) > 1 else ''} "
                        f"{', '.join(symbolic)} (shape {format_shape(declared)}); bind them "
                        f"with --input-shape, e.g. --input-shape {example}")
    return shape


def parse_shape(text: str) -> tuple[int, ...]:
    """``1x3x224x224`` (or ``1,3,224,224``) -> (1, 3, 224, 224)."""
    parts = text.replace(",", "x").lower().split("x")
    if not all(p.strip().isdigit() and int(p) > 0 for p in parts):
        raise UserError(f"--input-shape '{text}' is not a shape; write it like 1x3x224x224")
    return tuple(int(p) for p in parts)


def _require_file(path: str) -> None:
    if not os.path.isfile(path):
        raise UserError(f"model file '{path}' does not exist; pass a zoo name (see "
                        "`tvmc-attend models`) or an existing .onnx / .pt2 file")


def _imported(source: ModelSource, mod: Any, torch_module: Any = None) -> ImportedModel:
    name, in_shape, in_dtype, out_shape, out_dtype = _relax_io(mod)
    return ImportedModel(name=source.name, source=source.kind, mod=mod, input_name=name,
                         input_shape=in_shape, input_dtype=in_dtype, output_shape=out_shape,
                         output_dtype=out_dtype, torch_module=torch_module,
                         path=None if source.kind == "zoo" else source.model)


_FRONTENDS: dict[str, Callable[[ModelSource], ImportedModel]] = {
    ".onnx": _import_onnx,
    ".pt2": _import_pt2,
}


def import_model(source: ModelSource) -> ImportedModel:
    """Import ``source`` into Relax with the frontend its kind calls for; a failure inside a
    frontend is a one-line StageError."""
    frontend = _FRONTENDS.get(source.kind, _import_zoo)
    with stage("import"):
        return frontend(source)
