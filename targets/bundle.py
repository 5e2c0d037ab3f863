"""The runner bundle: a folder that runs a compiled library on a device without Python.

    DIR/<library>.so      the model library (and its manifest JSON, when it has one beside it)
    DIR/libtvm_runtime.so the TVM runtime of the library's architecture, from the `apache-tvm` wheel
    DIR/libtvm_ffi.so     from the `apache-tvm-ffi` wheel (same versions as this machine's)
    DIR/libintformer.so   the C API of intformer.h (targets/runner/intformer_c_api.cc)
    DIR/intformer-run     `intformer run` in C++ (targets/runner/intformer_run.cc, npz.cc)
    DIR/intformer.h       the C API's header
    DIR/README.md

The architecture comes from the library's ELF header. For this machine's architecture the runtime libraries are
the installed wheels' files; for another one the matching wheels are downloaded once (pip download, the same way
the emulated board gets them, targets/board_setup.py) and the two libraries kept in ``~/.cache/intformer/runtime``.
The C++ sources are compiled with Debian's g++ for the target (rpath ``$ORIGIN``: the folder runs from anywhere
without environment variables), and the binaries cached in ``~/.cache/intformer/runner`` by a hash of sources,
compiler and TVM versions.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import platform
import shutil
import struct
import subprocess
import sys
import tempfile
import zipfile
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import metadata
from typing import Optional

from compiler.errors import IntformerError
from compiler.progress import status
from targets.board_setup import BoardPaths, default_cache_dir, is_set_up, wanted_versions

RUNNER_SOURCES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "runner")
C_API_SOURCES = ("intformer_c_api.cc",)
RUNNER_PROGRAM_SOURCES = ("intformer_run.cc", "npz.cc")
HEADERS = ("intformer.h", "npz.h")
RUNNER = "intformer-run"
MARKER = ".intformer-bundle"  # in each bundle: the files it wrote, so that packaging again may replace them
C_API_LIB = "libintformer.so"
# (wheel distribution, path of the library inside its wheel)
RUNTIME_LIBS = (("apache-tvm", "tvm/lib/libtvm_runtime.so"), ("apache-tvm-ffi", "tvm_ffi/lib/libtvm_ffi.so"))
EM_X86_64, EM_AARCH64, EM_ARM = 62, 183, 40


HOST_ARCH = {"x86_64": "x86_64", "AMD64": "x86_64", "aarch64": "aarch64", "arm64": "aarch64"}.get(
    platform.machine(), platform.machine())


@dataclass(frozen=True)
class Arch:
    """A CPU architecture a bundle can be built for."""

    name: str
    cross_gxx: str  # Debian's cross g++ for it (another host)
    cross_packages: tuple[str, ...]  # the Debian packages that provide it
    wheel_platform: Optional[str]  # pip --platform of its TVM wheels; None: no wheels exist

    @property
    def gxx(self) -> str:
        """The g++ that builds the runner for it on this machine."""
        return "g++" if self.name == HOST_ARCH else self.cross_gxx

    @property
    def install_command(self) -> str:
        packages = ("g++",) if self.name == HOST_ARCH else self.cross_packages
        return f"apt-get install -y --no-install-recommends {' '.join(packages)}"


ARCHES: dict[int, Arch] = {
    EM_X86_64: Arch("x86_64", "x86_64-linux-gnu-g++", ("g++-x86-64-linux-gnu",), "manylinux_2_28_x86_64"),
    EM_AARCH64: Arch("aarch64", "aarch64-linux-gnu-g++", ("g++-aarch64-linux-gnu",), "manylinux_2_28_aarch64"),
    EM_ARM: Arch("armv7", "arm-linux-gnueabihf-g++", ("g++-arm-linux-gnueabihf",), None),
}


@dataclass(frozen=True)
class Bundle:
    directory: str
    arch: str
    library: str  # the model library's file name inside the folder
    files: tuple[tuple[str, int], ...]  # (name, bytes), every file of the folder

    @property
    def total_bytes(self) -> int:
        return sum(n for _, n in self.files)

    @property
    def library_bytes(self) -> int:
        return dict(self.files)[self.library]


def cache_root() -> str:
    """~/.cache/intformer (the folder that holds the emulated board's files too)."""
    return os.path.dirname(default_cache_dir())


def library_arch(path: str) -> Arch:
    """The architecture of the shared library at `path`, from its ELF header."""
    if not os.path.isfile(path):
        raise IntformerError(f"{path}: no such file")
    with open(path, "rb") as f:
        head = f.read(20)
    if len(head) < 20 or head[:4] != b"\x7fELF":
        raise IntformerError(f"{path}: not a compiled library (not an ELF file)")
    machine = struct.unpack_from("<H", head, 18)[0]
    arch = ARCHES.get(machine)
    if arch is None:
        raise IntformerError(f"{path}: ELF machine {machine} is not one intformer bundles (x86-64, aarch64)")
    if arch.wheel_platform is None:
        raise IntformerError(f"{path}: a {arch.name} library; TVM publishes no {arch.name} runtime wheels, so "
                             "there is no runtime to bundle with it (64-bit ARM and x86-64 are supported)")
    return arch


def _installed_file(dist: str, member: str) -> str:
    path = str(metadata.distribution(dist).locate_file(member))
    if not os.path.isfile(path):
        raise IntformerError(f"the installed {dist} has no {member}; reinstall it")
    return path


def ffi_include_dir() -> str:
    """The TVM FFI C/C++ headers (architecture-independent) of the installed apache-tvm-ffi."""
    c_api = _installed_file("apache-tvm-ffi", "tvm_ffi/include/tvm/ffi/c_api.h")
    return os.path.dirname(os.path.dirname(os.path.dirname(c_api)))


@contextmanager
def _locked(directory: str):
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, ".lock"), "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def runtime_libraries(arch: Arch) -> dict[str, str]:
    """{file name: path} of libtvm_runtime.so and libtvm_ffi.so for `arch`, at this machine's TVM versions."""
    versions = wanted_versions()
    if arch.name == HOST_ARCH:
        return {os.path.basename(m): _installed_file(d, m) for d, m in RUNTIME_LIBS}
    key = "-".join([arch.wheel_platform] + [f"{d}-{v}" for d, v in versions.items()])
    root = os.path.join(cache_root(), "runtime")
    folder = os.path.join(root, key)
    want = {os.path.basename(m): os.path.join(folder, os.path.basename(m)) for _, m in RUNTIME_LIBS}
    with _locked(root):
        if all(os.path.isfile(p) for p in want.values()):
            return want
        tmp = tempfile.mkdtemp(prefix=".tmp-", dir=root)
        try:
            _fetch_runtime(arch, versions, tmp)
            shutil.rmtree(folder, ignore_errors=True)
            os.replace(tmp, folder)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return want


def _fetch_runtime(arch: Arch, versions: dict[str, str], out: str) -> None:
    """The two runtime libraries for `arch` into `out`: from the emulated board's wheels when it is set up,
    otherwise from the wheels downloaded with pip (only the libraries are kept)."""
    board = BoardPaths(default_cache_dir())
    if arch.name == "aarch64" and is_set_up(board):
        for _, member in RUNTIME_LIBS:
            src = os.path.join(board.site, member)
            if not os.path.isfile(src):
                break
            shutil.copy2(src, os.path.join(out, os.path.basename(member)))
        else:
            return
    status(f"downloading the {arch.name} TVM runtime ({', '.join(f'{d}=={v}' for d, v in versions.items())}; once)")
    wheels = os.path.join(out, "wheels")
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--disable-pip-version-check", "--no-deps",
           "--only-binary=:all:", "--platform", arch.wheel_platform, "--python-version", "3.11",
           "--implementation", "cp", "-d", wheels, *(f"{d}=={v}" for d, v in versions.items())]
    p = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if p.returncode != 0:
        last = (p.stderr.strip().splitlines() or ["no output"])[-1]
        raise IntformerError(f"downloading the {arch.name} TVM wheels failed ({last}); the bundle needs "
                             f"{', '.join(f'{d}=={v}' for d, v in versions.items())} for {arch.wheel_platform}")
    for dist, member in RUNTIME_LIBS:
        prefix = dist.replace("-", "_") + "-"
        found = [w for w in os.listdir(wheels) if w.startswith(prefix) and w.endswith(".whl")]
        if not found:
            raise IntformerError(f"pip downloaded no {dist} wheel for {arch.wheel_platform}")
        with zipfile.ZipFile(os.path.join(wheels, found[0])) as z:
            try:
                data = z.read(member)
            except KeyError:
                raise IntformerError(f"{found[0]} holds no {member}") from None
        dst = os.path.join(out, os.path.basename(member))
        with open(dst, "wb") as f:
            f.write(data)
        os.chmod(dst, 0o755)
    shutil.rmtree(wheels, ignore_errors=True)


def require_gxx(arch: Arch) -> str:
    """Path of the g++ that builds for `arch`; a one-line error with the apt-get command if it is missing."""
    path = shutil.which(arch.gxx)
    if path is None:
        raise IntformerError(f"packaging for {arch.name} needs the C++ compiler {arch.gxx}, which is not "
                             f"installed; install it with: {arch.install_command}")
    return path


def _compile(cmd: list[str], what: str, cwd: str) -> None:
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, stdin=subprocess.DEVNULL)
    if p.returncode != 0:
        lines = [ln for ln in p.stderr.strip().splitlines() if "error" in ln] or p.stderr.strip().splitlines()
        raise IntformerError(f"building {what} failed: {lines[0] if lines else f'exit {p.returncode}'}")


def build_runner(arch: Arch, runtime: dict[str, str]) -> dict[str, str]:
    """{file name: path} of libintformer.so and intformer-run for `arch`, built (or taken from the cache)."""
    gxx = require_gxx(arch)
    version = subprocess.run([gxx, "--version"], capture_output=True, text=True).stdout.splitlines()[:1]
    h = hashlib.sha256(json.dumps([arch.name, version, wanted_versions()]).encode())
    for name in C_API_SOURCES + RUNNER_PROGRAM_SOURCES + HEADERS:
        with open(os.path.join(RUNNER_SOURCES, name), "rb") as f:
            h.update(name.encode() + b"\0" + f.read())
    root = os.path.join(cache_root(), "runner")
    folder = os.path.join(root, f"{arch.name}-{h.hexdigest()[:16]}")
    want = {n: os.path.join(folder, n) for n in (C_API_LIB, RUNNER)}
    with _locked(root):
        if all(os.path.isfile(p) for p in want.values()):
            return want
        status(f"building {RUNNER} and {C_API_LIB} for {arch.name} with {arch.gxx}")
        tmp = tempfile.mkdtemp(prefix=".tmp-", dir=root)
        try:
            for name, path in runtime.items():  # link against the target's runtime libraries
                shutil.copy2(path, os.path.join(tmp, name))
            common = ["-std=c++17", "-O2", "-s", f"-I{RUNNER_SOURCES}"]
            _compile([gxx, *common, "-fPIC", "-shared", "-fvisibility=hidden", f"-I{ffi_include_dir()}",
                      *(os.path.join(RUNNER_SOURCES, s) for s in C_API_SOURCES), "-o", C_API_LIB, "-L.",
                      "-Wl,--no-as-needed", "-ltvm_runtime", "-ltvm_ffi", "-Wl,-rpath,$ORIGIN"],
                     f"{C_API_LIB} for {arch.name}", tmp)
            _compile([gxx, *common, *(os.path.join(RUNNER_SOURCES, s) for s in RUNNER_PROGRAM_SOURCES),
                      "-o", RUNNER, "-L.", "-lintformer", "-Wl,-rpath-link,.", "-Wl,-rpath,$ORIGIN"],
                     f"{RUNNER} for {arch.name}", tmp)
            for name in runtime:
                os.unlink(os.path.join(tmp, name))
            shutil.rmtree(folder, ignore_errors=True)
            os.replace(tmp, folder)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return want


def _readme(library: str, arch: Arch, target: str, versions: dict[str, str]) -> str:
    return f"""# {library}: intformer runner bundle ({arch.name}{f', target {target}' if target else ''})

Runs the compiled model with the TVM runtime alone: no Python. Copy the folder anywhere on a
{arch.name} Linux machine (glibc 2.34 and GCC 11's libstdc++ or newer: Debian or Raspberry Pi OS bookworm,
Ubuntu 22.04) and run it from there:

    ./intformer-run --inputs in.npz -o out.npz [--threads N]    # every sample of in.npz
    ./intformer-run --inputs in.npz --bench 50                  # median latency, peak memory
    ./intformer-run --info                                      # inputs, outputs, dtypes, shapes

`in.npz` holds one array per model input, named as in the model, with a leading sample axis
(`np.savez` or `np.savez_compressed`); `out.npz` one array per output, the same way. Errors are one line;
the exit status is 2 for a bad file or input, 1 for a runtime failure.

Files: `{library}` the model, `libtvm_runtime.so` and `libtvm_ffi.so` the TVM runtime
(apache-tvm {versions.get('apache-tvm', '?')}, apache-tvm-ffi {versions.get('apache-tvm-ffi', '?')}),
`libintformer.so` and `intformer.h` the C API, `intformer-run` the runner.

## C API

    #include "intformer.h"      /* cc app.c -I. -L. -lintformer -Wl,-rpath,'$ORIGIN' */
    intformer_model *m;
    if (intformer_open("{library}", NULL, &m)) fprintf(stderr, "%s\\n", intformer_last_error());
    intformer_set_input(m, "input_ids", ids, sizeof ids);   /* each input, one sample */
    intformer_run(m);
    intformer_get_output(m, 0, &data, &nbytes);
    intformer_close(m);

Inputs and outputs (names, dtypes, shapes) come from the manifest embedded in the library
(`intformer_input_info`, `intformer_output_info`, `intformer_manifest_json`). An encoder-decoder's
`encoder` and `decoder` are opened by name (`intformer_open(path, "decoder", &m)`, `--entry decoder`);
the decoding loop and the tokenizer are not in the C API yet.
"""


def _check_replaceable(out_dir: str, library: str) -> None:
    """`out_dir` may be written: missing, empty, or an earlier bundle holding only the files it wrote (a
    folder with anything else in it is never deleted)."""
    if not os.path.exists(out_dir):
        return
    if not os.path.isdir(out_dir):
        raise IntformerError(f"-o {out_dir}: exists and is not a folder")
    if os.path.samefile(out_dir, os.path.dirname(os.path.abspath(library))):
        raise IntformerError(f"-o {out_dir}: is the library's own folder; give a new folder")
    names = set(os.listdir(out_dir))
    if not names:
        return
    try:
        with open(os.path.join(out_dir, MARKER)) as f:
            written = set(json.load(f)) | {MARKER}
    except (OSError, ValueError, TypeError):
        written = set()
    others = sorted(names - written)
    if not written or others:
        shown = ", ".join(others[:5]) + (", ..." if len(others) > 5 else "")
        raise IntformerError(f"-o {out_dir}: exists and holds files that are not an earlier bundle's ({shown}); "
                             "give a new or empty folder")


def _contains(path: str, needle: bytes) -> bool:
    """Whether the file holds the bytes `needle` (read in 1 MB blocks)."""
    tail = b""
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            if needle in tail + block:
                return True
            tail = block[-len(needle):]
    return False


def package(library: str, out_dir: str, target: str = "", marker: str = "") -> Bundle:
    """Write the runner bundle of `library` to `out_dir` (created; an earlier bundle there is replaced).
    `marker`: a name every library of this kind holds (its manifest function); a file without it is refused."""
    arch = library_arch(library)
    if marker and not _contains(library, marker.encode()):
        raise IntformerError(f"{library}: not an intformer library (no embedded manifest `{marker}`)")
    _check_replaceable(out_dir, library)
    parent = os.path.dirname(os.path.abspath(out_dir))
    if not os.path.isdir(parent):
        raise IntformerError(f"-o {out_dir}: directory {parent} does not exist")
    require_gxx(arch)
    runtime = runtime_libraries(arch)
    built = build_runner(arch, runtime)
    name = os.path.basename(library)
    if name in (C_API_LIB, *runtime):
        name = "model.so"
    elif not name.endswith(".so"):  # intformer-run finds the model beside it by this suffix
        name += ".so"
    tmp = tempfile.mkdtemp(prefix=".intformer-bundle-", dir=parent)
    try:
        shutil.copy2(library, os.path.join(tmp, name))
        if os.path.isfile(library + ".manifest.json"):
            shutil.copy2(library + ".manifest.json", os.path.join(tmp, name + ".manifest.json"))
        for n, p in {**runtime, **built}.items():
            shutil.copy2(p, os.path.join(tmp, n))
        shutil.copy2(os.path.join(RUNNER_SOURCES, "intformer.h"), os.path.join(tmp, "intformer.h"))
        with open(os.path.join(tmp, "README.md"), "w") as f:
            f.write(_readme(name, arch, target, wanted_versions()))
        with open(os.path.join(tmp, MARKER), "w") as f:  # what a later `package -o` here may replace
            json.dump(sorted(os.listdir(tmp)), f)
        os.chmod(tmp, 0o755)
        if os.path.isdir(out_dir):
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    files = tuple((n, os.path.getsize(os.path.join(out_dir, n))) for n in sorted(os.listdir(out_dir)))
    return Bundle(os.path.abspath(out_dir), arch.name, name, files)
