"""A method defined outside furnace/ — plain logit distillation from one frozen teacher, the README's
"Adding a method" example — registers itself and trains through the real entry point; nothing under
furnace/ knows about it."""
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from furnace.config import METHODS, synthetic_config, teacher_file
from furnace.datasets.batch import IMAGE_L, IMAGE_U0, LABEL_L
from furnace.datasets.make_synthetic import generate
from furnace.methods import Method
from furnace.methods.base import trained_network
from furnace.run import train_main


class LogitKD(Method):
    """L = L_sup(S(x_l), y) + λ_kd · τ² · KL(softmax(T(u)/τ) ‖ softmax(S(u)/τ)) on an unlabeled image u."""

    name = "logit_kd"
    keys = {"kd_temperature": 2.0, "lambda_kd": 1.0}
    teachers = {"teacher_deep": "resnet101"}

    def __init__(self, cfg, device="cpu"):
        super().__init__(cfg, device)
        self.student = trained_network(cfg)

    def forward(self, batch):
        x_l, y, u = batch[IMAGE_L], batch[LABEL_L], batch[IMAGE_U0]
        tau = self.cfg.kd_temperature
        target = self.teachers["teacher_deep"](u).logits[0]  # no gradient (computed under no_grad)
        sup = self.supervised_loss(self.student(x_l), y)
        kd = tau ** 2 * F.kl_div(F.log_softmax(self.student(u).float() / tau, 1), F.softmax(target.float() / tau, 1),
                                 reduction="batchmean") / (u.shape[-2] * u.shape[-1])
        return {"loss": sup + self.cfg.lambda_kd * kd, "sup": sup, "kd": kd}

    def eval_network(self):
        return self.student


class OneTeacherRegions(LogitKD):  # no docstring: listed with an empty description
    name = "one_teacher_regions"
    keys = {"region_grid": 3}  # MGD's key, another default
    teachers = {"teacher_deep": "wrn50_2"}


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("plugin_data")
    generate(root / "synthetic", seed=0, num_train=24, num_val=4, size=32, ratios=(8,))
    return root


def config(data_root, out, **overrides):
    C = synthetic_config()
    C.update(data_root=str(data_root), output_dir=str(out), method="logit_kd", arch="resnet18", width_mult=0.125,
             head_channels=16, crop_size=32, eval_crop=32, global_batch=4, epochs=1, device="cpu", log_every=1)
    C.update(overrides)
    return C


def test_a_method_defined_in_a_test_file_trains_two_iterations(data_root, tmp_path, write_teachers):
    assert METHODS["logit_kd"] is LogitKD
    teacher = write_teachers(tmp_path, 7)["teacher_deep"]
    result = train_main(config(data_root, tmp_path / "out", teacher_deep=teacher), ["max_iters=2", "lambda_kd=0.5"])
    assert result["status"] == "finished" and result["global_iter"] == 2
    log = (tmp_path / "out" / "log.txt").read_text()
    assert "training LogitKD" in log and '"lambda_kd": 0.5' in log and " kd " in log
    assert (tmp_path / "out" / "checkpoints" / "epoch-1.pth").is_file()


def test_its_keys_and_teacher_are_validated_and_defaulted_from_its_declarations(data_root, tmp_path, capsys):
    from furnace.config import prepare

    C = prepare(config(data_root, tmp_path / "out"))
    assert (C.kd_temperature, C.teacher_deep_arch) == (2.0, "resnet101")
    assert C.teacher_deep == teacher_file(C, "resnet101")  # the deep teacher the dataset's CPS run exports
    with pytest.raises(SystemExit):
        train_main(config(data_root, tmp_path / "out"), ["kd_temprature=3"])
    assert "unknown key 'kd_temprature'; did you mean kd_temperature" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        train_main(config(data_root, tmp_path / "out"), ["max_iters=1"])
    assert f"teacher_deep='{C.teacher_deep}': teacher file not found" in capsys.readouterr().err
    # a key two methods declare has the default of the method the run uses, from config.py or the command line
    regions = prepare(config(data_root, tmp_path / "out", method="one_teacher_regions"))
    assert (regions.region_grid, regions.teacher_deep_arch) == (3, "wrn50_2")
    assert prepare(config(data_root, tmp_path / "out"), ["method=mgd"]).region_grid == 7
    assert prepare(config(data_root, tmp_path / "out"), ["method=one_teacher_regions"]).region_grid == 3
    unregistered = config(data_root, tmp_path / "out", method="not_imported")
    unregistered.its_key = 1.0  # the key of a method whose module config.py forgot to import
    with pytest.raises(SystemExit):
        train_main(unregistered, [])
    assert "unknown key 'its_key', and method='not_imported' is not registered" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        train_main(config(data_root, tmp_path / "out"), ["method=logit_kdd"])
    assert "logit_kd" in capsys.readouterr().err  # the registered methods are listed
    assert not (tmp_path / "out" / "checkpoints").exists()


def test_teacher_outputs_say_what_they_are(tmp_path, write_teachers):
    from furnace.models import load_segmentor
    from furnace.methods.teachers import FrozenTeacher

    net = load_segmentor(write_teachers(tmp_path, 7)["teacher_deep"])
    x, y = torch.randn(2, 3, 32, 32), torch.randn(1, 3, 32, 32)
    for fast in (True, False):
        out = FrozenTeacher(load_segmentor(write_teachers(tmp_path, 7)["teacher_deep"]), fast=fast)(x, y)
        assert [t.shape for t in out.logits] == [(2, 7, 32, 32), (1, 7, 32, 32)]
        assert [t.shape[0] for t in out.features] == [2, 1] and out.features[0].shape[-1] == 8
        with torch.no_grad():
            torch.testing.assert_close(out.logits[1], net(y), rtol=1e-4, atol=1e-4)


def test_the_method_list_comes_from_the_declarations():
    out = subprocess.run([sys.executable, "-m", "furnace.methods", "test_method_plugin"], capture_output=True,
                         text=True, check=True, cwd=Path(__file__).parent).stdout
    for name in ("supervised", "cps", "mgd", "logit_kd"):
        assert f"\n{name}: " in f"\n{out}", out
    assert "    kd_temperature = 2.0" in out and "    teacher_deep_arch = 'resnet101'" in out
    assert "\none_teacher_regions: \n    teacher_deep = ''\n    teacher_deep_arch = 'wrn50_2'\n" in out, out
    assert "    region_grid = 3\n" in out and "    region_grid = 7\n" in out
    assert "    student_bn_updates = 'trained'  (trained | original)" in out
