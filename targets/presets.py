"""Target presets as data: a name maps to a TVM target dict, ISA features and a toolchain.

``host`` is resolved at run time from the CPU this process runs on. Adding a preset is adding a dict entry.
A user adds a target without editing code: a JSON file (``TargetSpec.to_json`` form) given as ``--target FILE``,
or registered once with ``intformer targets --add FILE`` (kept in ``user_targets_dir()``, then usable by name).
"""

from __future__ import annotations

import functools
import json
import os
import platform
from collections.abc import Callable
from dataclasses import dataclass
from typing import Optional

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
    qemu_cpu: Optional[str] = None  # `qemu-aarch64 -cpu` that runs this target's code (the emulated board)

    def tvm_target(self):
        from compiler.tvm_compat import make_target

        return make_target(self.llvm)

    def to_json(self) -> dict:
        return {"name": self.name, "description": self.description, "llvm": dict(self.llvm), "isa": list(self.isa),
                "cross_compiler": self.cross_compiler, "default_threads": self.default_threads,
                "qemu_cpu": self.qemu_cpu}

    @staticmethod
    def from_json(d: dict, origin: str = "target") -> TargetSpec:
        """A spec from its JSON form; ``origin`` (a file name) prefixes errors."""
        if not isinstance(d, dict):
            raise IntformerError(f"{origin}: a target is a JSON object with at least \"name\" and \"llvm\"")
        unknown = sorted(set(d) - _JSON_FIELDS)
        if unknown:
            raise IntformerError(f"{origin}: unknown field(s) {unknown}; a target has {sorted(_JSON_FIELDS)}")
        for key in ("name", "llvm"):
            if key not in d:
                raise IntformerError(f"{origin}: missing \"{key}\" (e.g. {_EXAMPLE_JSON})")
        llvm = d["llvm"]
        if not isinstance(llvm, dict) or llvm.get("kind") != "llvm":
            raise IntformerError(f"{origin}: \"llvm\" must be a TVM target dict with \"kind\": \"llvm\" "
                                 f"(e.g. {_EXAMPLE_JSON['llvm']})")
        spec = TargetSpec(name=str(d["name"]), description=str(d.get("description", d["name"])), llvm=dict(llvm),
                          isa=tuple(d.get("isa", ())), cross_compiler=d.get("cross_compiler"),
                          default_threads=int(d.get("default_threads", 0)), qemu_cpu=d.get("qemu_cpu"))
        try:
            spec.tvm_target()
        except Exception as e:
            first = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
            raise IntformerError(f"{origin}: TVM rejects the target dict {llvm}: {first}") from None
        return spec


_JSON_FIELDS = {"name", "description", "llvm", "isa", "cross_compiler", "default_threads", "qemu_cpu"}
_EXAMPLE_JSON = {"name": "my-board", "llvm": {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a76",
                                              "mattr": ["+neon", "+dotprod"]},
                 "cross_compiler": "aarch64-linux-gnu-gcc"}


def _x86(name: str, desc: str, mcpu: str, isa: tuple[str, ...]) -> TargetSpec:
    return TargetSpec(name, desc, {"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": mcpu}, isa)


def _host() -> TargetSpec:
    """The CPU this process runs on, with LLVM's name for it and the int8 features it has."""
    from compiler.tvm_compat import host_cpu_name

    cpu = host_cpu_name()
    flags = _cpu_flags()
    from compiler.io_safety import amx_permitted

    if not ({"amx_tile", "amx_int8"} <= flags and amx_permitted()):
        flags.discard("amx_int8")
    isa = tuple(f for f in ("avx2", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "amx_int8", "asimddp", "i8mm")
                if f in flags)
    llvm = {"kind": "llvm", "mcpu": cpu, "num-cores": os.cpu_count() or 1}
    if "amx_int8" in isa:  # LLVM may name an AMX CPU after an older core (a VM's CPUID): say it explicitly
        llvm["mattr"] = ["+amx-tile", "+amx-int8"]
    if platform.machine() in ("aarch64", "arm64"):
        llvm["mtriple"] = "aarch64-linux-gnu"
    else:
        llvm["mtriple"] = "x86_64-linux-gnu"
    return TargetSpec("host", f"this machine ({cpu})", llvm, isa)


def _cpu_flags() -> set[str]:
    from compiler.io_safety import cpu_flags

    return cpu_flags()


def _arm64(name: str, desc: str, mcpu: str, isa: tuple[str, ...], qemu_cpu: str) -> TargetSpec:
    """A 64-bit ARM Linux board; `mattr` spells out the int8 features so the TVM target's
    `feature.has_dotprod` / `has_matmul_i8` (read by the ARM schedules) say the same as `isa`."""
    llvm = {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": mcpu, "mattr": [f"+{f}" for f in isa]}
    return TargetSpec(name, desc, llvm, isa, cross_compiler="aarch64-linux-gnu-gcc", qemu_cpu=qemu_cpu)


# name -> factory; factories keep `host` lazy (it asks LLVM about this CPU).
TARGETS: dict[str, Callable[[], TargetSpec]] = {
    "host": _host,
    "x86-avx512-vnni": lambda: _x86("x86-avx512-vnni", "x86-64 with AVX-512 VNNI (Cascade Lake and newer, Zen 4/5)",
                                    "cascadelake", ("avx2", "avx512f", "avx512bw", "avx512_vnni")),
    "x86-amx": lambda: _x86("x86-amx", "x86-64 with AMX-INT8 tiles (Sapphire Rapids and newer Xeons)",
                            "sapphirerapids", ("avx2", "avx512f", "avx512bw", "avx512_vnni", "amx_int8")),
    "x86-avx-vnni": lambda: _x86("x86-avx-vnni", "x86-64 with AVX-VNNI, no AVX-512 (Alder Lake class)",
                                 "alderlake", ("avx2", "avx_vnni")),
    "x86-avx2": lambda: _x86("x86-avx2", "x86-64 with AVX2, no dot-product instructions (Haswell class)",
                             "haswell", ("avx2",)),
    "rpi4": lambda: _arm64("rpi4", "Raspberry Pi 4 (Cortex-A72, NEON, no dot product)",
                           "cortex-a72", ("neon",), "cortex-a72"),
    "rpi5": lambda: _arm64("rpi5", "Raspberry Pi 5 (Cortex-A76, NEON + SDOT/UDOT)",
                           "cortex-a76", ("neon", "dotprod"), "cortex-a76"),
    "jetson-orin": lambda: _arm64("jetson-orin", "NVIDIA Jetson Orin CPU (Cortex-A78AE, NEON + SDOT/UDOT)",
                                  "cortex-a78ae", ("neon", "dotprod"), "max"),
    "graviton3": lambda: _arm64("graviton3", "AWS Graviton3 (Neoverse V1, SDOT + SMMLA int8 matrix multiply)",
                                "neoverse-v1", ("neon", "dotprod", "i8mm"), "max"),
    "rk3588": lambda: _arm64("rk3588", "Rockchip RK3588 (Cortex-A76 big cores + A55, NEON + SDOT/UDOT)",
                             "cortex-a76", ("neon", "dotprod"), "cortex-a76"),
    "armv7": lambda: TargetSpec(
        "armv7", "32-bit ARMv7 boards (Cortex-A7, NEON, hard float; cross-link only, no emulated board)",
        {"kind": "llvm", "mtriple": "armv7a-linux-gnueabihf", "mcpu": "cortex-a7", "mattr": ["+neon", "+vfp4"],
         "mfloat-abi": "hard"},
        ("neon",), cross_compiler="arm-linux-gnueabihf-gcc"),
}


def user_targets_dir() -> str:
    """Where `intformer targets --add` keeps user targets ($XDG_CONFIG_HOME/intformer/targets)."""
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return os.path.join(base, "intformer", "targets")


def load_target_file(path: str) -> TargetSpec:
    try:
        with open(path) as f:
            data = json.load(f)
    except OSError as e:
        raise IntformerError(f"{path}: cannot read target file ({e.strerror})") from None
    except json.JSONDecodeError as e:
        raise IntformerError(f"{path}: not valid JSON ({e.msg}, line {e.lineno})") from None
    return TargetSpec.from_json(data, origin=path)


def _user_targets() -> dict[str, Callable[[], TargetSpec]]:
    d = user_targets_dir()
    if not os.path.isdir(d):
        return {}
    return {f[:-len(".json")]: functools.partial(load_target_file, os.path.join(d, f))
            for f in sorted(os.listdir(d)) if f.endswith(".json")}


def all_targets() -> dict[str, Callable[[], TargetSpec]]:
    """Built-in presets, then user targets (a user target never shadows a preset)."""
    return {**_user_targets(), **TARGETS}


def add_user_target(path: str) -> TargetSpec:
    """Validate a target JSON file and register it by its name; returns the spec."""
    spec = load_target_file(path)
    if spec.name in TARGETS:
        raise IntformerError(f"{path}: '{spec.name}' is a built-in preset; give the target another name")
    if not spec.name.replace("-", "").replace("_", "").replace(".", "").isalnum():
        raise IntformerError(f"{path}: target name '{spec.name}' may hold only letters, digits, '-', '_', '.'")
    os.makedirs(user_targets_dir(), exist_ok=True)
    with open(os.path.join(user_targets_dir(), spec.name + ".json"), "w") as f:
        json.dump(spec.to_json(), f, indent=1)
    return spec


def resolve_target(name: str) -> TargetSpec:
    """The preset or user target called ``name``, or the target in the JSON file ``name``;
    an unknown name is an error that lists the known ones."""
    if name.endswith(".json") or os.sep in name:
        return load_target_file(name)
    known = all_targets()
    factory = known.get(name)
    if factory is None:
        raise IntformerError(f"unknown target '{name}'; known targets: {', '.join(known)} "
                             "(or a target JSON file, see `intformer targets --help`)")
    return factory()


def targets_table() -> list[dict]:
    """One row per known target: its JSON form plus whether its toolchain is there (`intformer targets`)."""
    from targets.toolchain import toolchain_for

    rows = []
    for factory in all_targets().values():
        spec = factory()
        tc = toolchain_for(spec)
        row = spec.to_json()
        row["toolchain"] = {"compiler": tc.compiler if tc else None, "installed": tc.installed() if tc else True,
                            "install": tc.install_command if tc and tc.packages else None}
        rows.append(row)
    return rows


def print_targets(as_json: bool = False) -> None:
    rows = targets_table()
    if as_json:
        print(json.dumps(rows, indent=1))
        return
    from rich.console import Console
    from rich.table import Table

    t = Table(title="intformer targets")
    for col in ("name", "CPU", "ISA features", "cross toolchain", "emulated board"):
        t.add_column(col)
    missing = {}
    for r in rows:
        tc = r["toolchain"]
        state = "native" if tc["compiler"] is None else ("installed" if tc["installed"] else "MISSING")
        if not tc["installed"] and tc["install"]:
            missing[tc["compiler"]] = tc["install"]
        t.add_row(r["name"], r["llvm"].get("mcpu", "-"), " ".join(r["isa"]) or "-",
                  state if tc["compiler"] is None else f"{tc['compiler']}: {state}",
                  r["qemu_cpu"] or "-")
    con = Console()
    con.print(t)
    for compiler, cmd in missing.items():
        con.print(f"{compiler} is missing; install it with: {cmd}")
    con.print(f"user targets: --target FILE.json, or `intformer targets --add FILE.json` to keep one by name "
              f"(kept in {user_targets_dir()}); `intformer targets --json` prints every target's JSON form")
