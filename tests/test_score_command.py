"""`refseg score` end to end on the tiny benchmarks: output, exit codes, errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from builders import tiny_benchmark

from refseg.cli import main
from refseg.data.load import load_split
from refseg.data.masks import empty_rle
from refseg.io.predictions import write_predictions
from test_metrics_scorer import empty_predictions, ground_truth_predictions


@pytest.fixture
def grefcoco(tmp_path):
    data = tiny_benchmark("grefcoco", tmp_path / "grefcoco")
    return data, load_split("grefcoco", data, "train")


def _score(capsys, *args):
    code = main(["score", *map(str, args)])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_scores_a_file_writes_json_and_prints_a_table(grefcoco, tmp_path, capsys):
    data, ds = grefcoco
    write_predictions(tmp_path / "p.jsonl", ground_truth_predictions(ds))
    code, out, err = _score(capsys, "--format", "grefcoco", "--data", data, "--split", "train",
                            "--predictions", tmp_path / "p.jsonl", "--out", tmp_path / "m.json")
    assert code == 0 and err == ""
    result = json.loads((tmp_path / "m.json").read_text())
    assert list(result) == ["cIoU", "gIoU", "N-acc", "T-acc", "Pr@0.7", "Pr@0.8", "Pr@0.9",
                            "GREC", "protocol", "counts", "warnings"]
    assert result["GREC"] == {"F1score": 100.0, "N-acc": 100.0, "T-acc": 100.0}
    assert out.splitlines()[0] == "grefcoco train: 3 sentences (2 target, 1 no-target)"
    assert "  cIoU         100.00" in out.splitlines()


def test_warnings_go_to_stderr_and_json(grefcoco, tmp_path, capsys):
    data, ds = grefcoco
    write_predictions(tmp_path / "p.json", empty_predictions(ds))
    code, out, err = _score(capsys, "--format", "grefcoco", "--data", data, "--split", "train",
                            "--predictions", tmp_path / "p.json", "--out", tmp_path / "m.json")
    assert code == 0
    assert err.startswith("refseg score: warning: GRES: T-acc is 0")
    assert len(json.loads((tmp_path / "m.json").read_text())["warnings"]) == 2


def test_options_reach_the_protocol(tmp_path, capsys):
    data = tiny_benchmark("refcoco", tmp_path / "refcoco")
    ds = load_split("refcoco", data, "val", split_by="unc")
    preds = ground_truth_predictions(ds)[1:]
    write_predictions(tmp_path / "p.json", preds)
    code, out, _ = _score(capsys, "--format", "refcoco", "--data", data, "--split-by", "unc",
                          "--split", "val", "--predictions", tmp_path / "p.json",
                          "--eval-size", 8, "--allow-missing", "--out", tmp_path / "m.json")
    assert code == 0
    result = json.loads((tmp_path / "m.json").read_text())
    assert result["protocol"]["eval_size"] == 8 and result["counts"]["missing"] == 1
    assert result["mIoU"] == 50.0 and result["REC Pr@0.5"] == 50.0
    assert "1 without prediction, scored as empty" in out


@pytest.mark.parametrize("edit, message", [
    (lambda recs: recs[:-1],
     "1 of 3 sentences of grefcoco split 'train' have no prediction: sent_id 3"),
    (lambda recs: recs + [dict(recs[0], sent_id=77)], "sent_id 77: not in grefcoco split 'train'"),
    (lambda recs: recs + [recs[0]], "sent_id 1: duplicate sent_id"),
    (lambda recs: [dict(recs[0], mask={"size": [20, 30], "counts": "0"})] + recs[1:],
     "sent_id 1: mask: malformed RLE counts"),
    (lambda recs: [dict(recs[0], mask=empty_rle(30, 20))] + recs[1:],
     "sent_id 1: mask: size [30, 20] but image 1 is [20, 30]"),
])
def test_bad_predictions_exit_2_with_one_line(grefcoco, tmp_path, capsys, edit, message):
    data, ds = grefcoco
    write_predictions(tmp_path / "p.json", ground_truth_predictions(ds))
    records = json.loads((tmp_path / "p.json").read_text())
    (tmp_path / "p.json").write_text(json.dumps(edit(records)))
    code, out, err = _score(capsys, "--format", "grefcoco", "--data", data, "--split", "train",
                            "--predictions", tmp_path / "p.json")
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith(f"refseg score: error: {tmp_path / 'p.json'}: ")
    assert message in err


def test_bad_data_and_options(tmp_path, capsys):
    write_predictions(tmp_path / "p.json", [])
    code, _, err = _score(capsys, "--format", "grefcoco", "--data", tmp_path / "none",
                          "--split", "val", "--predictions", tmp_path / "p.json")
    assert code == 2 and "no such folder" in err
    for size in ("0", "48000"):  # a side of 48000 would resize each mask to 2.3 G pixels
        with pytest.raises(SystemExit):
            main(["score", "--format", "grefcoco", "--data", str(tmp_path), "--split", "val",
                  "--predictions", "p.json", "--eval-size", size])
        assert "--eval-size: expected a side of 1 to 8192 pixels" in capsys.readouterr().err


def test_an_unwritable_out_is_refused_before_scoring(grefcoco, tmp_path, capsys):
    write_predictions(tmp_path / "p.json", [])
    (tmp_path / "folder").mkdir()
    (tmp_path / "file").write_text("")
    args = ["--format", "grefcoco", "--data", grefcoco[0], "--split", "val",
            "--predictions", tmp_path / "p.json", "--allow-missing"]
    code, out, err = _score(capsys, *args, "--out", tmp_path / "folder")
    assert code == 2 and "folder: is a folder (an output file name is expected)" in err
    assert out == ""  # refused before the (possibly long) scoring
    code, _, err = _score(capsys, *args, "--out", tmp_path / "file" / "m.json")
    assert code == 2 and f"cannot be written, {tmp_path / 'file'} is a file" in err


def test_an_out_naming_the_predictions_file_is_refused(grefcoco, tmp_path, capsys,
                                                        monkeypatch):
    write_predictions(tmp_path / "p.json", [])
    before = (tmp_path / "p.json").read_bytes()
    (tmp_path / "sub").mkdir()
    monkeypatch.chdir(tmp_path / "sub")
    args = ["--format", "grefcoco", "--data", grefcoco[0], "--split", "val",
            "--predictions", tmp_path / "p.json", "--allow-missing"]
    for out in (tmp_path / "p.json", "../p.json"):
        code, text, err = _score(capsys, *args, "--out", out)
        assert code == 2 and "--out and --predictions name the same file" in err
        assert text == "" and (tmp_path / "p.json").read_bytes() == before


def test_score_does_not_import_torch(grefcoco, tmp_path):
    data, ds = grefcoco
    write_predictions(tmp_path / "p.json", ground_truth_predictions(ds))
    code = (
        "import sys; from refseg.cli import main; "
        f"rc = main(['score', '--format', 'grefcoco', '--data', {str(data)!r}, '--split', "
        f"'train', '--predictions', {str(tmp_path / 'p.json')!r}]); "
        "assert rc == 0; assert 'torch' not in sys.modules, 'torch imported'"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_an_os_error_the_command_meets_is_a_one_line_error(grefcoco, tmp_path, capsys,
                                                           monkeypatch):
    import refseg.commands.score as score_command

    def run(args):  # e.g. a disk that fills up while the metrics are written
        raise OSError(28, "No space left on device", str(tmp_path / "m.json"))

    monkeypatch.setattr(score_command, "run", run)
    code, _, err = _score(capsys, "--format", "grefcoco", "--data", grefcoco[0], "--split", "val",
                          "--predictions", tmp_path / "p.json")
    assert code == 2 and err.count("\n") == 1
    assert err.startswith("refseg score: error: [Errno 28] No space left on device: ")
