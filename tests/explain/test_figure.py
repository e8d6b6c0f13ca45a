"""`cbam cam`: the Fig. 4 grid, one row per image and one column per network after the input."""

from __future__ import annotations

from PIL import Image

from cbam.cli import main
from cbam.runs import fit
from tests.conftest import tiny_config, write_image_folder


def test_cam_figure_has_a_row_per_image_and_a_column_per_network(tmp_path, capsys) -> None:
    data = write_image_folder(tmp_path / "data")
    fit(tiny_config(data, tmp_path / "run", epochs=1))
    checkpoint = str(tmp_path / "run" / "best.pt")
    sizes = {}
    for rows, columns in ((1, 1), (3, 1), (3, 3)):
        output = tmp_path / f"fig-{rows}-{columns}.png"
        args = ["cam", *["--checkpoint", checkpoint] * columns, "--count", str(rows), "--output", str(output)]
        assert main(args) == 0
        with Image.open(output) as image:
            assert image.format == "PNG"
            sizes[rows, columns] = image.size
    assert sizes[3, 1][1] > 2.5 * sizes[1, 1][1], "three rows are about three times as tall as one"
    assert sizes[3, 3][0] > 1.5 * sizes[3, 1][0], "two more networks add two columns"
    assert main(["cam", "--checkpoint", checkpoint, "--images", "0", "2", "--output", str(tmp_path / "f.pdf")]) == 0
    assert (tmp_path / "f.pdf").read_bytes().startswith(b"%PDF")
    assert "f.pdf: 2 images (0, 2)" in capsys.readouterr().out
    assert main(["cam", "--checkpoint", checkpoint, "--images", "999", "--output", str(tmp_path / "g.png")]) == 2
    assert "outside the split" in capsys.readouterr().err


def test_attention_maps_add_a_column_per_stage_and_the_gallery_links_every_image(tmp_path, capsys) -> None:
    data = write_image_folder(tmp_path / "data")
    fit(tiny_config(data, tmp_path / "run", epochs=1))  # a CBAM network with four stages
    checkpoint = str(tmp_path / "run" / "best.pt")
    plain, maps = tmp_path / "plain.png", tmp_path / "maps.png"
    assert main(["cam", "--checkpoint", checkpoint, "--count", "1", "--output", str(plain)]) == 0
    assert main(["cam", "--checkpoint", checkpoint, "--count", "1", "--attention-maps", "--output", str(maps)]) == 0
    with Image.open(plain) as a, Image.open(maps) as b:
        assert b.size[0] > 2.0 * a.size[0], "four stage maps beside the Grad-CAM"
    gallery = tmp_path / "gallery"
    assert main(["cam", "--checkpoint", checkpoint, "--images", "1", "4", "--html", str(gallery)]) == 0
    page = (gallery / "index.html").read_text()
    assert page.count("<img ") == 2 and 'src="image-000001.png"' in page and 'src="image-000004.png"' in page
    assert (gallery / "image-000004.png").exists()
    assert main(["cam", "--checkpoint", checkpoint]) == 2
    assert "give --output" in capsys.readouterr().err


def test_cam_checks_its_outputs_first_and_lists_layers_briefly(tmp_path, capsys) -> None:
    data = write_image_folder(tmp_path / "data")
    fit(tiny_config(data, tmp_path / "run", epochs=1))
    checkpoint = str(tmp_path / "run" / "best.pt")
    existing = tmp_path / "fig.png"
    existing.write_bytes(b"keep")
    cases = [
        (["--output", "/dev/null/fig.png"], "/dev/null is a file, not a folder"),
        (["--output", str(existing)], "fig.png exists; pass --force to replace it"),
        (["--output", str(tmp_path / "fig.jpg")], "must end in .png, .pdf, .svg"),
        (["--output", str(tmp_path / "new.png"), "--layer", "layer9"], "unknown layer 'layer9'"),
    ]
    for argv, message in cases:
        assert main(["cam", "--checkpoint", checkpoint, "--count", "1", *argv]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert "did you mean layer4, layer3" in err and "cbam cam --list-layers" in err and len(err) < 400
    assert existing.read_bytes() == b"keep" and not (tmp_path / "new.png").exists()
    assert main(["cam", "--checkpoint", checkpoint, "--count", "1", "--output", str(existing), "--force"]) == 0
    assert existing.read_bytes().startswith(b"\x89PNG")
    capsys.readouterr()
    assert main(["cam", "--checkpoint", checkpoint, "--list-layers"]) == 0
    names = capsys.readouterr().out.split()
    assert "layer4.1.attention.spatial" in names and "fc" in names
