"""MetaSchedule tuning (schedules/tune.py) and the target-keyed database (schedules/database.py)."""

import os

import numpy as np
import pytest
import tvm
from tvm.ir import IRModule

from compiler.tvm_compat import structural_equal
from schedules import int8_matmul as im, tune as tn
from schedules.database import TuningDatabase, target_key
from schedules.gemm_epilogue import EPILOGUE_ATTR
from targets import resolve_target
from tests.helpers.gemm_epilogue import apply_epilogue, requantize

M, K, N = 32, 64, 64


@pytest.fixture(scope="module")
def host():
    """This machine without AMX: its GEMMs are the tunable register-tile kernels (AMX's are fixed)."""
    llvm = {k: v for k, v in resolve_target("host").llvm.items() if k != "mattr"}
    return tvm.target.Target(llvm)


def test_amx_gemms_are_not_tuning_tasks():
    amx = resolve_target("x86-amx").tvm_target()
    f = im.gemm_primfunc(M, K, N, im.select_kernel(amx))
    assert im.select_kernel(amx).isa == "amx" and tn.KERNEL_ATTR not in f.attrs
    skipped = []
    assert tn.extract_tasks(IRModule({"qgemm": f.with_attr("global_symbol", "qgemm")}), amx, skipped) == []
    assert skipped == ["qgemm: AMX tiles (a fixed kernel, nothing to tune)"]


@pytest.fixture(scope="module")
def gemm_mod(host):
    kern = im.select_kernel(host)
    f = im.gemm_primfunc(M, K, N, kern)
    return IRModule({"qgemm": f.with_attr("global_symbol", "qgemm")})


def _run(mod, target, a, w):
    kern = im.select_kernel(target)
    dev = tvm.cpu()
    lib = tvm.compile(mod, target)
    mp, np_ = im.gemm_out_shape(M, N, kern)
    out = tvm.runtime.tensor(np.zeros((mp, np_), "int32"), dev)
    lib["qgemm"](tvm.runtime.tensor(a, dev), *[tvm.runtime.tensor(x, dev) for x in im.gemm_args(w, kern)], out)
    return out.numpy()[:M, :N]


def test_extract_gemm_task(host, gemm_mod):
    tasks = tn.extract_tasks(gemm_mod, host)
    assert [t.kind for t in tasks] == ["gemm"]
    mrs, nrs, splits = tasks[0].gemm_options
    assert len(mrs) > 1 and len(nrs) > 1 and splits == (False, True)
    # every row tile divides the padded M the default tile chose: buffers stay the same
    mp, _ = im.gemm_out_shape(M, N, im.select_kernel(host))
    assert all(mp % mr == 0 for mr in mrs)


def test_tune_apply_resume_and_keying(host, gemm_mod, tmp_path):
    rng = np.random.default_rng(0)
    a = rng.integers(-128, 128, (M, K)).astype("int8")
    w = rng.integers(-128, 128, (K, N)).astype("int8")
    ref = a.astype(np.int32) @ w.astype(np.int32)
    tasks = tn.extract_tasks(gemm_mod, host)
    db = TuningDatabase(str(tmp_path), host, "host")
    prog = tn.tune(tasks, host, db, tn.TuneOptions(trials=3, trials_per_iter=3))
    assert prog.trials[tasks[0].name] == 3 and not prog.errors
    assert db.records_for(tasks[0].workload) == 3

    tuned, replaced = tn.apply_database(gemm_mod, host, TuningDatabase(str(tmp_path), host, "host", create=False))
    assert replaced == 1
    assert tuned["qgemm"].attrs["tir.is_scheduled"]
    np.testing.assert_array_equal(_run(tuned, host, a, w), ref)

    # the same record applies to a GEMM with a fused epilogue: rebuilt with the tile the record chose
    kern = im.select_kernel(host)
    epi, ops = requantize(N, rng, lookup=True)
    fused = im.gemm_primfunc(M, K, N, kern, epi).with_attr("global_symbol", "qgemm_epi")
    tuned, replaced = tn.apply_database(IRModule({"qgemm_epi": fused}), host, db)
    assert replaced == 1 and tuned["qgemm_epi"].attrs[EPILOGUE_ATTR] == epi.to_json()
    trace = db.best_trace(tasks[0].workload, host)
    assert structural_equal(tuned["qgemm_epi"].without_attr("global_symbol"), im.gemm_primfunc(
        M, K, N, kern, epi, tn.tuned_tile(trace, "gemm", (M, K, N), host)).without_attr("global_symbol"))
    lib = tvm.compile(tuned, host)
    dev = tvm.cpu()
    y = tvm.runtime.tensor(np.zeros((M, N), epi.out_dtype), dev)
    lib["qgemm_epi"](*[tvm.runtime.tensor(v, dev) for v in (a, *im.gemm_args(w, kern), *ops)], y)
    np.testing.assert_array_equal(y.numpy(), apply_epilogue(epi, ops, ref))

    # resume: the task already has its share, so nothing more is measured
    again = tn.tune(tasks, host, TuningDatabase(str(tmp_path), host, "host"), tn.TuneOptions(trials=3))
    assert again.trials == {}

    # an x86 record never reaches another target: its folder is keyed by the full target
    arm = resolve_target("rpi5").tvm_target()
    assert target_key(arm, "rpi5") != db.key
    from compiler.errors import IntformerError

    with pytest.raises(IntformerError, match="no tuning records for target rpi5"):
        TuningDatabase(str(tmp_path), arm, "rpi5", create=False)


def test_tuned_tile_reads_the_sampled_decisions(host):
    """tuned_tile recovers (mr, nr, m_split) from a trace of each design space, whatever was sampled: the tile
    is the one the schedule built (the init loops of the accumulator tile are mr x nr x lanes)."""
    from compiler.tvm_compat import Schedule

    kern = im.select_kernel(host)
    task = tn.extract_tasks(IRModule({"q": im.gemm_primfunc(M, K, N, kern)}), host)[0]
    seen = set()
    for seed in range(1, 6):
        spaces = tn._gemm_space_fn(task)(Schedule(task.workload, seed=seed))
        for sch, m_split in zip(spaces, (False, True)):
            mr, nr, split = tn.tuned_tile(sch.trace, "gemm", (M, K, N), host)
            extents = [int(sch.get(lp).extent) for lp in sch.get_loops(sch.get_sblock("out_init"))[-3:]]
            assert split == m_split and extents == [mr, nr, kern.lanes]
            seen.add((mr, nr))
    assert len(seen) > 1  # the decisions were really read, not a default


def test_interrupted_write_is_dropped(host, gemm_mod, tmp_path):
    """A record cut short by a kill: the database opens, keeping every complete record."""
    tasks = tn.extract_tasks(gemm_mod, host)
    db = TuningDatabase(str(tmp_path), host, "host")
    tn.tune(tasks, host, db, tn.TuneOptions(trials=1, trials_per_iter=1))
    path = os.path.join(db.path, "database_tuning_record.json")
    with open(path) as f:
        complete = f.read()
    with open(path, "a") as f:
        f.write(complete[: len(complete) // 2])  # no newline: the write was cut
    reopened = TuningDatabase(str(tmp_path), host, "host")
    assert reopened.records_for(tasks[0].workload) == 1
    with open(path) as f:
        assert f.read() == complete


def test_fused_kernel_tuned_with_metaschedule_rules(host, tmp_path):
    """A fused integer kernel (requantize-like chain) is tuned with MetaSchedule's own rules; the applied record
    computes the same values bit for bit."""
    from tvm import relax
    from tvm.script import relax as R

    from compiler.tvm_compat import fuse_for

    @tvm.script.ir_module
    class Mod:
        @R.function
        def main(x: R.Tensor((64, 256), "int32")) -> R.Tensor((64, 256), "int8"):
            with R.dataflow():
                y = R.multiply(R.astype(x, "int64"), R.const(1518500250, "int64"))
                z = R.right_shift(R.add(y, R.const(1 << 30, "int64")), R.const(31, "int64"))
                out = R.astype(R.clip(z, -128, 127), "int8")
                R.output(out)
            return out

    fused = fuse_for(Mod, host)  # the build's fusion (extract_tasks takes the fused module)
    tasks = tn.extract_tasks(fused, host)
    assert [t.kind for t in tasks] == ["fused"]
    db = TuningDatabase(str(tmp_path), host, "host")
    prog = tn.tune(tasks, host, db, tn.TuneOptions(trials=2, trials_per_iter=2))
    assert prog.trials[tasks[0].name] >= 1 and not prog.errors  # the search may find fewer distinct candidates
    tuned, replaced = tn.apply_database(fuse_for(Mod, host), host, db)  # a copy: `fused` stays untuned
    assert replaced == 1
    x = np.random.default_rng(1).integers(-(1 << 20), 1 << 20, (64, 256)).astype("int32")
    dev = tvm.cpu()
    outs = []
    for mod in (fused, tuned):
        vm = relax.VirtualMachine(tvm.compile(mod, host), dev)
        outs.append(vm["main"](tvm.runtime.tensor(x, dev)).numpy())
    ref = np.clip((x.astype(np.int64) * 1518500250 + (1 << 30)) >> 31, -128, 127).astype(np.int8)
    np.testing.assert_array_equal(outs[0], ref)
    np.testing.assert_array_equal(outs[1], ref)
