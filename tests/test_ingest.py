"""stoker ingest: .npy/.npz, image folders and ETL files into stores, from the command
line, with clear errors for bad input."""

from __future__ import annotations

import shutil

import cv2
import numpy as np
import pytest

from stoker import store
from stoker.cli import main
from test_etl import KANJI, write_b, write_g


def test_npy_files_become_tuple_samples(tmp_path, capsys):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (300, 8, 8), dtype=np.uint8)
    y = rng.integers(0, 10, 300).astype(np.int64)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", y)
    out = tmp_path / "data.stoker"
    assert main(["ingest", str(tmp_path / "x.npy"), str(tmp_path / "y.npy"), "--out", str(out),
                 "--no-progress"]) == 0
    assert "300 samples" in capsys.readouterr().out
    data = store.open(out)
    np.testing.assert_array_equal(data.arrays[0], x)
    np.testing.assert_array_equal(data.arrays[1], y)
    store.verify(out)


def test_an_npz_becomes_dict_samples(tmp_path):
    np.savez(tmp_path / "d.npz", image=np.ones((5, 3, 3), np.float32), label=np.arange(5))
    assert main(["ingest", str(tmp_path / "d.npz"), "--out", str(tmp_path / "s"),
                 "--no-progress"]) == 0
    sample = store.open(tmp_path / "s")[4]
    assert set(sample) == {"image", "label"} and sample["label"] == 4


def test_an_image_folder_becomes_labelled_samples(tmp_path):
    rng = np.random.default_rng(1)
    folder = tmp_path / "images"
    written = {}
    for name in ("cat", "ant", "bee"):
        (folder / name).mkdir(parents=True)
        for i in range(3):
            image = rng.integers(0, 256, (20, 24), dtype=np.uint8)
            cv2.imwrite(str(folder / name / f"{i}.png"), image)
            written[(name, i)] = image
    (folder / "ant" / "notes.txt").write_text("not an image")
    out = tmp_path / "s"
    assert main(["ingest", str(folder), "--out", str(out), "--no-progress"]) == 0
    data = store.open(out)
    assert data.classes == ["ant", "bee", "cat"] and len(data) == 9
    image, label = data[3]  # bee/0.png
    assert label == 1
    np.testing.assert_array_equal(image[..., 0], written[("bee", 0)])
    assert main(["ingest", str(folder), "--out", str(tmp_path / "small"), "--size", "8",
                 "--no-progress"]) == 0
    assert store.open(tmp_path / "small")[0][0].shape == (8, 8, 1)


def test_folder_errors_name_the_file(tmp_path, capsys):
    folder = tmp_path / "images"
    (folder / "a").mkdir(parents=True)
    cv2.imwrite(str(folder / "a" / "0.png"), np.zeros((10, 10), np.uint8))
    cv2.imwrite(str(folder / "a" / "1.png"), np.zeros((12, 10), np.uint8))
    assert main(["ingest", str(folder), "--out", str(tmp_path / "s"), "--no-progress"]) == 2
    assert "1.png is 10x12" in capsys.readouterr().err
    (folder / "a" / "1.png").write_bytes(b"\x89PNG\r\n\x1a\ntruncated")
    assert main(["ingest", str(folder), "--out", str(tmp_path / "s"), "--no-progress"]) == 2
    assert "1.png is not an image stoker can decode: the PNG has no IEND" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()
    assert main(["ingest", str(tmp_path / "nowhere.npy"), "--out", str(tmp_path / "s")]) == 2
    assert "no such file" in capsys.readouterr().err


def test_what_a_decoded_folder_ingest_cannot_take_is_refused_before_writing(tmp_path, capsys):
    """Red-team findings: a cut-off JPEG decoded with its missing part grey and was
    stored (only --encoded checked files); a float TIFF gave numpy's "Invalid integer
    data type 'f'", naming no file; a store written into the folder was read as a class
    (of no samples) on the next ingest."""
    folder = tmp_path / "photos"
    for name in ("cat", "dog"):
        (folder / name).mkdir(parents=True)
        cv2.imwrite(str(folder / name / "0.png"), np.zeros((8, 8), np.uint8))
    _, encoded = cv2.imencode(".jpg", np.random.default_rng(0).integers(
        0, 256, (64, 64), dtype=np.uint8))
    (folder / "cat" / "1.jpg").write_bytes(encoded.tobytes()[:len(encoded) // 2])
    out = tmp_path / "s"

    def refused(*flags):
        assert main(["ingest", str(folder), "--out", str(out), "--no-progress", *flags]) == 2
        assert not out.exists()
        return capsys.readouterr().err

    assert "1.jpg is not an image stoker can decode" in refused()
    (folder / "cat" / "1.jpg").unlink()
    cv2.imwrite(str(folder / "cat" / "1.tif"), np.zeros((8, 8), np.float32))
    err = refused()
    assert "1.tif holds float32 pixels" in err and "8 or 16 bits" in err, err
    (folder / "cat" / "1.tif").unlink()
    (folder / "bird").mkdir()
    assert "bird holds no images" in refused()
    (folder / "bird").rmdir()
    inside = folder / "store"
    assert main(["ingest", str(folder), "--out", str(inside), "--no-progress"]) == 2
    assert "is inside the image folder" in capsys.readouterr().err and not inside.exists()
    assert "--characters and --etl-format are for ETL files" in refused("--characters", "kanji")
    assert main(["ingest", str(folder), "--out", str(out), "--no-progress"]) == 0


def test_numpy_input_that_is_no_field_of_samples_gets_one_line_naming_it(tmp_path, capsys):
    """Red-team findings: a cut-off .npz and `preview --from x.npz` printed tracebacks;
    two .npz, or .npy with .npz, failed inside numpy ("unhashable type: 'slice'", or an
    archive's count of arrays taken as its length); a 0-d array gave a bare TypeError,
    and the catch-all line was cut off after "shows"; numpy's allow_pickle= advice and a
    keyword (classes=) reached the command line; flags that do not apply were ignored."""
    np.save(tmp_path / "x.npy", np.zeros((10, 4, 4), np.uint8))
    np.save(tmp_path / "zero.npy", np.array(3))
    np.save(tmp_path / "s.npy", np.array(["a", "b"]))
    np.savez(tmp_path / "d.npz", x=np.zeros((10, 4, 4), np.uint8), y=np.arange(10))
    np.savez(tmp_path / "one.npz", a=np.array(1))
    (tmp_path / "cut.npz").write_bytes((tmp_path / "d.npz").read_bytes()[:100])
    (tmp_path / "junk.npy").write_bytes(b"hello world" * 10)
    shutil.copy(tmp_path / "d.npz", tmp_path / "zipped.npy")
    out = str(tmp_path / "o")

    def said(*argv):
        assert main([*argv]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "Traceback" not in err, err
        assert not (tmp_path / "o").exists()
        return err

    t = tmp_path
    assert "zero.npy holds a single value (a 0-d array), not samples" in said(
        "ingest", str(t / "zero.npy"), "--out", out)
    assert "one.npz (a) holds a single value" in said("ingest", str(t / "one.npz"), "--out", out)
    assert "cannot read" in said("ingest", str(t / "cut.npz"), "--out", out)
    for pair in (("d.npz", "one.npz"), ("x.npy", "d.npz")):
        assert "d.npz is an .npz archive among 2 inputs" in said(
            "ingest", *(str(t / p) for p in pair), "--out", out)
    err = said("ingest", str(t / "junk.npy"), "--out", out)
    assert "it is no .npy file" in err and "allow_pickle" not in err, err
    assert "zipped.npy is an .npz archive, not a .npy array: name it zipped.npz" in said(
        "ingest", str(t / "zipped.npy"), "--out", out)
    err = said("ingest", str(t / "s.npy"), "--out", out, "--no-progress")
    assert "--classes FILE" in err and "classes=" not in err and err.rstrip().endswith(
        "shows the traceback)"), err
    assert "--size, --color do not apply to .npy/.npz input" in said(
        "ingest", str(t / "x.npy"), "--size", "12", "--color", "--out", out)
    assert "from 1 to 65536, got 100000" in said(
        "ingest", str(t / "x.npy"), "--size", "100000", "--out", out)
    assert "x.npy is given twice" in said("ingest", str(t / "x.npy"), str(t / "x.npy"),
                                          "--out", out)
    (t / "photos").mkdir()
    assert "photos is a folder; an image folder is ingested alone" in said(
        "ingest", str(t / "x.npy"), str(t / "photos"), "--out", out)
    png = str(t / "p.png")
    assert "d.npz is an .npz archive: ingest it first" in said(
        "preview", "--from", str(t / "d.npz"), "--out", png)
    assert "argument --zoom: must be 1 or more, got 0" in said("preview", "--zoom", "0",
                                                               "--out", png)
    assert "argument --augmentations: must be 1 or more" in said(
        "preview", "--augmentations", "0", "--out", png)


def test_etl_files_become_kanji_samples(tmp_path, capsys):
    rng = np.random.default_rng(2)
    write_g(tmp_path / "ETL8G_01", "ETL8G",
            [(code, rng.integers(0, 16, (127, 128)), i) for i, (code, _) in enumerate(KANJI)]
            + [(0x2422, rng.integers(0, 16, (127, 128)), 9)])
    write_b(tmp_path / "ETL9B_1", "ETL9B", [(0x3022, rng.integers(0, 2, (63, 64)))])
    out = tmp_path / "kanji.stoker"
    assert main(["ingest", str(tmp_path / "ETL8G_01"), str(tmp_path / "ETL9B_1"),
                 "--characters", "kanji", "--out", str(out), "--no-progress"]) == 0
    data = store.open(out)
    assert data.classes == ["亜", "唖", "本"] and len(data) == 4
    labels = [int(data[i][1]) for i in range(4)]
    assert [data.classes[i] for i in labels] == ["亜", "唖", "本", "唖"]
    assert data[0][0].shape == (64, 64, 1) and data[0][0].dtype == np.uint8
    assert main(["ingest", str(tmp_path / "ETL8G_01"), "--out", str(out),
                 "--no-progress"]) == 2
    assert "overwrite" in capsys.readouterr().err


@pytest.mark.parametrize("characters", ["ん", "emoji"])
def test_etl_selections_that_match_nothing_are_errors(tmp_path, capsys, characters):
    write_b(tmp_path / "ETL9B_1", "ETL9B", [(0x3022, np.zeros((63, 64), np.uint8))])
    assert main(["ingest", str(tmp_path / "ETL9B_1"), "--characters", characters,
                 "--out", str(tmp_path / "s"), "--no-progress"]) == 2
    assert "no records" in capsys.readouterr().err


def test_ingest_classes_and_train_data_meet_on_the_command_line(tmp_path, capsys):
    from stoker.train import user_data

    x = np.zeros((30, 16, 16, 1), np.uint8)
    y = np.arange(30, dtype=np.int64) % 3
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", y)
    names = tmp_path / "names.txt"
    names.write_text("円\n山\n川\n", encoding="utf-8")
    out = tmp_path / "d.stoker"
    npys = [str(tmp_path / "x.npy"), str(tmp_path / "y.npy")]
    assert main(["ingest", *npys, "--out", str(out), "--classes", str(names),
                 "--no-progress"]) == 0
    assert "3 classes" in capsys.readouterr().out
    assert store.open(out).classes == ["円", "山", "川"]
    assert user_data((out,), seed=0).classes == ("円", "山", "川")

    # Every refusal speaks in flags, never in keyword arguments.
    assert main(["ingest", *npys, "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "--overwrite" in err and "overwrite=True" not in err
    names.write_text("円\n\n川\n", encoding="utf-8")
    assert main(["ingest", *npys, "--out", str(tmp_path / "e"), "--classes", str(names)]) == 2
    assert "empty line (2)" in capsys.readouterr().err
    names.write_text("円\n円\n", encoding="utf-8")
    assert main(["ingest", *npys, "--out", str(tmp_path / "e"), "--classes", str(names)]) == 2
    assert "'円' twice" in capsys.readouterr().err
    names.write_text("円\n山\n", encoding="utf-8")  # labels go up to 2
    assert main(["ingest", *npys, "--out", str(tmp_path / "e"), "--classes", str(names),
                 "--no-progress"]) == 2
    assert "outside the 2 classes" in capsys.readouterr().err
    assert not (tmp_path / "e").exists()

    plain = tmp_path / "plain.stoker"
    assert main(["ingest", *npys, "--out", str(plain), "--no-progress"]) == 0
    for data, expected in [
        ((plain,), "has no class names.*--classes NAMES.txt --overwrite"),
        ((tmp_path / "nowhere.stoker",), "no store or file at .*stoker ingest"),
        ((tmp_path / "x.npy", tmp_path / "y.npy"), "not .npy/.npz files.*stoker ingest"),
        ((tmp_path / "names.txt",), "cannot tell the ETL format.*--etl-format"),
    ]:
        with pytest.raises(ValueError, match=expected) as caught:
            user_data(data, seed=0)
        assert "format=" not in str(caught.value) and "classes=" not in str(caught.value)


def test_folder_ingest_says_what_it_converted(tmp_path, capsys):
    folder = tmp_path / "photos" / "cat"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    cv2.imwrite(str(folder / "colour.png"), rng.integers(0, 255, (12, 12, 3), dtype=np.uint8))
    cv2.imwrite(str(folder / "grey.png"), np.full((10, 10), 7, np.uint8))
    out = tmp_path / "s"
    assert main(["ingest", str(tmp_path / "photos"), "--size", "10", "--out", str(out),
                 "--no-progress"]) == 0
    said = capsys.readouterr().out
    assert "2 samples, 1 class," in said
    assert "converted: 1 colour image made grey (--color keeps colour); 1 image resized" \
        in said
    assert store.open(out)[1][0].shape == (10, 10, 1)


def test_an_encoded_folder_keeps_each_files_bytes_and_decodes_in_the_loader(tmp_path, capsys):
    from stoker.augment import Compose, Decode, RandomResizedCrop
    from test_photo import photo

    folder = tmp_path / "photos"
    files = {}
    for label, name in enumerate(("cat", "dog")):
        (folder / name).mkdir(parents=True)
        for i, ext in enumerate((".jpg", ".png", ".webp")):
            path = folder / name / f"{i}{ext}"
            cv2.imwrite(str(path), photo(20 + 9 * i, 31 - 5 * i, label * 3 + i))
            files[(label, i)] = path.read_bytes()
    out = tmp_path / "photos.stoker"
    assert main(["ingest", str(folder), "--encoded", "--out", str(out), "--no-progress"]) == 0
    assert "6 samples, 2 classes" in capsys.readouterr().out
    data = store.open(out)
    assert data.classes == ["cat", "dog"]
    for position, ((label, _), raw) in enumerate(sorted(files.items())):
        record, stored_label = data[position]
        assert stored_label == label and record.tobytes() == raw
    store.verify(out)
    assert main(["inspect", str(out)]) == 0
    assert "field '0': encoded bytes, 6 records" in capsys.readouterr().out
    assert main(["inspect", str(out), "--out", str(tmp_path / "sheet.png")]) == 0
    sheet = cv2.imread(str(tmp_path / "sheet.png"))
    assert sheet.shape == (2 + 98, 2 + 6 * 98, 3)  # one row of six 96-pixel thumbnails
    assert main(["preview", "--from", str(out)]) == 2
    assert "holds encoded images (field '0'), not pixels" in capsys.readouterr().err
    transform = Compose([Decode(), RandomResizedCrop(12)])
    with stoker_loader(data, transform) as loader:
        images = np.concatenate([x for x, _ in loader])
    assert images.shape == (6, 12, 12, 3)


def stoker_loader(data, transform):
    import stoker

    return stoker.Loader(data, batch_size=4, transform=transform, workers=2)


def test_encoded_ingest_refuses_what_is_no_image_and_flags_that_do_not_apply(tmp_path, capsys):
    folder = tmp_path / "photos" / "cat"
    folder.mkdir(parents=True)
    cv2.imwrite(str(folder / "0.jpg"), np.zeros((10, 10, 3), np.uint8))
    (folder / "1.jpg").write_bytes(cv2.imencode(".jpg", np.zeros((10, 10, 3), np.uint8))[1]
                                   .tobytes()[:60])
    out = tmp_path / "s"
    assert main(["ingest", str(tmp_path / "photos"), "--encoded", "--out", str(out),
                 "--no-progress"]) == 2
    assert "1.jpg is not an image stoker can decode: the JPEG has no end marker" \
        in capsys.readouterr().err
    (folder / "1.jpg").write_text("<html>not found</html>")
    assert main(["ingest", str(tmp_path / "photos"), "--encoded", "--out", str(out),
                 "--no-progress"]) == 2
    assert "1.jpg is not an image stoker can decode: its first bytes" in capsys.readouterr().err
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["photos"]
    png = cv2.imencode(".png", np.zeros((10, 10, 3), np.uint8))[1].tobytes()
    (folder / "1.jpg").unlink()
    (folder / "2.png").write_bytes(png[: len(png) // 2])
    assert main(["ingest", str(tmp_path / "photos"), "--encoded", "--out", str(out),
                 "--no-progress"]) == 2
    assert "2.png is not an image stoker can decode: the PNG has no IEND chunk" \
        in capsys.readouterr().err
    (folder / "2.png").unlink()
    (folder / "3.jpg").symlink_to(folder / "gone.jpg")
    assert main(["ingest", str(tmp_path / "photos"), "--encoded", "--out", str(out),
                 "--no-progress"]) == 2
    assert "3.jpg is named as an image but is a link to nothing" in capsys.readouterr().err
    (folder / "3.jpg").unlink()
    # A large JPEG cut in its scan behind an EXIF thumbnail whose end is all that is left
    # (its segments are walked: the thumbnail's end is inside one), and one with bytes
    # after its end (taken).
    from test_photo import photo

    main_ = cv2.imencode(".jpg", photo(300, 300, 1))[1].tobytes()
    thumbnail = cv2.imencode(".jpg", photo(16, 16, 2))[1].tobytes()
    app1 = b"\xff\xe1" + (len(thumbnail) + 2).to_bytes(2, "big") + thumbnail
    (folder / "4.jpg").write_bytes(main_[:2] + app1 + main_[2:len(main_) // 2])
    assert len(main_) // 2 > 8192
    assert main(["ingest", str(tmp_path / "photos"), "--encoded", "--out", str(out),
                 "--no-progress"]) == 2
    assert "4.jpg is not an image stoker can decode: the JPEG has no end marker after its " \
        "last scan" in capsys.readouterr().err
    assert not out.exists()
    (folder / "4.jpg").write_bytes(main_ + b"\xff\xda" + bytes(9000))  # bytes after the end
    assert main(["ingest", str(tmp_path / "photos"), "--encoded", "--out", str(out),
                 "--no-progress"]) == 0
    assert len(store.open(out)) == 2
    shutil.rmtree(out)
    assert main(["ingest", str(tmp_path / "photos"), "--encoded", "--size", "64", "--out",
                 str(out)]) == 2
    assert "--size and --color do not apply" in capsys.readouterr().err
    np.save(tmp_path / "x.npy", np.zeros((3, 2)))
    assert main(["ingest", str(tmp_path / "x.npy"), "--encoded", "--out", str(out)]) == 2
    assert "--encoded is for an image folder" in capsys.readouterr().err
