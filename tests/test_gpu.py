"""CUDA paths (``pytest -m gpu``; skipped without a CUDA device): the methods under bf16 autocast and
fp16 + GradScaler, channels_last and torch.compile training runs, the batched teacher pass against the
reference on the GPU, GPU evaluation against CPU evaluation, checkpoints moving between GPU and CPU, and
SyncBatchNorm across two processes sharing the one GPU. ``python -m furnace.tools.gpu_check`` runs them."""
import json
import math

import pytest
import torch
import torch.multiprocessing as mp

from furnace.config import METHODS, prepare, synthetic_config
from furnace.datasets import TrainLoader, build_val_dataset, to_device
from furnace.datasets.make_synthetic import generate
from furnace.run import train_main
from furnace.engine.evaluator import Evaluator
from furnace.methods import build_method
from furnace.models import build_model
from furnace.tools.bench_mgd import mgd_step_bench
from furnace.tools.timing import no_tf32

pytestmark = pytest.mark.gpu

TINY = {"arch": "resnet18", "labeled_ratio": 8, "width_mult": 0.125, "head_channels": 16, "crop_size": 32,
        "eval_crop": 32, "eval_batch": 4, "global_batch": 4, "epochs": 1, "num_workers": 0, "device": "cuda",
        "log_every": 1, "snapshot_last": 1, "seed": 3}


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("gpu_data")
    generate(root / "synthetic", seed=0, num_train=24, num_val=8, size=32, ratios=(8,))
    return root


@pytest.fixture(scope="module")
def teachers(tmp_path_factory, write_teachers):
    return write_teachers(tmp_path_factory.mktemp("gpu_teachers"), 7)


def tiny_cfg(data_root, out, teachers=None, **overrides):
    C = synthetic_config()
    C.update(TINY)
    C.update(data_root=str(data_root), output_dir=str(out), **overrides)
    if METHODS[C.method].teachers:
        C.update({key: teachers[key] for key in METHODS[C.method].teachers})
    return C


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
@pytest.mark.parametrize("method_name", sorted(METHODS))
def test_methods_learn_under_autocast_on_the_gpu(data_root, teachers, tmp_path, method_name, amp):
    """A few iterations on one synthetic batch (uint8 from the loader, normalised on the GPU): every loss
    finite, the total falling; fp16 through a GradScaler as the trainer does."""
    cfg = prepare(tiny_cfg(data_root, tmp_path, teachers, method=method_name, amp=amp))
    device = torch.device("cuda")
    torch.manual_seed(0)
    method = build_method(cfg, device).to(device).train()
    loader = TrainLoader(cfg, need_unlabeled=method.uses_unlabeled)
    batch = to_device(next(iter(loader.epoch(0))), device)
    assert batch["image_l"].is_cuda and batch["image_l"].dtype == torch.float32
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[amp]
    scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)
    optimizer = torch.optim.SGD(method.parameters(), lr=0.01, momentum=0.9)
    totals = []
    for _ in range(8):
        with torch.autocast("cuda", dtype=dtype):
            losses = method(batch)
        assert all(math.isfinite(float(v.detach())) for v in losses.values()), losses
        scaler.scale(losses["loss"]).backward()
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        totals.append(float(losses["loss"].detach()))
    assert min(totals[-3:]) < totals[0], totals


@pytest.mark.parametrize("settings", [
    {"method": "supervised", "channels_last": True},
    {"method": "mgd", "channels_last": True, "compile": True, "compile_teachers": True},
])
def test_channels_last_and_compiled_training_runs(data_root, teachers, tmp_path, settings):
    result = train_main(tiny_cfg(data_root, tmp_path / "out", teachers, **settings), ["max_iters=3"])
    assert result["status"] == "finished" and result["global_iter"] == 3
    assert math.isfinite(result["miou"])
    assert (tmp_path / "out/checkpoints/latest.pth").is_file()


def test_batched_teacher_pass_equals_the_reference_on_the_gpu():
    """Same weights, same batch: the optimized step's losses against the reference path's, both in
    true fp32 (TF32 off) on the GPU."""
    m = mgd_step_bench(torch.device("cuda"), batch=2, crop=64, steps=1, warmup=0, width_mult=0.125, head_channels=16)
    assert m["max_loss_rel_diff_fp32"] <= 1e-4, m


def test_gpu_evaluation_equals_cpu_evaluation(data_root, tmp_path):
    cfg = prepare(tiny_cfg(data_root, tmp_path, method="supervised", amp="none"))
    torch.manual_seed(0)
    net = build_model("resnet18", 7, width_mult=0.125, head_channels=16, verbose=False).eval()
    dataset = build_val_dataset(cfg)
    with no_tf32():
        on_gpu = Evaluator(cfg, "cuda").run(net.to("cuda"), dataset)
    on_cpu = Evaluator(cfg, "cpu").run(net.to("cpu"), dataset)
    assert on_gpu["miou"] == pytest.approx(on_cpu["miou"], abs=1e-4)
    assert on_gpu["iou"] == pytest.approx(on_cpu["iou"], abs=1e-3)


def test_checkpoint_moves_between_gpu_and_cpu(data_root, teachers, tmp_path):
    """Trained 2 iterations on the GPU under fp16 (a GradScaler state in the file), resumed on the CPU to 3
    (amp=none: fp16 is refused there), and back on the GPU to 4."""
    out = tmp_path / "out"
    cfg = tiny_cfg(data_root, out, teachers, method="mgd", amp="fp16")
    assert train_main(cfg, ["max_iters=2"])["global_iter"] == 2
    on_cpu = train_main(cfg, ["--resume", "auto", "max_iters=3", "device=cpu", "amp=none"])
    assert on_cpu["global_iter"] == 3 and math.isfinite(on_cpu["miou"])
    back = train_main(cfg, ["--resume", "auto", "max_iters=4", "device=cuda"])
    assert back["global_iter"] == 4 and math.isfinite(back["miou"])


def _syncbn_worker(rank, world, init_file, result_file):
    import torch.distributed as tdist

    try:
        tdist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
        torch.manual_seed(0)
        x = torch.randn(4, 3, 8, 8, device="cuda") * 3 + 1  # the same full batch on every rank
        bn = torch.nn.SyncBatchNorm(3).cuda().train()
        mine = x[rank * 2:(rank + 1) * 2].clone().requires_grad_(True)
        y = bn(mine)
        y.square().sum().backward()
        ref_bn = torch.nn.BatchNorm2d(3).cuda().train()
        full = x.clone().requires_grad_(True)
        ref_bn(full).square().sum().backward()
        ref = torch.nn.functional.batch_norm(x, None, None, training=True)[rank * 2:(rank + 1) * 2]
        out = {"ok": True, "max_diff": float((y - ref).abs().max()),
               "running_mean_diff": float((bn.running_mean - ref_bn.running_mean).abs().max()),
               "grad_diff": float((mine.grad - full.grad[rank * 2:(rank + 1) * 2]).abs().max())}
    except Exception as err:  # reported to the test, which skips with the reason
        out = {"ok": False, "error": f"{type(err).__name__}: {err}".splitlines()[0]}
    with open(f"{result_file}.{rank}", "w") as f:
        json.dump(out, f)
    if tdist.is_initialized():
        tdist.destroy_process_group()


def test_syncbn_two_processes_on_one_gpu_through_gloo(tmp_path):
    """NCCL refuses two ranks on one device; gloo carries CUDA tensors. SyncBatchNorm across the two
    processes must equal one BatchNorm over the whole batch (outputs, running stats, gradients)."""
    init_file, result_file = tmp_path / "init", tmp_path / "result"
    mp.start_processes(_syncbn_worker, args=(2, str(init_file), str(result_file)), nprocs=2, join=True,
                       start_method="spawn")
    results = [json.loads((tmp_path / f"result.{r}").read_text()) for r in range(2)]
    failed = [r["error"] for r in results if not r["ok"]]
    if failed:
        pytest.skip(f"SyncBatchNorm over gloo with CUDA tensors does not run here: {failed[0]}")
    for r in results:
        assert r["max_diff"] < 1e-4 and r["running_mean_diff"] < 1e-5 and r["grad_diff"] < 1e-4, r
