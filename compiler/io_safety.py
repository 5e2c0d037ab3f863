"""Checks on the files and numbers a user hands the CLI, made before any long work starts.

- Outputs: ``check_output`` fails in a second on a path whose folder is missing or read-only, that is a
  folder, lies under /proc or /sys, or is one of the command's inputs; ``atomic_output`` writes through a
  temporary file in the same folder renamed into place, so an interrupted or failed write never leaves a
  half-written file nor touches the old one.
- Libraries: ``check_library`` reads the ELF header and checks that every program and section header and
  every segment lies within the file, and that the manifest beside it agrees, before the library is mapped
  (a truncated library would otherwise die with SIGBUS); a library built for another CPU is named as such.
- Thread counts: ``check_threads`` bounds them by the CPUs this process may use.
- The CPU: ``cpu_flags`` (/proc/cpuinfo), ``check_cpu_features`` (a library for instructions this CPU lacks),
  ``amx_permitted`` (whether Linux grants this process the AMX tiles).

A leaf module: the standard library and compiler.errors only, so the runtime loader can use it on a board.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import struct
import tempfile

from compiler.errors import IntformerError

PSEUDO_FILESYSTEMS = ("/proc", "/sys", "/dev")


def _is_same(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:  # one does not exist (yet): compare where they would be
        return os.path.realpath(a) == os.path.realpath(b)


def check_output(path: str, flag: str, inputs: dict | None = None, kind: str = "file") -> str:
    """Fail now, naming ``flag``, unless ``path`` can be written as a ``kind`` ("file" or "folder").

    ``inputs``: flag -> path of the command's inputs, none of which an output may replace."""
    if not path or not str(path).strip():
        raise IntformerError(f"{flag}: an empty path; give a file name")
    real = os.path.realpath(path)
    if any(real == p or real.startswith(p + os.sep) for p in PSEUDO_FILESYSTEMS):
        raise IntformerError(f"{flag} {path}: {real.split(os.sep)[1]} is a kernel interface, not a place for "
                             "files; write somewhere else")
    for in_flag, in_path in (inputs or {}).items():
        if in_path and _is_same(path, in_path):
            raise IntformerError(f"{flag} {path} is the same file as {in_flag}: writing it would destroy the "
                                 f"input; choose another {flag}")
    if kind == "file" and os.path.isdir(path):
        raise IntformerError(f"{flag} {path}: is a folder; give a file name inside it, e.g. "
                             f"{os.path.join(path, 'out')}")
    if kind == "folder" and os.path.exists(path) and not os.path.isdir(path):
        raise IntformerError(f"{flag} {path}: is a file, not a folder; give a folder (created if missing)")
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise IntformerError(f"{flag} {path}: folder {parent} does not exist; create it first")
    if not os.access(parent, os.W_OK | os.X_OK) or (os.path.exists(path) and not os.access(path, os.W_OK)):
        raise IntformerError(f"{flag} {path}: not writable here; choose a folder you can write to")
    return path


@contextlib.contextmanager
def atomic_output(path: str, suffix: str = ".tmp"):
    """Yield a temporary path (ending in ``suffix``) beside ``path``; on success it is renamed onto ``path``
    (os.replace), on any failure removed. Readers never see a half-written file, and the old one survives a
    failed write."""
    parent = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=parent, prefix=".intformer-", suffix=suffix)
    os.close(fd)
    try:
        yield tmp
        if os.path.exists(path):  # keep the permissions of the file being replaced
            os.chmod(tmp, os.stat(path).st_mode & 0o7777)
        else:  # mkstemp's 0600 widened as the umask allows (bits the writer set, e.g. a linker's x, stay)
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, (os.stat(tmp).st_mode | (0o666 & ~umask)) & 0o7777)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_text(path: str, text: str) -> None:
    """Write ``text`` to ``path`` atomically (UTF-8)."""
    with atomic_output(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)


def check_threads(n: int, flag: str = "--threads") -> int:
    """A thread count between 1 and the CPUs this process may run on."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if n < 1 or n > cpus:
        raise IntformerError(f"{flag} {n}: give 1 to {cpus} (the CPUs this machine lets intformer use)")
    return n


def check_range(value, flag: str, lo, hi, what: str = "") -> None:
    """``lo <= value <= hi`` (a finite number), else a one-line error naming the flag."""
    if value is None:
        return
    if (isinstance(value, float) and not math.isfinite(value)) or not lo <= value <= hi:
        raise IntformerError(f"{flag} {value}: must be {what or f'between {lo} and {hi}'}")


# ---- libraries ------------------------------------------------------------------------------------------

ELF_MACHINES = {3: "x86", 40: "arm", 62: "x86_64", 183: "aarch64", 243: "riscv"}
_HOST_MACHINE = {"x86_64": 62, "amd64": 62, "aarch64": 183, "arm64": 183, "armv7l": 40, "i686": 3,
                 "riscv64": 243}
ET_DYN, SHT_NOBITS = 3, 8


def _machine_of_triple(triple: str) -> int | None:
    arch = (triple or "").split("-")[0]
    if arch.startswith(("armv", "arm")) and not arch.startswith("arm64"):
        return 40
    return _HOST_MACHINE.get(arch)


def read_elf(path: str) -> dict:
    """The ELF header fields of a shared library, after checking that every header and segment lies within
    the file. Raises IntformerError naming the file otherwise."""
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            return _check_elf(path, f, size)
    except OSError as e:
        raise IntformerError(f"{path}: cannot read it ({e.strerror})") from None


def _check_elf(path: str, f, size: int) -> dict:
    def table(offset: int, count: int, entsize: int) -> bytes:
        f.seek(offset)
        return f.read(count * entsize)

    data = f.read(64)
    if len(data) < 52 or data[:4] != b"\x7fELF":
        raise IntformerError(f"{path}: not a compiled library (no ELF header); give the .so `intformer compile` "
                             "wrote")
    cls, enc = data[4], data[5]
    if cls not in (1, 2) or enc not in (1, 2):
        raise IntformerError(f"{path}: corrupt ELF header; compile the model again")
    e = "<" if enc == 1 else ">"
    bits64 = cls == 2
    hdr = f"{e}HHI{'QQQ' if bits64 else 'III'}IHHHHHH"
    if size < 16 + struct.calcsize(hdr):
        raise IntformerError(f"{path}: truncated ({size} bytes, the ELF header is cut off); compile it again "
                             "or copy the whole file")
    (e_type, machine, _, _, phoff, shoff, _, _, phentsize, phnum, shentsize, shnum, _) = \
        struct.unpack_from(hdr, data, 16)

    def truncated(what: str):
        return IntformerError(f"{path}: truncated or corrupt library ({what} beyond its {size} bytes); "
                              "compile it again or copy the whole file")

    if e_type != ET_DYN:
        raise IntformerError(f"{path}: an ELF file but not a shared library; give the .so `intformer compile` "
                             "wrote")
    ph = f"{e}II{'QQQQQQ' if bits64 else 'IIIIII'}"
    sh = f"{e}II{'QQQQ' if bits64 else 'IIII'}IIQQ" if bits64 else f"{e}IIIIIIIIII"
    if phnum and (phentsize < struct.calcsize(ph) or phoff + phnum * phentsize > size):
        raise truncated("program headers")
    phdrs = table(phoff, phnum, phentsize)
    for i in range(phnum):
        fields = struct.unpack_from(ph, phdrs, i * phentsize)
        # 64-bit: type, flags, offset, vaddr, paddr, filesz, memsz, align; 32-bit: type, offset, vaddr,
        # paddr, filesz, memsz, flags, align
        offset, filesz = (fields[2], fields[5]) if bits64 else (fields[1], fields[4])
        if offset + filesz > size:
            raise truncated(f"segment {i}")
    if shnum and (shentsize < struct.calcsize(sh) or shoff + shnum * shentsize > size):
        raise truncated("section headers")
    shdrs = table(shoff, shnum, shentsize)
    for i in range(shnum):
        fields = struct.unpack_from(sh, shdrs, i * shentsize)
        # name, type, flags, addr, offset, size, ... (the same order in both classes)
        sh_type, offset, sec_size = fields[1], fields[4], fields[5]
        if sh_type != SHT_NOBITS and offset + sec_size > size:
            raise truncated(f"section {i}")
    return {"machine": machine, "bits": 64 if bits64 else 32, "size": size}


def read_sidecar(path: str) -> dict | None:
    """The manifest JSON written beside a library (``OUT.so.manifest.json``), or None if there is none."""
    side = path + ".manifest.json"
    if not os.path.exists(side):
        return None
    try:
        with open(side, encoding="utf-8") as f:
            d = json.load(f)
    except (OSError, ValueError) as e:
        raise IntformerError(f"{side}: not a readable manifest ({e}); delete it or compile again") from None
    if not isinstance(d, dict) or not isinstance(d.get("target"), dict):
        raise IntformerError(f"{side}: not an intformer manifest; delete it or compile again")
    return d


def cpu_flags() -> set[str]:
    """This CPU's feature flags as Linux names them in /proc/cpuinfo (x86 `flags`, ARM `Features`)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


# Linux: arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) grants this process the AMX tile data state (asked
# here by the host target, and by every AMX kernel at each call: schedules/amx_gemm.py).
SYS_ARCH_PRCTL = 158
ARCH_REQ_XCOMP_PERM = 0x1023
XFEATURE_XTILEDATA = 18


def amx_permitted() -> bool:
    """True if Linux grants this process the AMX tile state (arch_prctl ARCH_REQ_XCOMP_PERM, XTILEDATA): kernel
    5.16 or newer, and a hypervisor that exposes it. The AMX kernels ask the same at each call."""
    if platform.system() != "Linux" or platform.machine() not in ("x86_64", "AMD64"):
        return False
    import ctypes

    try:
        return ctypes.CDLL(None, use_errno=True).syscall(SYS_ARCH_PRCTL, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0
    except (OSError, AttributeError):
        return False


def check_cpu_features(path: str, target: dict) -> None:
    """A library whose target needs instructions this CPU lacks (its `isa`, named as in /proc/cpuinfo) would die
    with SIGILL in its first kernel: a ForeignLibrary error instead."""
    flags = cpu_flags()
    missing = [f for f in target.get("isa") or () if flags and f not in flags]
    if missing:
        raise ForeignLibrary(f"{path}: built for target {target.get('name')}, which needs {', '.join(missing)}; "
                             "this CPU lacks them: compile it for this machine with --target host, or run it on "
                             "a machine that has them")


class ForeignLibrary(IntformerError):
    """A library built for another CPU than this machine's."""


def check_library(path: str, local: bool = True) -> dict | None:
    """Check a library before it is mapped (see the module docstring); returns the sidecar manifest or None.

    ``local``: it is to be loaded by this process, so it must be built for this machine's CPU."""
    if not os.path.exists(path):
        raise IntformerError(f"{path}: no such file")
    if os.path.isdir(path):
        raise IntformerError(f"{path}: is a folder; give the .so `intformer compile` wrote")
    elf = read_elf(path)
    side = read_sidecar(path)
    target = (side or {}).get("target") or {}
    name = target.get("name") or "?"
    triple = (target.get("llvm") or {}).get("mtriple", "")
    want = _machine_of_triple(triple)
    arch = ELF_MACHINES.get(elf["machine"], f"ELF machine {elf['machine']}")
    if side is not None and want is not None and want != elf["machine"]:
        raise IntformerError(f"{path}.manifest.json: says target {name} ({triple}) but {path} is built for "
                             f"{arch}; the manifest belongs to another library: compile again")
    host = _HOST_MACHINE.get(platform.machine().lower())
    if local and side is not None and elf["machine"] == host:
        check_cpu_features(path, target)
    if local and host is not None and elf["machine"] != host:
        built = f"target {name}, {arch}" if side else arch
        raise ForeignLibrary(f"{path}: built for another CPU ({built}), this machine is {platform.machine()}; "
                             "run it on the device with --rpc HOST:PORT (an emulated board: `intformer board "
                             f"start`), or make a runner bundle with `intformer package {path} -o DIR` and copy "
                             "DIR there")
    return side
