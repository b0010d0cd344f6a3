"""Every experiment folder's config.py resolves to the recipe SPEC.md states (§3, §5-§7 and the model table)."""
import runpy
from pathlib import Path

import pytest

import furnace.methods  # noqa: F401 (registers the methods a config may name)
from furnace.config import METHODS, prepare

REPO = Path(__file__).resolve().parents[1]
# (folder, method, arch, lr, weight decay, global batch, λ1, λ2) — SPEC §6-§7
PAPER = [
    ("exp.voc/voc8.resnet101_deeplabv3plus", "cps", "resnet101", 0.0025, 4e-4, 8, None, None),
    ("exp.voc/voc8.wrn50_2_deeplabv3plus", "cps", "wrn50_2", 0.001, 4e-4, 8, None, None),
    ("exp.voc/voc8.resnet18_deeplabv3plus", "mgd", "resnet18", 0.0025, 4e-4, 8, 0.004, 100.0),
    ("exp.voc/voc8.mobilev2_deeplabv3plus", "mgd", "mobilenetv2", 0.0035, 4e-4, 8, 0.001, 50.0),
    ("exp.city/city8.resnet101_deeplabv3plus", "cps", "resnet101", 0.0025, 8e-4, 8, None, None),
    ("exp.city/city8.wrn50_2_deeplabv3plus", "cps", "wrn50_2", 0.0025, 8e-4, 8, None, None),
    ("exp.city/city8.resnet18_deeplabv3plus", "mgd", "resnet18", 0.0025, 8e-4, 16, 0.002, 100.0),
    ("exp.city/city8.mobilev2_deeplabv3plus", "mgd", "mobilenetv2", 0.0025, 8e-4, 16, 0.002, 100.0),
]
EPOCHS = {"voc": {"16": 32, "8": 34, "4": 40, "2": 60}, "city": {"16": 128, "8": 137, "4": 160, "2": 240}}


def load(folder: str):
    return runpy.run_path(str(REPO / folder / "config.py"))["config"]


@pytest.mark.parametrize("folder,method,arch,lr,wd,batch,lambda_image,lambda_region", PAPER,
                         ids=[p[0].split("/")[1] for p in PAPER])
def test_paper_experiment_configs_state_the_papers_recipe(folder, method, arch, lr, wd, batch, lambda_image,
                                                          lambda_region):
    C = prepare(load(folder))
    voc = C.dataset == "voc"
    assert (C.method, C.arch, C.labeled_ratio) == (method, arch, 8)
    assert (C.lr, C.weight_decay, C.global_batch, C.momentum, C.lr_power) == (lr, wd, batch, 0.9, 0.9)
    assert C.epochs_per_ratio == EPOCHS[C.dataset] and C.epochs == EPOCHS[C.dataset]["8"]
    assert (C.crop_size, C.eval_crop, C.num_classes) == ((512, 512, 21) if voc else (800, 800, 19))
    assert C.sup_loss == ("ce" if voc else "ohem")
    assert C.output_stride == (32 if arch == "mobilenetv2" else 16)
    if method == "cps":
        assert C.lambda_cps == (1.0 if voc else 5.0)
        assert C.export_teacher.endswith(f"teachers/{C.dataset}_1-8_{arch}.pth")
    else:
        assert (C.lambda_image, C.lambda_region, C.teacher_bn) == (lambda_image, lambda_region, "eval")
        assert C.teacher_deep.endswith(f"teachers/{C.dataset}_1-8_resnet101.pth")
        assert C.teacher_wide.endswith(f"teachers/{C.dataset}_1-8_wrn50_2.pth")


def test_every_experiment_folder_prepares_and_names_its_recipe_values():
    folders = sorted(p.parent for p in REPO.glob("exp.*/*/config.py"))
    assert {REPO / p[0] for p in PAPER} <= set(folders)
    for folder in folders:
        assert all((folder / f).is_file() for f in ("train.py", "eval.py", "script.sh")), folder.name
        text = (folder / "config.py").read_text()
        C = load(str(folder.relative_to(REPO)))
        C = prepare(C, ["num_classes=5"] if C.dataset == "folder" else [])  # a folder dataset's count is its own
        assert C.exp_name == folder.name and (C.epochs > 0 or C.train_iters > 0) and C.method in METHODS
        for key in ("labeled_ratio", "method", "arch", "lr", "epochs_per_ratio"):  # the recipe at a glance
            assert f"\nC.{key} = " in text, (folder.name, key)


def test_relative_file_paths_start_at_the_experiment_folder():
    """As data_root: a teacher, ImageNet or export file given relative is found from the experiment folder, so
    `python exp.voc/<folder>/train.py` from the repository root reads the files `python train.py` there reads."""
    folder = REPO / "exp.voc" / "voc8.resnet18_deeplabv3plus"
    C = prepare(load("exp.voc/voc8.resnet18_deeplabv3plus"), ["teacher_deep=mine/t.pth", "pretrained=../w/r18.pth"])
    assert (C.teacher_deep, C.pretrained) == (str(folder / "mine" / "t.pth"), str(folder.parent / "w" / "r18.pth"))
    teacher = prepare(load("exp.voc/voc8.resnet101_deeplabv3plus"), ["export_teacher=out/t.pth"])
    assert teacher.export_teacher == str(REPO / "exp.voc" / "voc8.resnet101_deeplabv3plus" / "out" / "t.pth")
    assert prepare(load("exp.voc/voc8.resnet18_deeplabv3plus"), ["pretrained=auto"]).pretrained.endswith(
        "DATA/model-weight/resnet18.pth")


def test_the_installed_version_is_furnaces():
    import importlib.metadata

    import furnace

    assert importlib.metadata.version("mgd-ssss") == furnace.__version__
