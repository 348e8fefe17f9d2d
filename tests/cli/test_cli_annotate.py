"""samscope annotate: folders with good and bad files, exit codes, key=value."""

from __future__ import annotations

import json

from PIL import Image


def _folder(tmp_path, bad=False):
    from napari_samscope.core.synthetic import make_nuclei_2d

    data = tmp_path / "imgs"
    data.mkdir()
    for seed in (1, 2):
        image, _ = make_nuclei_2d((64, 64), seed=seed)
        Image.fromarray(image).save(data / f"img{seed}.png")
    if bad:
        (data / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    return data


def test_annotate_folder_success(run_cli, tiny_checkpoint, tmp_path):
    data = _folder(tmp_path)
    code, stdout, err = run_cli("annotate", data, "--model", tiny_checkpoint, "--save-coco", "--save-tiff")
    out = tmp_path / "imgs_auto_annotate_labels"
    assert code == 0, err
    assert (out / "img1.txt").exists() and (out / "img2_labels.tif").exists()
    assert json.loads((out / "annotations_coco.json").read_text())["images"]
    assert "2 annotated" in stdout and "0 failed" in stdout
    code, stdout, err = run_cli("annotate", data, "--model", tiny_checkpoint)
    assert code == 0, err
    assert "2 skipped" in stdout


def test_annotate_reports_bad_files_and_exits_1(run_cli, tiny_checkpoint, tmp_path):
    data = _folder(tmp_path, bad=True)
    code, stdout, err = run_cli("annotate", data, "--model", tiny_checkpoint, "--out", tmp_path / "o")
    assert code == 1
    assert "broken.jpg" in stdout and "2 annotated" in stdout and "1 failed" in stdout
    assert "Traceback" not in err
    assert (tmp_path / "o" / "img1.txt").exists() and not (tmp_path / "o" / "broken.txt").exists()


def test_annotate_ultralytics_style(run_cli, tiny_checkpoint, tmp_path):
    data = _folder(tmp_path)
    code, _, err = run_cli("annotate", f"data={data}", "det_model=blobs", f"sam_model={tiny_checkpoint}",
                         f"output_dir={tmp_path / 'kv'}", "conf=0.1", "classes=[0]", "max_det=5")
    assert code == 0, err
    lines = (tmp_path / "kv" / "img1.txt").read_text().splitlines()
    assert len(lines) <= 5 and all(line.startswith("0 ") for line in lines)


def test_annotate_usage_and_failures(run_cli, tiny_checkpoint, tmp_path):
    code, _, err = run_cli("annotate")
    assert code == 2 and "data" in err
    code, _, err = run_cli("annotate", tmp_path, "--conf", "3")
    assert code == 2 and "--conf" in err
    code, _, err = run_cli("annotate", tmp_path / "nowhere", "--model", tiny_checkpoint)
    assert code == 1 and "does not exist" in err
    data = _folder(tmp_path)
    code, _, err = run_cli("annotate", data, "--model", tiny_checkpoint, "--det-model", "yolov8n.pt")
    assert code == 1 and "ultralytics" in err and err.count("\n") == 1


def test_annotate_with_an_explicit_precision_gives_the_same_files(run_cli, tiny_checkpoint, tmp_path):
    """``--dtype float32`` loads the model in the command; a checkpoint defaults to float32 too."""
    data = _folder(tmp_path)
    code, _, err = run_cli("annotate", data, "--model", tiny_checkpoint, "--out", tmp_path / "a")
    assert code == 0, err
    code, _, err = run_cli("annotate", data, "--model", tiny_checkpoint, "--out", tmp_path / "b",
                           "--dtype", "float32")
    assert code == 0, err
    for name in ("img1.txt", "img2.txt"):
        assert (tmp_path / "a" / name).read_text() == (tmp_path / "b" / name).read_text()
    code, _, err = run_cli("annotate", data, "--model", tiny_checkpoint, "--dtype", "half")
    assert code == 2 and "invalid choice" in err
