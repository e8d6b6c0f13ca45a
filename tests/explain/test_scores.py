"""`cbam localize` on a trained checkpoint and a folder with COCO boxes."""

from __future__ import annotations

import json

from cbam.cli import main
from cbam.runs import fit
from tests.conftest import tiny_config, write_image_folder


def write_val_boxes(root) -> int:
    """A COCO file for the val split: one box per image (its class's name), the whole left half."""
    files = sorted(p.relative_to(root / "val").as_posix() for p in (root / "val").rglob("*.png"))
    classes = sorted({f.split("/")[0] for f in files})
    coco = {
        "images": [{"id": i, "file_name": f} for i, f in enumerate(files)],
        "annotations": [
            {"image_id": i, "category_id": classes.index(f.split("/")[0]), "bbox": [0, 0, 8, 16]}
            for i, f in enumerate(files)
        ],
        "categories": [{"id": i, "name": name} for i, name in enumerate(classes)],
    }
    (root / "annotations").mkdir()
    (root / "annotations" / "val.json").write_text(json.dumps(coco))
    return len(files)


def test_localize_scores_every_boxed_image_of_each_checkpoint(tmp_path, capsys) -> None:
    data = write_image_folder(tmp_path / "data")
    images = write_val_boxes(data)
    fit(tiny_config(data, tmp_path / "run", epochs=1))
    checkpoint = str(tmp_path / "run" / "best.pt")
    capsys.readouterr()  # the training log
    assert main(["localize", "--checkpoint", checkpoint, "--checkpoint", checkpoint, "--json"]) == 0
    scores = json.loads(capsys.readouterr().out)
    assert len(scores) == 2 and scores[0] == scores[1], "the same checkpoint scores the same"
    assert scores[0]["images"] == images
    for key in ("pointing_game", "energy", "iou"):
        interval = scores[0][key]
        assert 0.0 <= interval["low"] <= interval["mean"] <= interval["high"] <= 1.0
    assert main(["localize", "--checkpoint", checkpoint, "--csv", str(tmp_path / "scores.csv")]) == 0
    table = capsys.readouterr().out
    assert "Pointing game (%)" in table and f"| {images} " in table
    assert (tmp_path / "scores.csv").read_text().startswith("Checkpoint,Images,Pointing game (%)")


def test_localize_without_boxes_says_where_it_looked(tmp_path, capsys) -> None:
    data = write_image_folder(tmp_path / "data")
    fit(tiny_config(data, tmp_path / "run", epochs=1))
    assert main(["localize", "--checkpoint", str(tmp_path / "run" / "best.pt")]) == 2
    assert "no boxes for val" in capsys.readouterr().err


def test_localize_explains_a_torchvision_network_fine_tuned_with_cbam_at_its_last_block(tmp_path, capsys) -> None:
    import torch
    import torchvision

    torch.save(torchvision.models.resnet18().state_dict(), tmp_path / "r18.pth")
    data = write_image_folder(tmp_path / "data", size=64)  # layer4's map is 2 x 2, layer3's 4 x 4
    images = write_val_boxes(data)
    fit(tiny_config(data, tmp_path / "run", arch="torchvision:resnet18", model_kwargs={}, epochs=1,
                    weights=str(tmp_path / "r18.pth"), image_size=64, eval_resize=64))  # fmt: skip
    checkpoint = str(tmp_path / "run" / "best.pt")
    capsys.readouterr()
    assert main(["localize", "--checkpoint", checkpoint, "--json"]) == 0
    default = json.loads(capsys.readouterr().out)[0]
    assert default["images"] == images and 0.0 <= default["energy"]["mean"] <= 1.0
    assert main(["localize", "--checkpoint", checkpoint, "--layer", "layer4.1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0] == default, "the default layer is the last block, CBAM included"
    assert main(["localize", "--checkpoint", checkpoint, "--layer", "layer3.1", "--json"]) == 0
    assert default["energy"]["mean"] > 0 and json.loads(capsys.readouterr().out)[0]["energy"] != default["energy"]
