"""train.py / eval.py command lines: overrides, resume, snapshot selection, results, user errors."""
import json

import pytest

from engine_toy import build_toy, toy_config

from furnace.run import eval_main, train_main
from furnace.engine.cli import select_snapshots

pytestmark = pytest.mark.usefixtures("toy_snapshot_io")  # conftest.py


def toy_kwargs(cfg):
    method, loader, val = build_toy(cfg)
    return {"method": method, "loader": loader, "val_dataset": val}


def test_train_main_applies_overrides_and_resumes(tmp_path):
    cfg = toy_config(tmp_path, epochs=3)
    res = train_main(cfg, ["max_iters=5", "snapshot_last=3"], **toy_kwargs(cfg))
    assert res["global_iter"] == 5 and res["total_iters"] == 12
    assert sorted(p.name for p in (tmp_path / "checkpoints").glob("epoch-*.pth")) == ["epoch-1.pth", "epoch-2.pth"]
    # the run's final evaluation is recorded beside the snapshot it evaluated
    recorded = json.loads((tmp_path / "checkpoints" / "eval_results.json").read_text())
    assert recorded["last"] == "epoch-2.pth" and recorded["results"]["epoch-2.pth"]["miou"] == res["miou"]
    res = train_main(cfg, ["--resume", "auto", "max_iters=6"], **toy_kwargs(cfg))
    assert res["global_iter"] == 6
    assert cfg.max_iters == 0  # the caller's config is not modified


def test_unknown_key_is_rejected_with_the_closest_match(tmp_path, capsys):
    cfg = toy_config(tmp_path)
    with pytest.raises(SystemExit) as exc:
        train_main(cfg, ["lrr=0.1"], **toy_kwargs(cfg))
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "'lrr'" in err and "lr" in err and "Traceback" not in err


def test_missing_resume_file_exits_2_naming_it(tmp_path, capsys):
    cfg = toy_config(tmp_path)
    with pytest.raises(SystemExit) as exc:
        train_main(cfg, ["--resume", str(tmp_path / "gone.pth")], **toy_kwargs(cfg))
    assert exc.value.code == 2 and "gone.pth" in capsys.readouterr().err


def test_eval_main_evaluates_a_range_reports_last_and_best_and_writes_json(tmp_path, capsys):
    cfg = toy_config(tmp_path, epochs=3, snapshot_last=3)
    train_main(cfg, [], **toy_kwargs(cfg))
    capsys.readouterr()
    val = build_toy(cfg)[2]
    out = eval_main(cfg, ["-e", "2-9", "--save-pred", str(tmp_path / "pred"), "eval_flip=true"], val_dataset=val)
    text = capsys.readouterr().out
    assert list(out["results"]) == ["epoch-2.pth", "epoch-3.pth"] and out["last"] == "epoch-3.pth"
    assert "epoch-2.pth: mIoU" in text and "best" in text and "last epoch-3.pth" in text
    assert "no snapshot for epoch(s) 4-9; skipped" in text
    data = json.loads((tmp_path / "checkpoints" / "eval_results.json").read_text())
    assert set(data["results"]) == {"epoch-2.pth", "epoch-3.pth"} and data["results"]["epoch-3.pth"]["eval"]["flip"]
    assert data["results"]["epoch-3.pth"]["eval"]["amp"] == "none"  # eval precision recorded (fp32 default)
    assert data["results"]["epoch-3.pth"]["miou"] == out["results"]["epoch-3.pth"]["miou"] > 0
    assert data["best"] in data["results"]
    assert len(list((tmp_path / "pred" / "epoch-3" / "color").glob("*.png"))) == len(val)
    # a later evaluation of one epoch is merged into the same file, whose best stays the best of all it holds
    eval_main(cfg, ["-e", "1"], val_dataset=val)
    data = json.loads((tmp_path / "checkpoints" / "eval_results.json").read_text())
    assert set(data["results"]) == {"epoch-1.pth", "epoch-2.pth", "epoch-3.pth"}
    assert data["best"] == max(data["results"], key=lambda n: data["results"][n]["miou"])


def test_snapshot_selection(tmp_path):
    for e in (1, 2, 3, 7):
        (tmp_path / f"epoch-{e}.pth").write_bytes(b"")
    names = lambda spec: [p.name for _, p in select_snapshots(spec, tmp_path)[0]]  # noqa: E731
    assert names("last") == ["epoch-7.pth"]
    assert names("all") == ["epoch-1.pth", "epoch-2.pth", "epoch-3.pth", "epoch-7.pth"]
    assert names("2-5") == ["epoch-2.pth", "epoch-3.pth"]
    assert select_snapshots("2-5", tmp_path)[1] == [4, 5]
    assert names("7,1-2") == ["epoch-1.pth", "epoch-2.pth", "epoch-7.pth"]
    assert names(str(tmp_path / "epoch-3.pth")) == ["epoch-3.pth"]
    with pytest.raises(Exception, match="available epochs: 1-3, 7"):
        select_snapshots("4-6", tmp_path)
    with pytest.raises(Exception, match="expected 'last'"):
        select_snapshots("final", tmp_path)


def test_eval_main_without_snapshots_exits_2(tmp_path, capsys):
    cfg = toy_config(tmp_path)
    with pytest.raises(SystemExit) as exc:
        eval_main(cfg, ["-e", "last"], val_dataset=build_toy(cfg)[2])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: -e last: no epoch-<e>.pth in") and "Traceback" not in err
