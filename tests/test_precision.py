"""Precision: amp=auto picks bf16 on CPUs with native bf16 and fp32 elsewhere; what bf16 does to the MGD
losses; bit-identical resume under bf16."""
from pathlib import Path

import pytest
import torch

import furnace.methods  # noqa: F401 (registers the methods a config may name)
from furnace.config import prepare, synthetic_config
from furnace.datasets import to_device
from furnace.datasets.batch import synthetic_batch
from furnace.datasets.make_synthetic import generate
from furnace.engine import dist
from furnace.methods import build_method
from furnace.models import load_segmentor
from furnace.run import train_main
from furnace.utils import UserError

CPU = torch.device("cpu")


def test_amp_auto_follows_the_cpus_native_bf16(monkeypatch):
    monkeypatch.setattr(dist, "cpu_has_native_bf16", lambda: True)
    assert dist.amp_choice("auto", CPU) == (torch.bfloat16, "amp=auto, this CPU has native bf16 (AVX-512 BF16 / AMX)")
    monkeypatch.setattr(dist, "cpu_has_native_bf16", lambda: False)
    assert dist.amp_choice("auto", CPU) == (None, "amp=auto, this CPU has no native bf16 (AVX-512 BF16 / AMX)")
    assert dist.amp_choice("bf16", CPU) == (torch.bfloat16, "amp=bf16, emulated on this CPU: slow")
    assert dist.amp_choice("none", CPU) == (None, "amp=none")
    with pytest.raises(UserError, match="amp=fp16 is for GPUs"):
        dist.amp_choice("fp16", CPU)


def test_a_precision_the_device_refuses_stops_the_run_before_anything_is_built_or_written(tmp_path, capsys):
    C = synthetic_config()
    C.update(data_root=str(tmp_path / "absent"), output_dir=str(tmp_path / "out"), device="cpu", amp="fp16")
    with pytest.raises(SystemExit) as stop:
        train_main(C, [])
    assert stop.value.code == 2  # before the data check (its data_root does not exist) and before any file
    assert capsys.readouterr().err.strip() == \
        "error: config: amp=fp16 is for GPUs without bf16; on a CPU use amp=bf16, auto or none"
    assert not (tmp_path / "out").exists()
    with pytest.raises(SystemExit):
        train_main(C, ["amp=none", "eval_amp=fp16"])
    assert capsys.readouterr().err.strip() == "error: config: eval_amp=fp16 is for GPUs without bf16; on a CPU use " \
        "eval_amp=bf16 or none"


def test_native_bf16_detection_agrees_with_torchs_own_query():
    flags = set(Path("/proc/cpuinfo").read_text().split()) if Path("/proc/cpuinfo").is_file() else None
    if flags is None:
        pytest.skip("no /proc/cpuinfo on this system")
    native = dist.cpu_has_native_bf16()
    assert native == bool(flags & {"avx512_bf16", "amx_bf16"})
    if hasattr(torch.cpu, "_is_avx512_bf16_supported"):
        assert native == (torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


def test_bf16_autocast_keeps_every_mgd_loss_within_two_percent_of_fp32(tmp_path, write_teachers):
    """A fixed batch, the same weights: each loss term under bf16 autocast (student and teacher passes) is
    within 2 % of fp32 (measured: at most 0.9 %, the image-level term)."""
    C = synthetic_config()
    C.update(data_root=str(tmp_path), output_dir=str(tmp_path / "out"), num_classes=7, width_mult=0.25,
             head_channels=32, **write_teachers(tmp_path, 7))
    torch.manual_seed(0)
    method = build_method(prepare(C)).train()
    batch = to_device(synthetic_batch(2, 64, 7, seed=0), "cpu")
    with torch.no_grad():
        fp32 = {k: v.item() for k, v in method(batch).items()}
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf16 = method(batch)
    assert all(v.dtype == torch.float32 for v in bf16.values())  # the losses are computed in fp32
    for key, value in fp32.items():
        assert bf16[key].item() == pytest.approx(value, rel=0.02), key
    assert any(bf16[k].item() != fp32[k] for k in fp32)  # autocast did change the arithmetic


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("bf16_data")
    generate(root / "synthetic", seed=0, num_train=24, num_val=4, size=32, ratios=(8,))
    return root


def test_resume_under_bf16_is_bit_identical_and_the_log_says_why(data_root, tmp_path, write_teachers):
    C = synthetic_config()
    C.update(data_root=str(data_root), method="mgd", amp="bf16", width_mult=0.125, head_channels=16, crop_size=32,
             eval_crop=32, global_batch=4, epochs=2, device="cpu", seed=5, **write_teachers(tmp_path, 7))
    whole = train_main(C, [f"output_dir={tmp_path / 'whole'}"])
    train_main(C, [f"output_dir={tmp_path / 'parts'}", "max_iters=3"])
    parts = train_main(C, [f"output_dir={tmp_path / 'parts'}", "--resume", "auto"])
    assert whole["global_iter"] == parts["global_iter"] == 10
    a, b = (load_segmentor(tmp_path / d / "checkpoints" / "epoch-2.pth").state_dict() for d in ("whole", "parts"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert "bf16 autocast (amp=bf16" in (tmp_path / "whole" / "log.txt").read_text()
