"""The only module that names TVM paths which move between releases (written against TVM 0.27).

Everything else in intformer imports TVM names from here, so a TVM upgrade touches one file.
"""

from __future__ import annotations

import threading

import tvm  # noqa: F401  (the compiler needs the full TVM; the runtime loader does not import this module)
from tvm import relax, te  # noqa: F401  (te: compute definitions of small kernels)
from tvm.ir.expr import GenericConst as _GenericConst  # relax.Constant before 0.2x
from tvm.relax.frontend.onnx import from_onnx as _from_onnx

BlockBuilder = relax.BlockBuilder
PyExprMutator = relax.PyExprMutator
expr_functor_mutator = relax.expr_functor.mutator


def mutate_functions(mutator, mod, on_function=None):
    """Run a PyExprMutator over every Relax function of `mod`; the result includes any function the mutator
    added through its block builder (e.g. scheduled PrimFuncs). `on_function(name)`, if given, is called before
    each function is visited (a mutator whose rewrite depends on the function)."""
    for gv, func in list(mod.functions.items()):
        if isinstance(func, relax.Function):
            if on_function is not None:
                on_function(gv.name_hint)
            mutator.builder_.update_func(gv, mutator.visit_expr(func))
    return mutator.builder_.get()


def make_target(llvm: dict):
    """A TVM target from a JSON-style dict (0.27 rejects the old "llvm -mcpu=..." strings)."""
    return tvm.target.Target(dict(llvm))


def host_cpu_name() -> str:
    return str(tvm.target.codegen.llvm_get_system_cpu())


def onnx_supported_ops() -> set[str]:
    """ONNX op types the Relax ONNX importer converts."""
    from tvm.relax.frontend.onnx import onnx_frontend

    return set(onnx_frontend._get_convert_map().keys())


def import_onnx(model_proto):
    """ONNX ModelProto (static shapes) -> Relax IRModule with weights as constants."""
    return _from_onnx(model_proto, keep_params_in_input=False)


def tensor_type(shape, dtype: str):
    return relax.TensorType(shape, dtype)


def prim_type(dtype: str):
    """The Relax type of a scalar (relax.PrimStructInfo before 0.27)."""
    return tvm.ir.PrimType(dtype)


def with_param(func, var):
    """A Relax function with `var` appended to its parameters (``ret_ty`` was ``ret_struct_info`` before 0.27)."""
    return relax.Function([*func.params, var], func.body, func.ret_ty, func.is_pure, func.attrs)


def const(value, dtype: str):
    """A Relax constant of an explicit dtype (relax.const guesses int32 for int64 NumPy data)."""
    import numpy as np

    return relax.const(np.asarray(value).astype(dtype), dtype)


def tensor_info(expr):
    """(dtype, static shape tuple or None) of a Relax tensor expression; (None, None) if not a tensor.

    0.27 renamed ``struct_info`` / ``TensorStructInfo`` to ``ty`` / ``TensorType``.
    """
    ty = getattr(expr, "ty", None)
    if ty is None:
        ty = getattr(expr, "struct_info", None)
    if ty is None or not isinstance(ty, relax.TensorType):
        return None, None
    dims = None
    shape = getattr(ty, "shape", None)
    if shape is not None and hasattr(shape, "values"):
        try:
            dims = tuple(int(v) for v in shape.values)
        except (TypeError, ValueError):
            dims = None
    return str(ty.dtype), dims


def expr_type(expr):
    """The Relax type of an expression (``struct_info`` before 0.27)."""
    ty = getattr(expr, "ty", None)
    return ty if ty is not None else expr.struct_info


def constant_value(expr):
    """NumPy value of a Relax constant, or None if ``expr`` is not one."""
    if isinstance(expr, _GenericConst):
        value = expr.value
        if hasattr(value, "numpy"):
            return value.numpy()
    return None


def legalize(mod):
    """Relax ops -> TIR kernels called through ``call_tir`` (LegalizeOps), each kernel's op pattern annotated
    for fusion. Run it under the target (``with target:``): legalization picks target-specific strategies."""
    return tvm.transform.Sequential([relax.transform.LegalizeOps(), relax.transform.AnnotateTIROpPattern()])(mod)


def fuse_ops(mod):
    """Fuse the legalized kernels' elementwise/reduction chains into single kernels (FuseOps, FuseTIR; functions
    outlined before as ``Primitive`` are kept as one kernel each), then drop what is no longer called.
    tvm.compile's default CPU pipeline does not fuse in 0.27: MiniLM ran ~4,000 separate kernels."""
    return tvm.transform.Sequential([
        relax.transform.FuseOps(),
        relax.transform.FuseTIR(),
        relax.transform.DeadCodeElimination(),
    ])(mod)


def fuse(mod, group=None):
    """``legalize`` then ``fuse_ops``. ``group``: a module -> module function run on the legalized kernels
    before FuseOps, which outlines groups of its own as ``Primitive`` functions."""
    mod = legalize(mod)
    if group is not None:
        mod = group(mod)
    return fuse_ops(mod)


def fuse_for(mod, target, group=None):
    """``fuse`` under ``target`` (legalization picks target-specific strategies)."""
    with target:
        return fuse(mod, group)


_PIPELINE_LOCK = threading.Lock()


def compile_module(mod, target, tir_passes=()):
    """Compile a fused, scheduled Relax module into an executable: kernels, VM plan, constants (the last of the
    build's stages: compiler/pipeline.py). `tir_passes` run on the lowered kernels after TVM's own TIR lowering
    (the s_tir pipeline), before LowerTVMBuiltin."""
    if not tir_passes:
        return tvm.compile(mod, target)
    with _PIPELINE_LOCK:  # the name is global: two compiles at once must not swap their passes
        _register_pipeline(tir_passes)
        return tvm.compile(mod, target, tir_pipeline="intformer")


def _register_pipeline(tir_passes) -> None:
    """TIR pipeline "intformer": TVM's s_tir lowering, then `tir_passes` (0.27: tvm.tirx.build takes TIR
    pipelines by name)."""
    from tvm.s_tir.pipeline import default_s_tir_pipeline

    def factory():
        lower, finalize_host, finalize_device = default_s_tir_pipeline()
        return tvm.transform.Sequential([lower, *tir_passes]), finalize_host, finalize_device

    tvm.tirx.register_tir_pipeline("intformer", factory)


def export_library(executable, path: str, cross_compiler=None) -> None:
    if cross_compiler:
        from tvm.support import cc  # tvm.contrib.cc before 0.2x

        executable.export_library(path, fcompile=cc.cross_compiler(cross_compiler))
    else:  # without debug sections: a library with several length buckets carries one set per bucket
        executable.export_library(path, options=["-Wl,--strip-debug"])


def rpc_connect(host: str, port: int, session_timeout: float = 0):
    """An RPC session to a TVM RPC server (tvm.rpc.RPCSession: upload, load_module, cpu, get_function)."""
    from tvm import rpc

    return rpc.connect(host, port, session_timeout=session_timeout)


def rpc_connect_tracker(host: str, port: int):
    """A TVM RPC tracker client (its .request(key) gives a session)."""
    from tvm import rpc

    return rpc.connect_tracker(host, port)


def dead_code_elimination():
    return relax.transform.DeadCodeElimination()


def string_const(text: str):
    """A Relax string literal (tvm.ir.expr.StringImm in 0.27)."""
    from tvm.ir.expr import StringImm

    return StringImm(text)


# --- Kernel scheduling names (schedules/ package); 0.2x moved them from tvm.tir / tvm.tir.schedule. ---
from tvm.s_tir import Schedule, TensorIntrin  # noqa: E402  (tvm.tir.Schedule / tvm.tir.TensorIntrin before 0.2x)
from tvm.script import tirx as tir_script  # noqa: E402  (tvm.script.tir before 0.2x; use @T.prim_func(s_tir=True))


def normalize_prim_func(sch):
    """The blocks of a schedule's PrimFunc, each with its iteration kinds (dlight's analysis; tvm.dlight before
    0.2x), or None when the function is not a plain loop nest."""
    from tvm.s_tir.dlight.analysis import normalize_prim_func as _normalize

    return _normalize(sch)


def build_tir(func, target, tir_passes=()):
    """A TIR PrimFunc or module -> a runtime Module (tvm.build before 0.2x): for kernel benchmarks and tests;
    `tir_passes` as in compile_module."""
    if not tir_passes:
        return tvm.tirx.build(func, target)
    with _PIPELINE_LOCK:
        _register_pipeline(tir_passes)
        return tvm.tirx.build(func, target, pipeline="intformer")


def parse_prim_func(text: str):
    """TVMScript of one PrimFunc -> the PrimFunc (tvm.script.from_source; `tirx` was `tir` before 0.2x)."""
    return tvm.script.from_source(text)


def simplify_prim_func(func):
    """`func` through TIR's arithmetic simplifier (tir.transform.Simplify before 0.2x), for comparing kernels."""
    return tvm.tirx.transform.StmtSimplify()(IRModule({"f": func}))["f"]


def llvm_triple(target) -> str:
    """The target's LLVM triple (``mtriple``, else the host's), e.g. "aarch64-linux-gnu"."""
    from tvm.target import codegen

    return str(target.attrs.get("mtriple", "") or codegen.llvm_get_system_triple())


def llvm_cpu_has_features(features, target) -> bool:
    """True if the LLVM target (mtriple, mcpu, mattr) has every feature, e.g. ["avx512vnni"]."""
    from tvm.target import codegen

    return bool(codegen.llvm_cpu_has_features(list(features), target))


# --- Tuning names (schedules/tune.py, schedules/database.py); tvm.meta_schedule before 0.2x. ---
from tvm import tirx  # noqa: E402  (tvm.tir before 0.2x: TIR expressions, buffers, loops)
from tvm.ir import IRModule  # noqa: E402
from tvm.ir.expr import (  # noqa: E402  (tvm.tir.Call / BufferLoad before 0.27: one Call for Relax and TIR)
    Call as PrimCall,
    TensorLoad,
)
from tvm.ir.prim.expr import Cast  # noqa: E402  (tvm.tir.Cast before 0.27)
from tvm.ir.utils import derived_object  # noqa: E402  (tvm.meta_schedule.utils.derived_object before 0.2x)
from tvm.s_tir import (  # noqa: E402  (tvm.tir.Block / BlockRealize before 0.2x)
    SBlock,
    SBlockRealize,
    meta_schedule,  # noqa: E402
)
from tvm.sym import Analyzer  # noqa: E402  (tvm.arith.Analyzer before 0.27)
from tvm.tirx import IntImm, PrimFunc  # noqa: E402  (tvm.tir.IntImm / PrimFunc before 0.2x)
from tvm.tirx.stmt import AllocBuffer  # noqa: E402  (tvm.tir.Allocate before 0.27)
from tvm_ffi import structural_equal, structural_hash  # noqa: E402  (tvm.ir.structural_* before 0.2x)


def register_vector_op(name: str, lower) -> str:
    """A pure TIR op ``tirx.<name>`` (idempotent): the vectorizer widens its calls like an arithmetic op, and the
    LLVM build expands each call with ``lower(call)`` (LowerIntrin, after vectorization: ``call`` has the vector
    operands). Returns the op's name for ``tirx.call_intrin`` (0.27: ``tvm.ir.register_op_attr`` creates the op;
    ``tvm.tirx.register_intrin_lowering``, tvm.tir's before 0.2x)."""
    op = f"tirx.{name}"
    try:
        if tvm.ir.Op.get(op).has_attr("TVectorizable"):
            return op  # registered already (an attribute cannot be registered twice at one level)
    except AttributeError:  # not registered yet (0.27 reports an unknown op so)
        pass
    tvm.ir.register_op_attr(op, "TCallEffectKind", 1, level=99)  # pure
    tvm.ir.register_op_attr(op, "TVectorizable", True, level=99)
    tvm.ir.register_op_attr(op, "TScriptPrinterName", name, level=99)
    tirx.register_intrin_lowering(op, target="llvm", f=lower, level=99)
    # TVMScript prints a call as ``T.<name>(...)``; the parser (compiler/passes/share_buckets.py reads kernels back)
    # finds it as an attribute of its ``T`` module: a call typed as its first operand (right for an op whose
    # result has its operands' type, as mulhi's; another op would need its own rule here)
    import tvm.tirx.script.parser as script_t

    setattr(script_t, name, lambda *args: tirx.call_intrin(str(args[0].ty), op, *args))
    return op


def expr_lanes(expr) -> int:
    """The vector lanes of a TIR expression's type (1 for a scalar; 0.27 types an expression by ``ty``, ``dtype``
    before)."""
    return expr.ty.dtype.lanes


def is_buffer(param) -> bool:
    """Whether a PrimFunc parameter is a buffer (0.27: a Var of BufferType; a tvm.tir.Buffer in buffer_map
    before), not a scalar."""
    from tvm.tirx.buffer import BufferType

    return isinstance(param.ty, BufferType)


def on_stack(alloc):
    """An AllocBuffer that LowerTVMBuiltin leaves as a plain (stack) allocation instead of a
    TVMBackendAllocWorkspace call (0.27's annotation; an Allocate's before)."""
    return AllocBuffer(alloc.buffer, annotations={**dict(alloc.annotations or {}),
                                                  "disable_lower_builtin": IntImm("bool", 1)})


def mutate_ir(node, callbacks):
    """`node` rebuilt by `callbacks`: [(type or types, fn(value, mutator))], the first entry whose type matches a
    node owns it and returns its replacement (``mutator.mutate(child)`` / ``mutator.default_mutate(value)``
    descend); other nodes are rebuilt from their children (tvm.tir.stmt_functor.ir_transform before 0.27)."""
    import tvm_ffi

    return tvm_ffi.structural_mutate(node, callbacks)


def visit_ir(node, visit) -> None:
    """Call `visit(value, visitor)` on `node`; it descends with ``visitor.default_visit(value)`` or prunes the
    subtree by not doing so (tvm.tir.stmt_functor.post_order_visit before 0.27)."""
    import tvm_ffi

    tvm_ffi.structural_visit(node, visit)


def walk_ir(node, visit) -> None:
    """Call `visit` on every expression/statement node under `node` (tvm.tir.stmt_functor.post_order_visit before
    0.27); variables and buffers are visited but not descended into (their types are not part of the code)."""
    import tvm_ffi

    def descend(value, visitor):
        visit(value)
        if isinstance(value, TensorLoad):
            visitor.visit(value.indices)
        elif not isinstance(value, tvm.tirx.Var):
            visitor.default_visit(value)

    tvm_ffi.structural_visit(node, descend)


# What the rest of intformer imports from here (the re-exported TVM names included: they are this module's point).
__all__ = [
    "tvm", "relax", "te", "BlockBuilder", "PyExprMutator", "expr_functor_mutator", "mutate_functions", "make_target",
    "prim_type", "with_param",
    "host_cpu_name", "onnx_supported_ops", "import_onnx", "tensor_type", "const", "tensor_info", "expr_type",
    "constant_value", "legalize", "fuse_ops", "fuse", "fuse_for", "compile_module", "export_library", "rpc_connect",
    "rpc_connect_tracker",
    "dead_code_elimination", "string_const", "Schedule", "TensorIntrin", "tir_script", "normalize_prim_func",
    "build_tir", "parse_prim_func", "simplify_prim_func", "llvm_triple", "llvm_cpu_has_features", "IRModule",
    "structural_equal", "structural_hash",
    "meta_schedule", "IntImm", "PrimFunc", "derived_object", "tirx", "SBlock", "SBlockRealize", "TensorLoad", "Cast",
    "PrimCall", "mutate_ir", "visit_ir", "walk_ir", "AllocBuffer", "on_stack", "Analyzer", "is_buffer",
    "register_vector_op", "expr_lanes",
]
