"""Keep each kernel's small scratch buffers on the stack instead of TVM's workspace pool.

TVM lowers every kernel-local buffer of 1 KiB or more (and every "local" one) to a TVMBackendAllocWorkspace /
TVMBackendFreeWorkspace pair at the place it is allocated: inside a loop, once per iteration. MiniLM at 16 tokens
made 1,210 such pairs per call: the row kernels' int64 / int32 row buffers once per row, and the length-shared
GEMMs' tile accumulators once per column tile (min(n, 4) x 64 and min(n, 2) x 64 int32 for the kernel's symbolic
n: 648 pairs, ~20 us of a 0.4 ms call at 4 tokens, Zen 4). Both are on the stack now; 42 pairs are left, the
GEMMs' converted activations (n x K: no bound).

Expects: lowered TIR PrimFuncs for a CPU target, after the s_tir lowering pipeline (flattened buffers, blocks
gone) and before LowerTVMBuiltin (the build's ``codegen`` stage runs it there: compiler/tvm_compat.py
``compile_module``).
Guarantees: in each PrimFunc, allocations of a constant size, or of a symbolic size with a constant upper bound
(Analyzer.const_int_bound: a flat buffer of min(n, 4) * 64 elements), are marked to stay plain allocations
(LowerTVMBuiltin leaves them; the LLVM code generator places them on the stack at the entry of the function or of
the parallel task body they belong to, once), smallest first, while their sum stays within `budget` bytes; a
bounded one is allocated at its bound (the buffer is replaced, in its allocation and its uses, by one of that
constant size: the same elements at the same offsets). Larger or unbounded allocations keep the workspace pool.
Only where the memory comes from changes, never what is computed. With the
default budget a kernel's stack frame grows by at most 32 KiB beyond what TVM itself puts there (its buffers under
1 KiB); thread stacks are 8 MiB with glibc, 128 KiB with musl. The stack buffers are 16-byte aligned (the
workspace pool's were 64). Tuning (schedules/tune.py) measures kernels built without this pass.
"""

from __future__ import annotations

from compiler.tvm_compat import AllocBuffer, Analyzer, IntImm, mutate_ir, on_stack, tirx, visit_ir

STACK_BUDGET = 32 * 1024  # bytes of scratch per kernel moved to the stack


def _element_bytes(buffer) -> int:
    return max(1, (buffer.dtype.bits * buffer.dtype.lanes + 7) // 8)  # a bool takes a byte


def _constant_bytes(buffer) -> int | None:
    size = _element_bytes(buffer)
    for d in buffer.shape:
        if not isinstance(d, IntImm):
            return None
        size *= int(d)
    return size


def _bound_bytes(buffer, analyzer) -> tuple[int, int] | None:
    """(bytes, elements) at most, for a flat buffer of symbolic size with a constant bound (a tile's scratch of
    min(n, 4) rows of a kernel over n rows: 4 rows), or None."""
    offset = buffer.elem_offset
    if len(buffer.shape) != 1 or buffer.strides or not (isinstance(offset, IntImm) and int(offset) == 0):
        return None
    hi = analyzer.const_int_bound(buffer.shape[0]).max_value
    if not 0 < hi < (1 << 31):
        return None
    return int(hi) * _element_bytes(buffer), int(hi)


def stack_allocations(func, budget: int = STACK_BUDGET):
    """`func` with its allocations of a constant size, or of a symbolic size with a constant bound (then allocated
    at that bound), smallest first within `budget` bytes, marked for the stack."""
    sizes, bounds, analyzer = {}, {}, Analyzer()  # a buffer allocated at several places counts once

    def collect(node, visitor):
        if isinstance(node, AllocBuffer):
            n = _constant_bytes(node.buffer)
            bound = _bound_bytes(node.buffer, analyzer) if n is None else None
            if bound is not None:
                n, bounds[node.buffer] = bound
            if n is not None:
                sizes[node.buffer] = n
        visitor.default_visit(node)

    visit_ir(func.body, collect)
    chosen, total = set(), 0
    for buffer, n in sorted(sizes.items(), key=lambda s: s[1]):
        if total + n > budget:
            break
        total += n
        chosen.add(buffer)
    if not chosen:
        return func
    # a bounded buffer is replaced, in its allocation and every use, by one of its bound's constant size
    resized = {b: tirx.decl_buffer([IntImm(str(b.shape[0].ty), hi)], b.dtype, b.name, scope=b.scope(),
                                   data_alignment=b.data_alignment)
               for b, hi in bounds.items() if b in chosen}
    on_stack_now = chosen | set(resized.values())

    def mark(node, mutator):
        node = mutator.default_mutate(node)  # resizes the buffer first
        return on_stack(node) if node.buffer in on_stack_now else node

    def resize(var, _mutator):  # a buffer is a Var (0.27): every reference to it, in any node
        return resized.get(var, var)

    callbacks = [(AllocBuffer, mark)] + ([(tirx.Var, resize)] if resized else [])
    return func.with_body(mutate_ir(func.body, callbacks))


def stack_scratch(budget: int = STACK_BUDGET):
    """The TIR pass (see the module docstring)."""
    return tirx.transform.prim_func_pass(lambda f, _mod, _ctx: stack_allocations(f, budget), opt_level=0,
                                         name="intformer.StackScratch")
