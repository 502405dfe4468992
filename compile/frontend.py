"""Import a model into Relax: a zoo name (via torch.export), a .onnx file, or a .pt2 program.

Frontends are registered by source kind; ``import_model`` picks one from the model argument.
Every frontend returns an ``ImportedModel`` whose Relax module still holds the graph as the
frontend produced it (BatchNorm included); graph rewrites come after, in ``relay_ops``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tvmc_attend.errors import UserError


@dataclass
class ModelSource:
    """What the user asked for: a zoo name or a file, and how to instantiate it."""

    model: str
    input_size: int | None = None
    checkpoint: str | None = None
    seed: int = 0

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
    torch_module: Any = field(default=None, repr=False)  # the PyTorch reference, zoo models only


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

    from tvmc_attend.relay_ops import fix_torch_nearest_resize  # imports TVM: not at load time

    try:
        # unwrap_unit_return_tuple: a tuple result has no .numpy() over RPC.
        mod = from_exported_program(exported, keep_params_as_input=False,
                                    unwrap_unit_return_tuple=True)
    except Exception as err:  # the frontend raises bare asserts/ValueErrors on unsupported ops
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(f"TVM's torch frontend could not import the model: {first}") from None
    return fix_torch_nearest_resize(mod)


def _import_zoo(source: ModelSource) -> ImportedModel:
    import torch

    from tvmc_attend.models import create_model, get_model_spec, list_models

    from .explored import register_saved

    if source.model not in {spec.name for spec in list_models()}:
        register_saved(source.model)  # a saved `explore` front member, compiled by name
    spec = get_model_spec(source.model)
    model = create_model(source.model, input_size=source.input_size,
                         checkpoint=source.checkpoint, seed=source.seed)
    shape = list(spec.default_input_shape)
    if source.input_size:
        shape[-2:] = [source.input_size, source.input_size]
    example = torch.zeros(shape, dtype=torch.float32)
    with torch.no_grad():
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
    mod = _from_exported_program(exported)
    return _imported(source, mod, torch_module=exported.module())


def _import_onnx(source: ModelSource) -> ImportedModel:
    import onnx
    from tvm.relax.frontend.onnx import from_onnx

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
    dims = inputs[0].type.tensor_type.shape.dim
    # A symbolic batch dimension becomes 1: bundles are compiled for batch-1 inference.
    shape = [d.dim_value if d.dim_value > 0 else 1 for d in dims]
    if source.input_size and len(shape) == 4:
        shape[-2:] = [source.input_size, source.input_size]
    try:
        mod = from_onnx(proto, shape_dict={inputs[0].name: shape}, keep_params_in_input=False)
    except Exception as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(f"TVM's ONNX frontend could not import '{source.model}': {first}") from None
    return _imported(source, mod)


def _require_file(path: str) -> None:
    if not os.path.isfile(path):
        raise UserError(f"model file '{path}' does not exist; pass a zoo name (see "
                        "`tvmc-attend models`) or an existing .onnx / .pt2 file")


def _imported(source: ModelSource, mod: Any, torch_module: Any = None) -> ImportedModel:
    name, in_shape, in_dtype, out_shape, out_dtype = _relax_io(mod)
    return ImportedModel(name=source.name, source=source.kind, mod=mod, input_name=name,
                         input_shape=in_shape, input_dtype=in_dtype, output_shape=out_shape,
                         output_dtype=out_dtype, torch_module=torch_module)


_FRONTENDS: dict[str, Callable[[ModelSource], ImportedModel]] = {
    ".onnx": _import_onnx,
    ".pt2": _import_pt2,
}


def import_model(source: ModelSource) -> ImportedModel:
    """Import ``source`` into Relax with the frontend its kind calls for."""
    frontend = _FRONTENDS.get(source.kind, _import_zoo)
    return frontend(source)
