"""Cross-compilation: the tiny BERT builds for ARM boards with Debian's cross toolchains; the rpi5 library
uses the dot-product instruction (the project's SDOT kernel, schedules/intrinsics/arm_dot.py), rpi4's does not
(NEON smull + sadalp), armv7 links as a 32-bit hard-float library."""

import struct
import subprocess

from tests.targets.conftest import require_tool

EM_ARM, EM_AARCH64 = 40, 183
EF_ARM_ABI_FLOAT_HARD = 0x400


def elf_header(path: str) -> dict:
    with open(path, "rb") as f:
        head = f.read(64)
    assert head[:4] == b"\x7fELF", f"{path} is not an ELF file"
    bits = {1: 32, 2: 64}[head[4]]
    machine = struct.unpack_from("<H", head, 18)[0]
    flags = struct.unpack_from("<I", head, 36 if bits == 32 else 48)[0]
    return {"bits": bits, "machine": machine, "flags": flags}


def count_in_disassembly(objdump: str, lib: str, mnemonic: str) -> int:
    text = subprocess.run([objdump, "-d", lib], capture_output=True, text=True, check=True).stdout
    return sum(1 for line in text.splitlines() if f"\t{mnemonic}\t" in line or line.rstrip().endswith(f"\t{mnemonic}"))


def lib_for(cross_libs, target):
    if target not in cross_libs:
        require_tool({"armv7": "arm-linux-gnueabihf-gcc"}.get(target, "aarch64-linux-gnu-gcc"),
                     {"armv7": "gcc-arm-linux-gnueabihf"}.get(target, "gcc-aarch64-linux-gnu"))
    return cross_libs[target]


def test_rpi5_is_aarch64_with_sdot(cross_libs):
    lib = lib_for(cross_libs, "rpi5")
    require_tool("aarch64-linux-gnu-objdump", "binutils-aarch64-linux-gnu")
    h = elf_header(lib)
    assert (h["bits"], h["machine"]) == (64, EM_AARCH64)
    assert count_in_disassembly("aarch64-linux-gnu-objdump", lib, "sdot") > 0


def test_rpi4_is_aarch64_without_sdot(cross_libs):
    lib = lib_for(cross_libs, "rpi4")
    require_tool("aarch64-linux-gnu-objdump", "binutils-aarch64-linux-gnu")
    h = elf_header(lib)
    assert (h["bits"], h["machine"]) == (64, EM_AARCH64)
    assert count_in_disassembly("aarch64-linux-gnu-objdump", lib, "sdot") == 0
    assert count_in_disassembly("aarch64-linux-gnu-objdump", lib, "udot") == 0


def test_armv7_links_hard_float(cross_libs):
    lib = lib_for(cross_libs, "armv7")
    h = elf_header(lib)
    assert (h["bits"], h["machine"]) == (32, EM_ARM)
    assert h["flags"] & EF_ARM_ABI_FLOAT_HARD


def test_manifest_records_target(cross_libs):
    import json

    lib = lib_for(cross_libs, "rpi5")
    with open(lib + ".manifest.json") as f:
        m = json.load(f)
    assert m["target"]["name"] == "rpi5" and m["target"]["llvm"]["mattr"] == ["+neon", "+dotprod"]


def test_cli_missing_toolchain_error(tiny_bert, tmp_path):
    """With PATH stripped of the cross compiler, compiling for rpi5 fails at once with the apt-get command."""
    import os
    import sys

    env = dict(os.environ, PATH=os.path.dirname(sys.executable), INTFORMER_QUIET="1")
    p = subprocess.run([sys.executable, "-m", "compiler.cli", "compile", tiny_bert[0], "-o", str(tmp_path / "o.so"),
                        "--target", "rpi5", "--input-shape", "input_ids=1x16"], capture_output=True, text=True,
                       env=env)
    assert p.returncode == 2 and "Traceback" not in p.stderr
    line = [ln for ln in p.stderr.splitlines() if ln.startswith("intformer: error:")]
    assert len(line) == 1 and "apt-get install -y --no-install-recommends gcc-aarch64-linux-gnu" in line[0]
