"""StableVarNames: every var bound in a function gets one name, so that the kernels legalised
from it do not carry the var's place in the graph.

Legalisation names a kernel's input tensors after the Relax vars passed in, and some TOPI
operators name their blocks after their input (a mean's ``lv35_red``, a layer norm's
``lv218_sum``). MetaSchedule keys a tuning database by structure, where names do not count,
but a record's trace finds its blocks by name: after any rewrite that renumbers vars, the
records of such a kernel no longer apply to it, and a database holding records under both
names no longer loads (measured 2026-12-06: MobileViT-XS's layer norms ran untuned, the AVX2
database failed to open). With every dataflow var named ``lv`` (outputs ``gv``), those blocks
are ``lv_red``, ``lv_sum`` whatever the graph around them.
"""

from __future__ import annotations

from typing import Any

import tvm
from tvm import relax
from tvm.relax.expr_functor import PyExprMutator, mutator

from .exprs import mutate_functions

DATAFLOW_NAME, OUTPUT_NAME = "lv", "gv"


@mutator
class _Renamer(PyExprMutator):
    def visit_var_binding_(self, binding: Any) -> None:
        # Vars made here, not by the builder's emit, which would number them apart again.
        value = self.builder_.normalize(self.visit_expr(binding.value))
        if isinstance(binding.var, relax.DataflowVar):
            new = relax.DataflowVar(DATAFLOW_NAME, value.ty)
        else:
            new = relax.Var(OUTPUT_NAME, value.ty)
        self.builder_.emit_normalized(relax.VarBinding(new, value))
        self.set_var_remap(binding.var, new)


@tvm.transform.module_pass(opt_level=0, name="tvmc_attend.StableVarNames")
class StableVarNames:
    """Bound vars of every Relax function renamed ``lv`` (dataflow) or ``gv``."""

    def transform_module(self, mod: tvm.IRModule, _ctx: tvm.transform.PassContext,
                         ) -> tvm.IRModule:
        return mutate_functions(_Renamer(mod), mod)
