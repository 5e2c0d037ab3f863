"""Cross toolchains: which compiler links a target's library, which Debian packages provide it.

A target names its linker (`TargetSpec.cross_compiler`); this table says where that linker comes from, so a
missing one is an error carrying the exact `apt-get install` command.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from typing import Optional

from compiler.errors import IntformerError


@dataclass(frozen=True)
class Toolchain:
    compiler: str  # the gcc driver that links the shared library
    packages: tuple[str, ...]  # Debian packages that provide it (and its objdump)
    objdump: str
    files: tuple[str, ...] = ()  # files it links against (the target's C runtime), absent without its libc-dev

    @property
    def install_command(self) -> str:
        return f"apt-get install -y --no-install-recommends {' '.join(self.packages)}"

    def installed(self) -> bool:
        return shutil.which(self.compiler) is not None and all(os.path.exists(f) for f in self.files)


TOOLCHAINS: dict[str, Toolchain] = {
    "aarch64-linux-gnu-gcc": Toolchain(
        "aarch64-linux-gnu-gcc", ("gcc-aarch64-linux-gnu", "libc6-dev-arm64-cross", "binutils-aarch64-linux-gnu"),
        "aarch64-linux-gnu-objdump", ("/usr/aarch64-linux-gnu/lib/crti.o",)),
    "arm-linux-gnueabihf-gcc": Toolchain(
        "arm-linux-gnueabihf-gcc", ("gcc-arm-linux-gnueabihf", "libc6-dev-armhf-cross", "binutils-arm-linux-gnueabihf"),
        "arm-linux-gnueabihf-objdump", ("/usr/arm-linux-gnueabihf/lib/crti.o",)),
}


def toolchain_for(spec) -> Optional[Toolchain]:
    """The toolchain of a cross target; None for targets the host's compiler links."""
    if not spec.cross_compiler:
        return None
    return TOOLCHAINS.get(spec.cross_compiler, Toolchain(spec.cross_compiler, (), spec.cross_compiler.rsplit(
        "-", 1)[0] + "-objdump"))


def require_toolchain(spec) -> None:
    """Raise a one-line error with the install command if the target's cross compiler is missing."""
    tc = toolchain_for(spec)
    if tc is None or tc.installed():
        return
    fix = (f"install it with: {tc.install_command}" if tc.packages
           else "install it and put it on PATH")
    raise IntformerError(f"target '{spec.name}' needs the cross toolchain {tc.compiler} (with its C library), which "
                         f"is not installed; {fix}")


def _export_with(mod, cross_compiler: str) -> str:
    """f_export of MetaSchedule's builder for a cross target: the candidate as a .so the device can load."""
    import os
    import tempfile

    from compiler.tvm_compat import export_library

    path = os.path.join(tempfile.mkdtemp(prefix="intformer-tune-"), "candidate.so")
    export_library(mod, path, cross_compiler)
    return path


def tuning_export(spec):
    """The builder's export function for ``spec`` (TargetSpec): None (TVM's default) for the host."""
    import functools

    if not spec.cross_compiler:
        return None
    return functools.partial(_export_with, cross_compiler=spec.cross_compiler)
