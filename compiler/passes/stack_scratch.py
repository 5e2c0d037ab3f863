"""Keep each kernel's small scratch buffers on the stack instead of TVM's workspace pool.

TVM lowers every kernel-local buffer of 1 KiB or more (and every "local" one) to a TVMBackendAllocWorkspace /
TVMBackendFreeWorkspace pair at the place it is allocated: inside a loop, once per iteration. MiniLM at 16 tokens
made 1,210 such pairs per call: the row kernels' int64 / int32 row buffers once per row (on the stack now: 690
pairs left), and the length-shared GEMMs' accumulators once per column tile (49 in a 384x1536 GEMM), which stay
in the pool: they are (n, 64) for the kernel's symbolic n.

Expects: lowered TIR PrimFuncs for a CPU target, after the s_tir lowering pipeline (flattened buffers, blocks
gone) and before LowerTVMBuiltin (the build's ``codegen`` stage runs it there: compiler/tvm_compat.py
``compile_module``).
Guarantees: in each PrimFunc, allocations of a constant size are marked to stay plain allocations (LowerTVMBuiltin
leaves them; the LLVM code generator places them on the stack at the entry of the function or of the parallel
task body they belong to, once), smallest first, while their sum stays within `budget` bytes; larger or symbolic
allocations keep the workspace pool. Only where the memory comes from changes, never what is computed. With the
default budget a kernel's stack frame grows by at most 32 KiB beyond what TVM itself puts there (its buffers under
1 KiB); thread stacks are 8 MiB with glibc, 128 KiB with musl. The stack buffers are 16-byte aligned (the
workspace pool's were 64). Tuning (schedules/tune.py) measures kernels built without this pass.
"""

from __future__ import annotations

from compiler.tvm_compat import AllocBuffer, IntImm, mutate_ir, on_stack, tirx, visit_ir

STACK_BUDGET = 32 * 1024  # bytes of scratch per kernel moved to the stack


def _constant_bytes(buffer) -> int | None:
    size = buffer.dtype.bits * buffer.dtype.lanes // 8
    for d in buffer.shape:
        if not isinstance(d, IntImm):
            return None
        size *= int(d)
    return size


def stack_allocations(func, budget: int = STACK_BUDGET):
    """`func` with its constant-size allocations, smallest first within `budget` bytes, marked for the stack."""
    sizes = []

    def collect(node, visitor):
        if isinstance(node, AllocBuffer):
            n = _constant_bytes(node.buffer)
            if n is not None:
                sizes.append((n, node.buffer))
        visitor.default_visit(node)

    visit_ir(func.body, collect)
    chosen, total = set(), 0
    for n, buffer in sorted(sizes, key=lambda s: s[0]):
        if total + n > budget:
            break
        total += n
        chosen.add(buffer)
    if not chosen:
        return func

    def mark(node, mutator):
        node = mutator.default_mutate(node)
        return on_stack(node) if node.buffer in chosen else node

    return func.with_body(mutate_ir(func.body, [(AllocBuffer, mark)]))


def stack_scratch(budget: int = STACK_BUDGET):
    """The TIR pass (see the module docstring)."""
    return tirx.transform.prim_func_pass(lambda f, _mod, _ctx: stack_allocations(f, budget), opt_level=0,
                                         name="intformer.StackScratch")
