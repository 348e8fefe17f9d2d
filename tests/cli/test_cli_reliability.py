"""The CLI on unlucky input: bad files in a folder, re-runs into the input folder, ambiguous
channel layouts, symlink loops, negative coordinates and arguments checked before loading."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from PIL import Image


def _folder_with_bad_files(tmp_path):
    from napari_samscope.core.synthetic import make_nuclei_2d

    data = tmp_path / "imgs"
    data.mkdir()
    image, truth = make_nuclei_2d((48, 48), seed=1)
    (data / "a_header_only.tif").write_bytes(b"II*\x00\x08\x00\x00\x00" + bytes(10))
    tifffile.imwrite(data / "b_bool.tif", truth > 0)
    (data / "c_loop.png").symlink_to(data / "c_loop.png")
    Image.fromarray(image).save(data / "d_good.png")
    return data


@pytest.mark.parametrize("command", ["predict", "everything"])
def test_folder_commands_skip_bad_files_and_exit_1(run_cli, tiny_checkpoint, tmp_path, command):
    data = _folder_with_bad_files(tmp_path)
    extra = ["--points-per-side", "4"]
    code, stdout, err = run_cli(command, "--model", tiny_checkpoint, "--source", data, "--out",
                                tmp_path / "o", *extra)
    assert code == 1
    assert "a_header_only.tif" in err and "symbolic link loop" in err and "Traceback" not in err
    assert "b_bool.tif" not in err  # a boolean image is a valid 0/1 image
    assert (tmp_path / "o" / "d_good_labels.tif").exists() and (tmp_path / "o" / "b_bool_labels.tif").exists()
    assert "done: 2 image(s)" in stdout and "2 failed" in stdout


def test_single_symlink_loop_is_named(run_cli, tiny_checkpoint, tmp_path):
    loop = tmp_path / "loop.tif"
    loop.symlink_to(loop)
    code, _, err = run_cli("predict", "--model", tiny_checkpoint, "--source", loop)
    assert code == 1 and "symbolic link loop" in err and "does not exist" not in err


def test_output_folder_equal_to_input_folder_reruns(run_cli, tiny_checkpoint, tmp_path, nuclei_png):
    folder = nuclei_png.parent
    for _ in range(2):
        code, stdout, err = run_cli("predict", "--model", tiny_checkpoint, "--source", folder,
                                    "--bboxes", "5,5,30,40", "--out", folder)
        assert code == 0, err
        assert "done: 1 image(s)" in stdout  # its own labels and overlay are not inputs
    assert sorted(p.name for p in folder.iterdir()) == [
        "nuclei.png", "nuclei_labels.tif", "nuclei_overlay.png", "samscope_manifest.json"]


def test_two_channel_tiff_is_read_by_one_rule(run_cli, tiny_checkpoint, tmp_path):
    from napari_samscope.core.predict.image import load_image, to_rgb_uint8
    from napari_samscope.core.predict.sam_api import SAM

    rng = np.random.default_rng(0)
    image = rng.integers(0, 60000, (40, 48, 2)).astype(np.uint16)
    path = tmp_path / "two.tif"
    tifffile.imwrite(path, image)
    code, stdout, err = run_cli("predict", "--model", tiny_checkpoint, "--source", path,
                                "--bboxes", "5,5,30,30", "--out", tmp_path / "a")
    assert code == 1 and "--channel-axis 2" in err  # refused, as the API refuses the array
    with pytest.raises(ValueError, match="channel_axis"):
        to_rgb_uint8(load_image(path))
    code, stdout, err = run_cli("predict", "--model", tiny_checkpoint, "--source", path,
                                "--bboxes", "5,5,30,30", "--channel-axis", "2", "--out", tmp_path / "b")
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "b").glob("*.tif")) == ["two_labels.tif"]
    api = SAM(str(tiny_checkpoint))(to_rgb_uint8(load_image(path), channel_axis=2), bboxes=[5, 5, 30, 30])
    assert np.array_equal(tifffile.imread(tmp_path / "b" / "two_labels.tif"), api.to_label_image())


def test_negative_coordinates_parse_as_values():
    from napari_samscope.cli.main import build_parser

    parser = build_parser()
    args = parser.parse_args(["predict", "--source", "x.png", "--points", "-100,-100", "5,-3"])
    assert args.points == [(-100.0, -100.0), (5.0, -3.0)]
    args = parser.parse_args(["predict", "--source", "x.png", "--bboxes", "-5,-5,20,20"])
    assert args.bboxes == [(-5.0, -5.0, 20.0, 20.0)]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--bboxes", "10,10,10,30"], "has no area"),
        (["--bboxes", "10,30,40,30"], "has no area"),
        (["--points-per-side", "0"], "--points-per-side must be at least 1"),
        (["--conf", "1.5"], "--conf must be between 0 and 1"),
    ],
)
def test_bad_values_exit_2_before_the_model_is_loaded(run_cli, nuclei_png, tmp_path, args, message):
    missing_model = tmp_path / "no_such_model.pt"  # loading it would fail with exit 1
    code, _, err = run_cli("predict", "--model", missing_model, "--source", nuclei_png, *args)
    assert code == 2 and message in err


def test_small_boxes_in_a_large_image_go_to_crops_and_points_warn(run_cli, tiny_checkpoint, tmp_path,
                                                                   monkeypatch):
    from napari_samscope.core.datasets import annotate
    from napari_samscope.core.predict import crops

    image = np.random.default_rng(0).integers(0, 255, (512, 512)).astype(np.uint8)
    path = tmp_path / "large.png"
    Image.fromarray(image).save(path)
    seen = []
    real = crops.segment_boxes

    def spy(predictor, img, boxes, **kw):
        seen.append(np.asarray(boxes).tolist())
        return real(predictor, img, boxes, **kw)

    monkeypatch.setattr(crops, "segment_boxes", spy)
    monkeypatch.setattr(annotate, "segment_boxes", spy)
    # the tiny model's input is 64 pixels: the image is shrunk 8x, a 9-pixel box to 1 pixel
    code, stdout, err = run_cli("predict", "--model", tiny_checkpoint, "--source", path,
                                "--bboxes", "100,100,108,108", "300,40,500,400", "--out", tmp_path / "o")
    assert code == 0, err
    assert seen == [[[100.0, 100.0, 108.0, 108.0]]]  # only the small box is cropped
    assert "warning" not in err
    code, stdout, err = run_cli("predict", "--model", tiny_checkpoint, "--source", path,
                                "--points", "104,104", "--out", tmp_path / "p")
    assert code == 0, err
    assert "warning: large.png: objects smaller than 128 pixels" in err


def test_annotate_reads_a_two_channel_tiff_with_channel_axis(run_cli, tiny_checkpoint, tmp_path):
    from napari_samscope.core.synthetic import make_nuclei_2d

    image, _ = make_nuclei_2d((48, 48), dtype="uint16", seed=2)
    data = tmp_path / "d"
    data.mkdir()
    tifffile.imwrite(data / "two.tif", np.stack([image, image[::-1]], axis=-1))
    code, stdout, _ = run_cli("annotate", data, "--model", tiny_checkpoint, "--out", tmp_path / "a")
    assert code == 1 and "channel" in stdout and "1 failed" in stdout
    code, stdout, err = run_cli("annotate", data, "--model", tiny_checkpoint, "--out", tmp_path / "b",
                                "--channel-axis", "2")
    assert code == 0, err
    assert "1 annotated (1 plane," in stdout and (tmp_path / "b" / "two.txt").exists()
