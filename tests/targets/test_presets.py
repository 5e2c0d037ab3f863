"""Targets as data: every preset is a valid TVM target whose features match its declared ISA; user targets
come from JSON files; a missing cross compiler is one line with the install command."""

import json
import subprocess
import sys

import pytest

from compiler.errors import IntformerError
from targets import TARGETS, resolve_target
from targets.presets import TargetSpec, add_user_target, all_targets, targets_table
from targets.toolchain import TOOLCHAINS, require_toolchain, toolchain_for

ARM = ["rpi4", "rpi5", "jetson-orin", "graviton3", "rk3588", "armv7"]
# declared ISA feature -> the TVM target attribute the schedules read
FEATURE_ATTR = {"dotprod": "feature.has_dotprod", "i8mm": "feature.has_matmul_i8", "neon": "feature.has_asimd"}


@pytest.fixture(autouse=True)
def _user_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))


def test_presets_exist():
    assert {"host", "x86-avx512-vnni", "x86-avx-vnni", "x86-avx2", *ARM} <= set(TARGETS)


@pytest.mark.parametrize("name", ARM)
def test_arm_target_features_match_isa(name):
    spec = resolve_target(name)
    attrs = spec.tvm_target().attrs
    for feature, attr in FEATURE_ATTR.items():
        assert bool(attrs[attr]) == (feature in spec.isa), (name, feature)
    assert bool(attrs["feature.is_aarch64"]) == (name != "armv7")
    assert spec.cross_compiler in TOOLCHAINS


def test_rpi4_has_no_dot_product_rpi5_has():
    assert "dotprod" not in resolve_target("rpi4").isa
    assert "dotprod" in resolve_target("rpi5").isa
    assert resolve_target("rpi4").qemu_cpu == "cortex-a72"
    assert resolve_target("rpi5").qemu_cpu == "cortex-a76"


@pytest.mark.parametrize("name", [n for n in TARGETS if n != "host"])
def test_json_round_trip(name):
    spec = resolve_target(name)
    assert TargetSpec.from_json(json.loads(json.dumps(spec.to_json()))) == spec


def test_target_from_json_file_and_add(tmp_path):
    d = resolve_target("rpi5").to_json()
    d["name"] = "my-board"
    f = tmp_path / "my_board.json"
    f.write_text(json.dumps(d))
    assert resolve_target(str(f)).llvm == d["llvm"]
    with pytest.raises(IntformerError, match="unknown target 'my-board'"):
        resolve_target("my-board")
    add_user_target(str(f))
    assert resolve_target("my-board").name == "my-board"
    assert "my-board" in all_targets()
    assert any(r["name"] == "my-board" for r in targets_table())


@pytest.mark.parametrize("content, needle", [
    ("{not json", "not valid JSON"),
    ('{"name": "x"}', 'missing "llvm"'),
    ('{"name": "x", "llvm": {"kind": "llvm"}, "colour": 1}', "unknown field"),
    ('{"name": "x", "llvm": "llvm -mcpu=cortex-a76"}', '"kind": "llvm"'),
    ('{"name": "x", "llvm": {"kind": "llvm", "mcpu": 5}}', "TVM rejects"),
])
def test_bad_target_files(tmp_path, content, needle):
    f = tmp_path / "bad.json"
    f.write_text(content)
    with pytest.raises(IntformerError, match=needle):
        resolve_target(str(f))


def test_preset_name_cannot_be_shadowed(tmp_path):
    f = tmp_path / "rpi5.json"
    f.write_text(json.dumps(resolve_target("rpi5").to_json()))
    with pytest.raises(IntformerError, match="built-in"):
        add_user_target(str(f))


def test_missing_toolchain_is_one_line_with_apt_command(monkeypatch):
    import shutil

    monkeypatch.setattr(shutil, "which", lambda name, *a, **k: None)
    with pytest.raises(IntformerError) as e:
        require_toolchain(resolve_target("rpi5"))
    msg = str(e.value)
    assert "\n" not in msg and "aarch64-linux-gnu-gcc" in msg
    assert "apt-get install -y --no-install-recommends gcc-aarch64-linux-gnu" in msg
    require_toolchain(resolve_target("x86-avx2"))  # native: nothing to check
    assert toolchain_for(resolve_target("host")) is None


def test_targets_cli_lists_arm_and_toolchains(tmp_path):
    env_cfg = {"XDG_CONFIG_HOME": str(tmp_path / "cfg")}
    import os

    p = subprocess.run([sys.executable, "-m", "compiler.cli", "targets", "--json"], capture_output=True, text=True,
                       env=dict(os.environ, **env_cfg))
    assert p.returncode == 0, p.stderr
    rows = {r["name"]: r for r in json.loads(p.stdout)}
    assert rows["rpi5"]["isa"] == ["neon", "dotprod"]
    assert rows["armv7"]["toolchain"]["compiler"] == "arm-linux-gnueabihf-gcc"
    p = subprocess.run([sys.executable, "-m", "compiler.cli", "targets"], capture_output=True, text=True,
                       env=dict(os.environ, COLUMNS="160", **env_cfg))
    assert p.returncode == 0 and "graviton3" in p.stdout and "neoverse-v1" in p.stdout
