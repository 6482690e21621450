"""Forty-odd mistakes users make, through the API and on the command line: each gets one
line that names the problem and the fix, in the caller's language (keywords for the
API, flags for the CLI), never a traceback and never a half-written file."""

from __future__ import annotations

import re

import numpy as np
import pytest

import stoker
from stoker import store
from stoker.cli import main

X = np.zeros((10, 4, 4), np.uint8)
Y = np.arange(10)


@pytest.fixture(scope="module")
def data():
    source = stoker.from_arrays(X, Y)
    yield source
    source.release()


def _loader(data, **kwargs):
    return lambda: stoker.Loader(data, **{"batch_size": 2, "workers": 0, **kwargs})


API_MISTAKES = [
    # (what, call taking the module's data, error type, what the message must say)
    ("batch size positionally", lambda d: stoker.Loader(d, 32), TypeError,
     r"only the source positionally.*Loader\(source, batch_size=32\)"),
    ("no batch size", lambda d: stoker.Loader(d), TypeError, r"needs batch_size=N"),
    ("torch's num_workers", lambda d: _loader(d, num_workers=2)(), TypeError, r"workers=N"),
    ("torch's drop_last", lambda d: _loader(d, drop_last=True)(), TypeError,
     r"drop_remainder=True"),
    ("torch's prefetch_factor", lambda d: _loader(d, prefetch_factor=2)(), TypeError,
     r"prefetch=N"),
    ("torch's collate_fn", lambda d: _loader(d, collate_fn=list)(), TypeError,
     r"batches are stacked"),
    ("torch's worker_init_fn", lambda d: _loader(d, worker_init_fn=print)(), TypeError,
     r"register_global_rng"),
    ("torch's pin_memory", lambda d: _loader(d, pin_memory=True)(), TypeError,
     r"loader\.torch\(pin_memory=True\)"),
    ("a typo", lambda d: _loader(d, shufle=False)(), TypeError, r"did you mean shuffle="),
    ("shuffle='False'", lambda d: _loader(d, shuffle="False")(), TypeError,
     r"shuffle must be True or False, got 'False'"),
    ("shuffle=None", lambda d: _loader(d, shuffle=None)(), TypeError,
     r"shuffle must be True or False"),
    ("drop_remainder='no'", lambda d: _loader(d, drop_remainder="no")(), TypeError,
     r"drop_remainder must be True or False"),
    ("check_finite=1", lambda d: _loader(d, check_finite=1)(), TypeError,
     r"check_finite must be True or False"),
    ("timeout='5'", lambda d: _loader(d, timeout="5")(), TypeError,
     r"timeout must be a number of seconds or None, got '5'"),
    ("timeout=0", lambda d: _loader(d, timeout=0)(), ValueError, r"positive number"),
    ("start_timeout=None", lambda d: _loader(d, start_timeout=None)(), TypeError,
     r"None is not allowed"),
    ("batch_size=0", lambda d: _loader(d, batch_size=0)(), ValueError, r"batch_size must be >= 1"),
    ("batch_size=2.5", lambda d: _loader(d, batch_size=2.5)(), TypeError,
     r"batch_size must be an int"),
    ("workers=-1", lambda d: _loader(d, workers=-1)(), ValueError, r"workers must be >= 0"),
    ("an unknown backend", lambda d: _loader(d, backend="threads")(), ValueError,
     r"backend must be one of"),
    ("an unknown start method", lambda d: _loader(d, workers=1, start_method="fork2")(),
     ValueError, r"start_method must be one of"),
    ("a shard index too large", lambda d: _loader(d, shard=(2, 2))(), ValueError,
     r"shard index must be below the count"),
    ("shards without a seed", lambda d: _loader(d, shard=(0, 2), seed=None)(), ValueError,
     r"explicit seed"),
    ("a transform that is not callable", lambda d: _loader(d, transform=5)(), TypeError,
     r"transform must be callable"),
    ("a transform with three arguments", lambda d: _loader(d, transform=lambda a, b, c: a)(),
     TypeError, r"must accept \(sample, rng\) or \(sample\)"),
    ("a dict as the source", lambda d: stoker.Loader({"x": X}, batch_size=2), TypeError,
     r"stoker\.from_arrays"),
    ("a number as the source", lambda d: stoker.Loader(5, batch_size=2), TypeError,
     r"needs __len__ and __getitem__"),
    ("a batch larger than the data, drop_remainder", lambda d: _loader(
        d, batch_size=64, drop_remainder=True)(), ValueError, r"no batch; lower batch_size"),
    ("load_state_dict of something else", lambda d: _loader(d)().load_state_dict({"foo": 1}),
     ValueError, r"not a loader state.*foo"),
    ("load_state_dict of an int", lambda d: _loader(d)().load_state_dict(5), TypeError,
     r"the dict that state_dict\(\) returned"),
    ("set_epoch(-1)", lambda d: _loader(d)().set_epoch(-1), ValueError,
     r"epoch must be an int >= 0"),
    ("from_arrays of unequal lengths", lambda d: stoker.from_arrays(X, Y[:3]), ValueError,
     r"equal length, got lengths 0: 10, 1: 3"),
    ("from_arrays of images of different shapes",
     lambda d: stoker.from_arrays([np.zeros((4, 4)), np.zeros((5, 5))]), ValueError,
     r"cannot be made one array.*same shape"),
    ("from_arrays of nothing", lambda d: stoker.from_arrays(), TypeError,
     r"at least one array"),
    ("from_arrays mixing positions and names", lambda d: stoker.from_arrays(X, label=Y),
     TypeError, r"either positionally or by name"),
    ("from_arrays of a scalar", lambda d: stoker.from_arrays(np.array(5)), ValueError,
     r"scalar"),
    ("from_arrays of strings", lambda d: stoker.from_arrays(np.array(["a", "b"])), TypeError,
     r"numeric arrays"),
    ("split(1.5)", lambda d: stoker.split(d, 1.5), ValueError, r"strictly between 0 and 1"),
    ("register_global_rng(3)", lambda d: stoker.register_global_rng(3), TypeError,
     r"seeder\(seed: int\)"),
    ("Writer(classes='abc')", lambda d: store.Writer("/nonexistent/x", classes="abc"),
     TypeError, r"classes must be a list"),
    ("save of a number", lambda d: store.save("/nonexistent/x", 5), TypeError,
     r"save\(\) needs arrays"),
    ("open of nothing", lambda d: store.open("/nonexistent/x"), store.StoreError,
     r"no store at"),
    ("fit(loader) without .keras()", lambda d: _fit_the_loader_itself(d), ValueError,
     r"Unrecognized data type.*fit\(\) takes loader\.keras\(\)"),
]


def _fit_the_loader_itself(data):
    """Keras dispatches on type and quotes the loader's repr, which says what to call."""
    import keras

    model = keras.Sequential([keras.Input((4, 4)), keras.layers.Flatten(),
                              keras.layers.Dense(2)])
    model.compile("sgd", "mse")
    with _loader(data)() as loader:
        model.fit(loader, epochs=1, verbose=0)


@pytest.mark.parametrize("what, call, kind, message", API_MISTAKES,
                         ids=[m[0] for m in API_MISTAKES])
def test_api_mistakes_get_one_actionable_line(data, what, call, kind, message):
    with pytest.raises(kind) as caught:
        call(data)
    text = str(caught.value)
    assert re.search(message, text), text
    assert "\n" not in text and len(text) < 400, text


@pytest.fixture
def files(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    np.save("x.npy", np.zeros((20, 8, 8, 1), np.uint8))
    np.save("y.npy", np.arange(20) % 2)
    (tmp_path / "names.txt").write_text("a\nb\n")
    (tmp_path / "dupes.txt").write_text("a\na\n")
    (tmp_path / "photos" / "cat").mkdir(parents=True)
    import cv2

    cv2.imwrite(str(tmp_path / "photos" / "cat" / "1.png"), np.zeros((10, 10, 3), np.uint8))
    np.save("big.npy", np.zeros((100, 100), np.uint8))
    (tmp_path / "cut.npy").write_bytes((tmp_path / "big.npy").read_bytes()[:3000])
    assert main(["ingest", "x.npy", "y.npy", "--out", "d.stoker", "--no-progress"]) == 0
    assert main(["ingest", "photos", "--encoded", "--out", "e.stoker", "--no-progress"]) == 0
    (tmp_path / "junk" / "cat").mkdir(parents=True)
    (tmp_path / "junk" / "cat" / "0.jpg").write_text("<html>404 not found</html>")
    return tmp_path


CLI_MISTAKES = [
    (["ingest", "x.npy", "y.npy", "--out", "d.stoker"], r"already exists; pass --overwrite"),
    (["ingest", "nowhere.npy", "--out", "n.stoker"], r"no such file or folder: nowhere\.npy"),
    (["ingest", "photos", "--size", "-3", "--out", "n.stoker"],
     r"argument --size: must be from 1 to 65536, got -3 \(see stoker ingest --help\)"),
    (["ingest", "cut.npy", "--out", "n.stoker"], r"cut\.npy .*truncated"),
    (["ingest", "photos", "--classes", "names.txt", "--out", "n.stoker"],
     r"--classes is for \.npy/\.npz input"),
    (["ingest", "x.npy", "y.npy", "--classes", "dupes.txt", "--out", "n.stoker"],
     r"names 'a' twice"),
    (["ingest", "x.npy", "y.npy", "--classes", "missing.txt", "--out", "n.stoker"],
     r"--classes missing\.txt: cannot read it"),
    (["ingest", "photos", "--encoded", "--size", "64", "--out", "n.stoker"],
     r"--encoded keeps each file as it is, so --size and --color do not apply"),
    (["ingest", "x.npy", "--encoded", "--out", "n.stoker"], r"--encoded is for an image folder"),
    (["ingest", "junk", "--encoded", "--out", "n.stoker"],
     r"junk/cat/0\.jpg is not an image stoker can decode: its first bytes"),
    (["preview", "--from", "e.stoker"], r"holds encoded images \(field '0'\), not pixels"),
    (["preview", "--images", "0"], r"argument --images: must be 1 or more, got 0"),
    (["preview", "--seed", "-1"], r"argument --seed: must be 0 or more, got -1"),
    (["preview", "--zoom", "100000"],
     r"the grid would be 57600024x38400046 pixels.*lower --images \(6\), --augmentations \(8\) "
     r"or --zoom \(100000\)"),
    (["preview", "--from", "x.npy", "--augmentations", "100000"],
     r"the grid would be 1800024x\d+ pixels"),
    (["preview", "--recipe", "nomodule:thing"], r"--recipe cannot find recipe"),
    (["preview", "--from", "x.npy", "--out", "grid.jpg"], r"PNG files"),
    (["bench", "--workers", "a,b"], r"--workers takes comma-separated integers"),
    (["bench", "--workers", "0,100000"],
     r"--workers 100000 is more than 32 worker processes for each usable core.*up to \d+$"),
    (["bench", "--out", "plot.jpg"], r"--out is a PNG plot"),
    (["bench", "--samples", "10"], r"--samples must be at least one --batch-size"),
    (["train", "--classes", "1"], r"argument --classes: must be from 2 to 2965, got 1"),
    (["train", "--epochs", "0"], r"argument --epochs: must be 1 or more, got 0"),
    (["train", "--epochs", "ten"], r"argument --epochs: expected a whole number, got 'ten'"),
    (["train", "--batch-size", "0"], r"argument --batch-size: must be 1 or more, got 0"),
    (["train", "--workers", "-1"], r"argument --workers: must be from 0 to \d+, got -1"),
    (["train", "--workers", "100000"], r"argument --workers: must be from 0 to \d+, got 100000"),
    (["train", "--seed", "-1"], r"argument --seed: must be from 0 to 4294967295, got -1"),
    (["train", "--seed", str(2**32)], r"argument --seed: must be from 0 to 4294967295"),
    (["train", "--data", "nowhere.stoker"], r"--data: no store or file at .*stoker ingest"),
    (["train", "--data", "x.npy", "y.npy"], r"not \.npy/\.npz files.*stoker ingest"),
    (["verify", "x.npy"], r"is a file; STORE is a store"),
    (["verify", "nowhere.stoker"], r"no store at"),
    (["inspect", "nowhere.stoker"], r"no store at"),
    (["inspect", "d.stoker", "--out", "sheet.png", "--images", "0"],
     r"argument --images: must be 1 or more, got 0"),
]


@pytest.mark.parametrize("argv, message", CLI_MISTAKES, ids=[" ".join(m[0]) for m in CLI_MISTAKES])
def test_cli_mistakes_get_one_line_in_flag_terms(files, capsys, argv, message):
    assert main(argv) == 2
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert len(lines) == 1, captured.err
    assert lines[0].startswith(f"stoker {argv[0]}: "), lines[0]
    assert re.search(message, lines[0]), lines[0]
    assert "Traceback" not in captured.err
    assert not re.search(r"\b(overwrite|format|classes|progress)=", lines[0]), lines[0]
    assert not (files / "n.stoker").exists()


def test_version_and_help_show_defaults(capsys):
    assert main(["--version"]) == 0  # main returns the exit status, whatever ends it
    assert capsys.readouterr().out.strip() == f"stoker {stoker.__version__}"
    for command in ("train", "ingest", "preview", "bench", "verify", "inspect"):
        assert main([command, "--help"]) == 0
        text = capsys.readouterr().out
        assert "usage: stoker" in text
        if command in ("train", "bench", "preview"):
            assert "(default:" in text, text
