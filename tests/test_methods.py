"""Methods: what trains, what stays frozen, which teacher feeds which loss, and their files."""
from pathlib import Path

import pytest
import torch

from furnace.config import prepare, synthetic_config
from furnace.datasets import to_device
from furnace.datasets.batch import IMAGE_L, LABELED_KEYS, synthetic_batch
from furnace.methods import build_method
from furnace.models import load_segmentor
from furnace.utils import UserError

SMALL = dict(width_mult=0.25, head_channels=32)


def small_cfg(tmp_path, **kw):
    C = synthetic_config()
    C.data_root = str(tmp_path / "DATA")
    C.output_dir = str(tmp_path / "out")
    C.num_classes = 4
    C.width_mult, C.head_channels = SMALL["width_mult"], SMALL["head_channels"]
    C.update(kw)
    return C


@pytest.fixture
def teachers(tmp_path, write_teachers):
    return write_teachers(tmp_path, 4, spread_bn=True)


def batch(b=2, size=32, num_classes=4, seed=0):
    return to_device(synthetic_batch(b, size, num_classes, seed=seed), "cpu")


@pytest.fixture
def mgd(tmp_path, teachers):
    cfg = prepare(small_cfg(tmp_path, method="mgd", **teachers))
    return build_method(cfg)


def test_mgd_losses_named_after_the_paper_and_each_lambda_weighs_its_own_term(mgd):
    b = batch()
    losses = mgd(b)
    assert set(losses) == {"loss", "sup", "pixel_labeled", "pixel_unlabeled", "semantic_sensitive", "content_aware"}
    assert all(v.item() > 0 for v in losses.values())
    mgd.cfg.lambda_image += 1.0  # the total moves by exactly the image-level term, and nothing else changes
    more_image = mgd(b)
    mgd.cfg.lambda_image -= 1.0
    mgd.cfg.lambda_region += 1.0
    more_region = mgd(b)
    assert (more_image["loss"] - losses["loss"]).item() == pytest.approx(losses["semantic_sensitive"].item(), rel=1e-4)
    assert (more_region["loss"] - losses["loss"]).item() == pytest.approx(losses["content_aware"].item(), rel=1e-3)
    assert more_region["semantic_sensitive"].item() == losses["semantic_sensitive"].item()


def test_mgd_gradients_reach_only_the_student_and_teachers_stay_unchanged(mgd):
    teachers = [mgd.teachers["teacher_deep"].network, mgd.teachers["teacher_wide"].network]
    before = [{k: v.clone() for k, v in t.state_dict().items()} for t in teachers]
    opt = torch.optim.SGD(mgd.parameters(), lr=0.1)
    mgd.train()
    losses = mgd(batch())
    losses["loss"].backward()
    opt.step()
    # parameters of the method are exactly the student's
    assert {id(p) for p in mgd.parameters()} == {id(p) for p in mgd.student.parameters()}
    assert all(p.grad is not None for p in mgd.student.parameters() if p.requires_grad)
    for t, snap in zip(teachers, before):
        assert not t.training  # eval-mode BN by default
        assert all(p.grad is None and not p.requires_grad for p in t.parameters())
        for k, v in t.state_dict().items():  # weights and BN buffers (running stats, counters)
            assert torch.equal(v, snap[k]), k
    assert not any(k.startswith("teacher") for k in mgd.state_dict())


def test_mgd_teacher_roles(mgd):
    """Image level uses only T_D, region level only T_W: perturbing the other teacher leaves them."""
    b = batch()
    base = {k: v.item() for k, v in mgd(b).items()}
    with torch.no_grad():
        for p in mgd.teachers["teacher_wide"].network.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    after_wide = {k: v.item() for k, v in mgd(b).items()}
    assert after_wide["semantic_sensitive"] == pytest.approx(base["semantic_sensitive"], rel=1e-6)
    assert after_wide["content_aware"] != pytest.approx(base["content_aware"], rel=1e-3)
    with torch.no_grad():
        for p in mgd.teachers["teacher_deep"].network.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    after_deep = {k: v.item() for k, v in mgd(b).items()}
    assert after_deep["content_aware"] == pytest.approx(after_wide["content_aware"], rel=1e-6)
    assert after_deep["semantic_sensitive"] != pytest.approx(after_wide["semantic_sensitive"], rel=1e-3)


def _assert_losses_equal_reference_path(tmp_path, teachers, **overrides):
    """Build MGD with ``overrides`` and on the reference path from the same seed, check that their losses
    on one batch agree, and return the first method and its losses."""
    torch.manual_seed(0)
    method = build_method(prepare(small_cfg(tmp_path, method="mgd", **overrides, **teachers)))
    torch.manual_seed(0)
    ref = build_method(prepare(small_cfg(tmp_path, method="mgd", teacher_impl="reference", **teachers)))
    b = batch()
    losses, lr = method(b), ref(b)
    for k in losses:
        assert losses[k].item() == pytest.approx(lr[k].item(), rel=1e-4, abs=1e-6), k
    return method, losses


def test_mgd_batched_teachers_equal_reference_path(tmp_path, teachers):
    _assert_losses_equal_reference_path(tmp_path, teachers)


@pytest.mark.slow
def test_compiled_teachers_compute_the_reference_losses(tmp_path, teachers, monkeypatch):
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))  # a real compile, no cache
    from torch._dynamo.utils import counters

    counters.clear()
    compiled, lc = _assert_losses_equal_reference_path(tmp_path, teachers, compile_teachers=True)
    assert counters["stats"]["unique_graphs"] >= 2  # both teachers' passes were compiled
    lc["loss"].backward()  # the student still learns through the compiled teachers' targets
    assert all(p.grad is not None for p in compiled.student.parameters() if p.requires_grad)
    with pytest.raises(UserError, match="compile_teachers=true .*teacher_impl=batched"):
        prepare(small_cfg(tmp_path, method="mgd", compile_teachers=True, teacher_impl="reference", **teachers))


def test_teacher_outputs_can_enter_a_compiled_loss_under_bf16(mgd, tmp_path, monkeypatch):
    """Found on a GPU (compile=true, bf16): a compiled graph may keep an input for its backward (here the bf16
    logits, recomputing their argmax), which a tensor made under inference_mode refuses. The teachers' outputs
    are ordinary tensors without gradient."""
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    from furnace.losses import hard_pseudo_label, pixel_consistency_loss

    with torch.autocast("cpu", torch.bfloat16):
        logits = mgd.teachers["teacher_deep"](batch()[IMAGE_L]).logits[0]
    assert logits.dtype == torch.bfloat16 and not logits.requires_grad
    student = torch.randn(logits.shape, requires_grad=True)
    loss = torch.compile(lambda s, t: pixel_consistency_loss(s, hard_pseudo_label(t)))(student, logits)
    loss.backward()
    assert student.grad.abs().sum() > 0


def test_teacher_bn_train_switch_reproduces_reference_behaviour(tmp_path, teachers):
    def batchnorms(teacher):
        return sum(isinstance(mod, torch.nn.BatchNorm2d) for mod in teacher.network.modules())

    m = build_method(prepare(small_cfg(tmp_path, method="mgd", teacher_bn="train", **teachers)))
    fast = build_method(prepare(small_cfg(tmp_path, method="mgd", **teachers)))
    for key, teacher in m.teachers.items():
        assert teacher.network.training and not teacher.fast  # batch statistics, one pass per input
        assert not fast.teachers[key].network.training and fast.teachers[key].fast
        assert batchnorms(fast.teachers[key]) < batchnorms(teacher) / 5  # folded into the convolutions


def test_the_old_teacher_key_name_still_works_with_a_notice(tmp_path, teachers, capsys):
    cfg = prepare(small_cfg(tmp_path, method="mgd", **teachers), ["mgd_impl=reference"])
    assert cfg.teacher_impl == "reference" and "mgd_impl" not in cfg
    assert "mgd_impl is now teacher_impl" in capsys.readouterr().err


def test_missing_or_wrong_teacher_file_fails_before_training(tmp_path, teachers):
    with pytest.raises(UserError, match="teacher_deep.*not found"):
        build_method(prepare(small_cfg(tmp_path, method="mgd", teacher_deep=str(tmp_path / "nope.pth"),
                                              teacher_wide=teachers["teacher_wide"])))
    # the wide file where the deep teacher is expected: the architecture is named
    with pytest.raises(UserError, match="wrn50_2"):
        build_method(prepare(small_cfg(tmp_path, method="mgd", teacher_deep=teachers["teacher_wide"],
                                              teacher_wide=teachers["teacher_wide"])))
    # another class count
    with pytest.raises(UserError, match="classes"):
        build_method(prepare(small_cfg(tmp_path, method="mgd", num_classes=7, **teachers)))


def test_cps_trains_both_networks_and_exports_branch1(tmp_path):
    cfg = prepare(small_cfg(tmp_path, method="cps", arch="resnet18"))
    cps = build_method(cfg)
    losses = cps(batch())
    assert set(losses) == {"loss", "sup", "cps"}
    assert torch.allclose(losses["loss"], losses["sup"] + cfg.lambda_cps * losses["cps"])
    losses["loss"].backward()
    for net in (cps.branch1, cps.branch2):
        assert all(p.grad is not None for p in net.parameters())
    # different head initialisations
    assert not torch.equal(cps.branch1.classifier.weight, cps.branch2.classifier.weight)
    cps.on_train_end()
    exported = load_segmentor(cfg.export_teacher)
    x = torch.randn(1, 3, 32, 32)
    cps.eval()
    assert torch.equal(exported(x), cps.branch1(x))
    # a second export (another run of the experiment, a smoke test) keeps the file there before, one generation
    first = Path(cfg.export_teacher).read_bytes()
    cps.on_train_end()
    assert Path(cfg.export_teacher).with_name(Path(cfg.export_teacher).stem + ".previous.pth").read_bytes() == first


def test_supervised_uses_labeled_data_only(tmp_path):
    sup = build_method(prepare(small_cfg(tmp_path, method="supervised")))
    assert sup.uses_unlabeled is False
    b = {k: v for k, v in batch().items() if k in LABELED_KEYS}
    losses = sup(b)
    assert set(losses) == {"loss", "sup"}


def test_missing_imagenet_file_is_named(tmp_path):
    cfg = prepare(small_cfg(tmp_path, method="supervised", pretrained="auto"))
    with pytest.raises(UserError, match="resnet18.pth"):
        build_method(cfg)
