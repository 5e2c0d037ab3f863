"""Target presets as data: a name maps to a TVM target dict, ISA features and a toolchain.

``host`` is resolved at run time from the CPU this process runs on. Adding a preset is adding a dict entry.
"""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass, field
from typing import Callable, Optional

from compiler.errors import IntformerError


@dataclass(frozen=True)
class TargetSpec:
    """One compilation target."""

    name: str
    description: str
    llvm: dict  # the TVM target dict ({"kind": "llvm", ...}); frozen by convention, never mutated
    isa: tuple[str, ...] = ()
    cross_compiler: Optional[str] = None  # None: the host's compiler links the library
    default_threads: int = 0  # 0: all cores

    def tvm_target(self):
        from compiler.tvm_compat import make_target

        return make_target(self.llvm)

    def to_json(self) -> dict:
        return {"name": self.name, "llvm": dict(self.llvm), "isa": list(self.isa),
                "cross_compiler": self.cross_compiler}


def _x86(name: str, desc: str, mcpu: str, isa: tuple[str, ...]) -> TargetSpec:
    return TargetSpec(name, desc, {"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": mcpu}, isa)


def _host() -> TargetSpec:
    """The CPU this process runs on, with LLVM's name for it and the int8 features it has."""
    from compiler.tvm_compat import host_cpu_name

    cpu = host_cpu_name()
    flags = _cpu_flags()
    isa = tuple(f for f in ("avx2", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "asimddp", "i8mm")
                if f in flags)
    llvm = {"kind": "llvm", "mcpu": cpu, "num-cores": os.cpu_count() or 1}
    if platform.machine() in ("aarch64", "arm64"):
        llvm["mtriple"] = "aarch64-linux-gnu"
    else:
        llvm["mtriple"] = "x86_64-linux-gnu"
    return TargetSpec("host", f"this machine ({cpu})", llvm, isa)


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


# name -> factory; factories keep `host` lazy (it asks LLVM about this CPU).
TARGETS: dict[str, Callable[[], TargetSpec]] = {
    "host": _host,
    "x86-avx512-vnni": lambda: _x86("x86-avx512-vnni", "x86-64 with AVX-512 VNNI (Cascade Lake and newer, Zen 4/5)",
                                    "cascadelake", ("avx2", "avx512f", "avx512bw", "avx512_vnni")),
    "x86-avx-vnni": lambda: _x86("x86-avx-vnni", "x86-64 with AVX-VNNI, no AVX-512 (Alder Lake class)",
                                 "alderlake", ("avx2", "avx_vnni")),
    "x86-avx2": lambda: _x86("x86-avx2", "x86-64 with AVX2, no dot-product instructions (Haswell class)",
                             "haswell", ("avx2",)),
}


def resolve_target(name: str) -> TargetSpec:
    """The preset called ``name``; an unknown name is an error that lists the known ones."""
    factory = TARGETS.get(name)
    if factory is None:
        raise IntformerError(f"unknown target '{name}'; known targets: {', '.join(TARGETS)}")
    return factory()


def print_targets() -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title="intformer targets")
    for col in ("name", "description", "ISA features", "LLVM target"):
        t.add_column(col)
    for name, factory in TARGETS.items():
        spec = factory()
        t.add_row(name, spec.description, " ".join(spec.isa) or "-", str(spec.llvm))
    Console().print(t)
