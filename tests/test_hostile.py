"""Hostile models: the tool exits with the documented code, calmly, and touches nothing."""

from __future__ import annotations

import hashlib
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import hostile
import pytest

EXE = str(Path(sys.executable).parent / "prunequant")


def _snapshot(folder: Path) -> dict[str, str]:
    """Contents of every regular file under ``folder`` (links and FIFOs by name only)."""
    found = {}
    for p in sorted(folder.rglob("*")):
        if p.is_symlink() or not p.is_file():
            found[str(p.relative_to(folder))] = "special"
        else:
            found[str(p.relative_to(folder))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return found


def _setup(tmp_path: Path, name: str):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.bin").write_bytes(hostile.SECRET)
    folder = tmp_path / "case"
    folder.mkdir()
    model = hostile.CASES[name][0](folder, outside)
    return folder, outside, model


def _cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [EXE, *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def _assert_calm(result: subprocess.CompletedProcess, code: int) -> None:
    assert result.returncode == code, (
        result.returncode,
        result.stdout[-500:],
        result.stderr[-800:],
    )
    assert "Traceback" not in result.stderr
    if code:
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("prunequant: error: "), result.stderr
        assert result.stdout == ""
    for stream in (result.stdout, result.stderr):
        assert "\x1b" not in stream  # no escape sequences from the model reach the log
        assert not re.search(r"^::", stream, re.M)  # no CI workflow commands
        assert "TOP-SECRET" not in stream


@pytest.mark.parametrize("name", sorted(hostile.CASES))
def test_inspect_and_compress_stay_calm(tmp_path, name):
    folder, outside, model = _setup(tmp_path, name)
    _, inspect_code, compress_code = hostile.CASES[name]
    before, secret = _snapshot(folder), _snapshot(outside)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    _assert_calm(_cli("inspect", str(model), "--timeout", "20"), inspect_code)
    result = _cli("compress", str(model), str(out_dir / "o.onnx"), "--no-eval", "--timeout", "20")
    _assert_calm(result, compress_code)
    assert _snapshot(folder) == before, "the input changed"
    assert _snapshot(outside) == secret
    written = [p for p in out_dir.iterdir()]
    if compress_code:
        assert written == [], "a failed run left files behind"
    for p in written:
        assert hostile.SECRET[:32] not in p.read_bytes(), "outside data was copied into the output"


@pytest.mark.parametrize("name", sorted(hostile.RUNTIME_CASES))
def test_running_hostile_models_in_onnxruntime(tmp_path, name):
    folder, _, model = _setup(tmp_path, name)
    code, extra = hostile.RUNTIME_CASES[name]
    before = _snapshot(folder)
    out = tmp_path / "o.onnx"
    result = _cli("compress", str(model), str(out), "--timeout", "30", *extra, timeout=90)
    _assert_calm(result, code)
    assert _snapshot(folder) == before
    assert out.exists() == (code == 0)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".o.onnx")]  # no temporaries


def _valid_model(tmp_path: Path) -> Path:
    folder = tmp_path / "m"
    folder.mkdir()
    return hostile._valid(folder)


def test_output_that_is_the_input_is_refused_every_way(tmp_path):
    model = _valid_model(tmp_path)
    (tmp_path / "hard.onnx").hardlink_to(model)
    (tmp_path / "soft.onnx").symlink_to(model)
    digest = model.read_bytes()
    for target in (model, tmp_path / "hard.onnx", tmp_path / "soft.onnx"):
        _assert_calm(_cli("compress", str(model), str(target), "--no-eval"), 6)
    assert model.read_bytes() == digest


def test_output_data_file_may_not_be_the_inputs(tmp_path):
    folder = tmp_path / "m"
    folder.mkdir()
    model = hostile.dotdot_in_a_name(folder, tmp_path)
    data = folder / "weights..bin"
    # an output whose data file would be the input's data file (through a link)
    (folder / "out.onnx.data").symlink_to(data)
    digest = data.read_bytes()
    _assert_calm(_cli("compress", str(model), str(folder / "out.onnx"), "--no-eval"), 6)
    assert data.read_bytes() == digest


def test_a_symlink_planted_at_the_output_is_neither_followed_nor_replaced(tmp_path):
    model = _valid_model(tmp_path)
    victim = tmp_path / "victim.txt"
    victim.write_text("keep")
    (tmp_path / "o.onnx").symlink_to(victim)
    _assert_calm(_cli("compress", str(model), str(tmp_path / "o.onnx"), "--no-eval"), 6)
    assert victim.read_text() == "keep"
    assert (tmp_path / "o.onnx").is_symlink()  # it may be a system's own (/dev/stdout)


@pytest.mark.parametrize("kind", ["fifo", "device"])
def test_an_output_that_is_no_regular_file_is_not_replaced(tmp_path, kind):
    model = _valid_model(tmp_path)
    target = tmp_path / "target"
    if kind == "fifo":
        os.mkfifo(target)
    else:
        os.mknod(target, 0o666 | stat.S_IFCHR, os.makedev(1, 3))  # a /dev/null of its own
    for args in (
        ["compress", str(model), str(target), "--no-eval"],
        ["compress", str(model), str(tmp_path / "o.onnx"), "--no-eval", "--report", str(target)],
    ):
        _assert_calm(_cli(*args), 6)
        assert not stat.S_ISREG(target.lstat().st_mode)


@pytest.mark.parametrize("folder", ["/proc", "/sys/kernel"])
def test_an_unwritable_destination_is_a_write_failure(tmp_path, folder):
    # Folders no process may write in (a permission bit would not stop root, which CI is).
    model = _valid_model(tmp_path)
    _assert_calm(_cli("compress", str(model), f"{folder}/o.onnx", "--no-eval"), 6)
