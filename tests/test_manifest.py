"""Tests for audioclf.data.manifest: the three descriptions of a data set, CSV quirks, common data sets' own
metadata and name lookup."""

import os
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from audioclf.data.manifest import (ManifestError, from_csv, from_folders, from_pattern,
                                    load_manifest)
from audioclf.data.splits import kfold, label_matrix, make_split
from tones import FREQS, GROUP_PATTERN, SPEAKERS, SR, tone, write_csv, write_tone_set


# ------------------------------------------------------------------------------------ manifests


def test_three_descriptions_agree(tone_set, tmp_path):
    root, rows = tone_set
    folder = from_folders(root)
    csv_path = write_csv(root / "manifest.csv", ["path", "label", "group"], [list(r) for r in rows])
    table = from_csv(csv_path)
    pattern = from_pattern(root, GROUP_PATTERN)
    as_pairs = lambda m: {(it.path, it.labels) for it in m.items}  # noqa: E731
    as_triples = lambda m: {(it.path, it.labels, it.group) for it in m.items}  # noqa: E731
    expected = {(str(root.absolute() / rel), (label,)) for rel, label, _ in rows}
    assert as_pairs(folder) == as_pairs(table) == as_pairs(pattern) == expected
    assert as_triples(table) == as_triples(pattern)
    assert len(folder.items) == len(table.items) == len(pattern.items) == len(rows)
    for m in (folder, table, pattern):
        assert m.labels == ["high", "low", "mid"]
        assert not m.multilabel and not m.skipped
        assert m.class_counts() == Counter({"low": 12, "mid": 12, "high": 12})
    assert not folder.has_groups and table.has_groups and pattern.has_groups
    assert (folder.source, table.source, pattern.source) == ("folder", "csv", "pattern")
    # load_manifest dispatch: a folder holding manifest.csv uses it; --pattern wins over it
    assert load_manifest(root).source == "csv"
    assert load_manifest(csv_path).source == "csv"
    assert load_manifest(root, GROUP_PATTERN).source == "pattern"
    os.remove(csv_path)
    assert load_manifest(root).source == "folder"


def test_descriptions_agree_through_symlinks(tmp_path):
    """Data sets often live behind symlinks (a linked class folder, a linked root)."""
    real = tmp_path / "real"
    rows = write_tone_set(real)
    linked = tmp_path / "linked"
    linked.mkdir()
    for label in FREQS:
        os.symlink(real / label, linked / label, target_is_directory=True)
    csv_path = write_csv(linked / "manifest.csv", ["path", "label", "group"], [list(r) for r in rows])
    table = from_csv(csv_path)
    assert not table.skipped, table.skipped[:3]
    folder, pattern = from_folders(linked), from_pattern(linked, GROUP_PATTERN)
    pairs = lambda m: {(it.path, it.labels) for it in m.items}  # noqa: E731
    assert pairs(table) == pairs(folder) == pairs(pattern)
    assert len(table.items) == len(rows)


def test_pattern_skips_and_reports_non_matching_files(tone_set):
    root, rows = tone_set
    sf.write(root / "low" / "Alice-9.wav", tone(300), SR)
    sf.write(root / "mid" / "notes_x.wav", tone(900), SR)
    sf.write(root / "stray.wav", tone(900), SR)
    (root / "low" / "readme.txt").write_text("not audio")
    m = from_pattern(root, GROUP_PATTERN)
    assert len(m.items) == len(rows)
    skipped = dict(m.skipped)
    assert set(skipped) == {str(root / "low" / "Alice-9.wav"), str(root / "mid" / "notes_x.wav"),
                            str(root / "stray.wav")}
    assert all("does not match" in reason for reason in skipped.values())
    assert {it.group for it in m.items} == set(SPEAKERS)
    # class folders: the stray file is skipped, the others are items
    folder = from_folders(root)
    assert dict(folder.skipped) == {str(root / "stray.wav"): "not inside a class folder"}
    assert len(folder.items) == len(rows) + 2


def test_pattern_errors(tone_set):
    root, _ = tone_set
    with pytest.raises(ManifestError, match="label"):
        from_pattern(root, r"(?P<group>[a-z]+)_\d+")
    with pytest.raises(ManifestError, match="bad --pattern"):
        from_pattern(root, r"(?P<label>[")
    with pytest.raises(ManifestError, match="no usable audio files"):
        from_pattern(root, r"(?P<label>nothing_matches_this)")


def test_fold_pattern(tmp_path):
    root = tmp_path / "esc"
    expected = set()
    for label, freq in FREQS.items():
        (root / label).mkdir(parents=True)
        for fold in (1, 2, 3):
            for n in range(2):
                name = f"{label}/{fold}-{n}{label[0]}.wav"
                sf.write(root / name, tone(freq), SR)
                expected.add((str(root.absolute() / name), label, str(fold)))
    m = from_pattern(root, r"(?P<label>[^/]+)/(?P<fold>\d+)-")
    assert {(it.path, it.labels[0], it.fold) for it in m.items} == expected
    assert m.folds == ["1", "2", "3"]
    split = make_split(m, test_fold="2")
    assert {m.items[i].fold for i in split.test} == {"2"}
    assert len(split.test) == 6
    assert "2" not in {m.items[i].fold for i in split.train + split.val}
    folds = kfold(m, k=5)
    assert len(folds) == 3  # declared folds win over k
    assert [{m.items[i].fold for i in f} for f in folds] == [{"1"}, {"2"}, {"3"}]


def test_multilabel_csv(tone_set):
    root, rows = tone_set
    table = [[rows[0][0], "low;noise"], [rows[1][0], " low ; low "], [rows[2][0], "mid"]]
    m = from_csv(write_csv(root / "ml.csv", ["path", "label"], table))
    assert [it.labels for it in m.items] == [("low", "noise"), ("low",), ("mid",)]
    assert m.multilabel and m.labels == ["low", "mid", "noise"]
    y = label_matrix(m)
    np.testing.assert_array_equal(y, [[1, 0, 1], [1, 0, 0], [0, 1, 0]])


def test_csv_missing_column_names_the_columns(tone_set):
    root, rows = tone_set
    path = write_csv(root / "bad.csv", ["blob", "label"], [[rows[0][0], "low"]])
    with pytest.raises(ManifestError) as info:
        from_csv(path)
    msg = str(info.value)
    assert "missing column(s) path" in msg and "path,label" in msg and "blob,label" in msg and "file_name" in msg
    path = write_csv(root / "bad2.csv", ["path", "tag"], [[rows[0][0], "low"]])
    with pytest.raises(ManifestError, match="missing column.*label"):
        from_csv(path)
    empty = root / "empty.csv"
    empty.write_text("")
    with pytest.raises(ManifestError, match="no header"):
        from_csv(empty)


def test_csv_skips_bad_rows_with_reasons(tone_set, tmp_path):
    root, rows = tone_set
    outside = tmp_path / "outside.wav"
    sf.write(outside, tone(300), SR)
    table = [
        [rows[0][0], "low"],
        ["../outside.wav", "low"],                 # escapes the manifest's folder
        ["low/../../outside.wav", "low"],          # escapes too, less obviously
        [rows[0][0], "low"],                       # duplicate
        ["./" + rows[0][0], "mid"],                # the same file again, spelled differently
        ["low/missing.wav", "low"],                # not there
        [rows[1][0], ""],                          # no label
        ["", "low"],                               # no path
        [str(outside), "mid"],                     # absolute paths are taken as they are
        ["low/../" + rows[2][0], "low"],           # ../ that stays inside is fine
    ]
    m = from_csv(write_csv(root / "m.csv", ["path", "label"], table))
    assert [it.path for it in m.items] == [str(root / rows[0][0]), str(outside), str(root / rows[2][0])]
    reasons = [reason for _, reason in m.skipped]
    assert len(m.skipped) == 7
    assert sum("escapes the manifest's folder" in r for r in reasons) == 2
    assert sum("duplicate path" in r for r in reasons) == 2
    assert sum("file not found" in r for r in reasons) == 1
    assert sum("empty label" in r for r in reasons) == 1
    assert sum("empty path" in r for r in reasons) == 1
    # reasons say where: file and line
    assert any(r.startswith(f"{root / 'm.csv'}:3") for r in reasons)
    skipped = dict(m.skipped)
    assert skipped["../outside.wav"].endswith("path escapes the manifest's folder")


def test_csv_rows_with_extra_or_missing_cells(tone_set):
    root, rows = tone_set
    path = root / "ragged.csv"
    path.write_text(f"path,label,group\n{rows[0][0]},low,alice,unexpected,cells\n{rows[1][0]},low\n")
    m = from_csv(path)
    assert [(it.labels, it.group) for it in m.items] == [(("low",), "alice"), (("low",), None)]


def test_csv_relative_to_its_folder_and_groups_folds(tone_set, monkeypatch, tmp_path):
    root, rows = tone_set
    write_csv(root / "m.csv", ["path", "label", "group", "fold"],
              [[rel, label, speaker, str(SPEAKERS.index(speaker))] for rel, label, speaker in rows])
    monkeypatch.chdir(tmp_path)
    m = from_csv(Path("tones") / "m.csv")
    assert all(os.path.isabs(it.path) and os.path.isfile(it.path) for it in m.items)
    assert m.folds == ["0", "1", "2", "3"]
    assert {it.group for it in m.items} == set(SPEAKERS)


def test_all_rows_bad_is_a_manifest_error(tone_set):
    root, _ = tone_set
    path = write_csv(root / "m.csv", ["path", "label"], [["nope.wav", "low"], ["nope2.wav", "mid"]])
    with pytest.raises(ManifestError, match="no usable audio files.*2 x file not found"):
        from_csv(path)
    with pytest.raises(ManifestError, match="no such file"):
        load_manifest(root / "absent")
    (root / "x.txt").write_text("")
    with pytest.raises(ManifestError, match="expected a folder or a .csv"):
        load_manifest(root / "x.txt")




# ------------------------------------------------------------------------------------ common data sets' metadata


def _write(path: Path, freq: float) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, tone(freq), SR)


def test_esc50_layout_reads_its_metadata_csv(tmp_path, capsys):
    """ESC-50: ``audio/*.wav`` and ``meta/esc50.csv`` (filename,fold,target,category,esc10,src_file,take): labels
    from ``category`` (not the numeric ``target``), groups from ``src_file``, folds from ``fold``; the folder
    itself resolves to that CSV."""
    root = tmp_path / "ESC-50-master"
    rows = []
    for i, (category, freq) in enumerate([("dog", 300.0), ("rain", 900.0)]):
        for src in range(3):
            for take in "AB":
                name = f"{src + 1}-{100 + 10 * i + src}-{take}-{i}.wav"
                _write(root / "audio" / name, freq * (1 + 0.01 * src))
                rows.append([name, str(src + 1), str(i), category, "False", str(100 + 10 * i + src), take])
    write_csv(root / "meta" / "esc50.csv" if (root / "meta").mkdir() is None else None,
              ["filename", "fold", "target", "category", "esc10", "src_file", "take"], rows)
    m = from_csv(root / "meta" / "esc50.csv")
    assert m.labels == ["dog", "rain"] and len(m.items) == 12 and not m.skipped
    assert all(Path(it.path).parent == root / "audio" for it in m.items)
    assert m.folds == ["1", "2", "3"] and m.items[0].group == "100" and m.items[1].group == "100"
    err = capsys.readouterr().err
    assert "label from column 'category'" in err and "12 file(s) found by name under" in err
    assert [it.path for it in load_manifest(root).items] == [it.path for it in m.items]
    assert "using the metadata file" in capsys.readouterr().err


def test_urbansound8k_layout_and_fold_folders(tmp_path):
    """UrbanSound8K: ``audio/fold1..N/`` and ``metadata/UrbanSound8K.csv``; ``class`` wins over ``classID``,
    ``fsID`` is the group. Pointed at ``audio/`` alone, whose sub-folders are folds, it refuses to take the folds
    for classes."""
    root = tmp_path / "UrbanSound8K"
    rows = []
    for fold in (1, 2):
        for cls, (name, freq) in enumerate([("siren", 300.0), ("drilling", 900.0)]):
            fname = f"{1000 + fold}-{cls}-0-0.wav"
            _write(root / "audio" / f"fold{fold}" / fname, freq)
            rows.append([fname, str(1000 + fold), "0", "4", "1", str(fold), str(cls), name])
    (root / "metadata").mkdir()
    write_csv(root / "metadata" / "UrbanSound8K.csv",
              ["slice_file_name", "fsID", "start", "end", "salience", "fold", "classID", "class"], rows)
    m = load_manifest(root)
    assert m.labels == ["drilling", "siren"] and m.folds == ["1", "2"]
    assert {(Path(it.path).parent.name, it.fold, it.group) for it in m.items} == {
        ("fold1", "1", "1001"), ("fold2", "2", "1002")}
    with pytest.raises(ManifestError, match="look like folds, not classes"):
        load_manifest(root / "audio")


def test_fsd50k_style_labels_and_extensionless_names(tmp_path):
    """``fname,labels``: names without an extension match by stem; a ``labels`` cell separates with commas."""
    root = tmp_path / "fsd"
    _write(root / "dev_audio" / "64760.wav", 300.0)
    _write(root / "dev_audio" / "16399.wav", 900.0)
    (root / "ground_truth").mkdir()
    write_csv(root / "ground_truth" / "dev.csv", ["fname", "labels", "mids", "split"],
              [["64760", "Electric_guitar,Guitar,Music", "/m/a,/m/b,/m/c", "train"],
               ["16399", "Music", "/m/c", "val"]])
    m = from_csv(root / "ground_truth" / "dev.csv")
    assert [it.labels for it in m.items] == [("Electric_guitar", "Guitar", "Music"), ("Music",)]
    assert m.multilabel and Path(m.items[0].path).name == "64760.wav"


def test_name_lookup_skips_ambiguous_names_and_stays_in_the_data_set(tmp_path):
    root = tmp_path / "set"
    for sub in ("a", "b"):
        _write(root / "audio" / sub / "same.wav", 300.0)
    _write(root / "audio" / "a" / "one.wav", 300.0)
    (root / "meta").mkdir()
    m = from_csv(write_csv(root / "meta" / "m.csv", ["file_name", "label"],
                           [["same.wav", "x"], ["one.wav", "y"], ["none.wav", "y"]]))
    assert [Path(it.path).name for it in m.items] == ["one.wav"]
    reasons = sorted(reason.split(": ", 1)[1] for _, reason in m.skipped)
    assert reasons == ["2 files named 'same.wav' under " + str(root), "file not found"]
    # a CSV beside its audio only looks below itself: a file of that name one level up is not taken
    _write(tmp_path / "outside.wav", 300.0)
    m = from_csv(write_csv(root / "audio" / "m.csv", ["path", "label"], [["outside.wav", "x"], ["one.wav", "y"]]))
    assert [Path(it.path).name for it in m.items] == ["one.wav"] and "file not found" in m.skipped[0][1]


def test_name_lookup_gives_up_after_a_bounded_walk(tmp_path, monkeypatch):
    from audioclf.data import manifest

    monkeypatch.setattr(manifest._NameIndex, "MAX_FOLDERS", 3)
    root = tmp_path / "set"
    for i in range(6):
        _write(root / "audio" / f"d{i}" / f"{i}.wav", 300.0)
    (root / "meta").mkdir()
    with pytest.raises(ManifestError, match="the search by name stopped after 3 folders"):
        from_csv(write_csv(root / "meta" / "m.csv", ["file_name", "label"], [["5.wav", "x"]]))




def test_one_class_is_refused_for_training_and_a_lone_audio_folder_is_entered(tmp_path):
    """A folder whose only audio folder holds the class folders (GTZAN's ``Data/genres_original/<genre>/``) is
    read from there; one class alone cannot train."""
    root = tmp_path / "Data"
    for genre, freq in (("blues", 300.0), ("jazz", 900.0)):
        _write(root / "genres_original" / genre / f"{genre}.00000.wav", freq)
    (root / "images_original").mkdir()
    m = load_manifest(root)
    assert m.labels == ["blues", "jazz"] and m.require_classes() is m
    one = load_manifest(root / "genres_original" / "blues" / "..", pattern=r"(?P<label>blues)/")
    with pytest.raises(ManifestError, match="only the class 'blues' in 1 files; a classifier needs two or more"):
        one.require_classes()


def test_csv_saved_by_excel_with_a_byte_order_mark(tone_set):
    root, rows = tone_set
    path = root / "bom.csv"
    path.write_text("path,label\n" + "".join(f"{rel},{label}\n" for rel, label, _ in rows[:3]), encoding="utf-8-sig")
    assert path.read_bytes().startswith(b"\xef\xbb\xbf")
    assert [it.labels for it in from_csv(path).items] == [("low",)] * 3


@pytest.mark.parametrize("sep", [";", "\t"])
def test_csv_with_semicolons_or_tabs(tone_set, sep):
    """A European Excel export (``;``) or a TSV: the header line tells the delimiter."""
    root, rows = tone_set
    path = root / "m.csv"
    path.write_text(f"path{sep}label{sep}group\n" + "".join(f"{rel}{sep}{label}{sep}{g}\n" for rel, label, g in rows[:3]))
    m = from_csv(path)
    assert [(it.labels, it.group) for it in m.items] == [(("low",), g) for _, _, g in rows[:3]]


def test_folder_manifests_list_files_in_sorted_order(tmp_path):
    """Splits follow the manifest's order, so it must not depend on the file system's directory order."""
    names = [f"{i:02d}.wav" for i in range(12)]
    for name in reversed(names):  # created last to first
        _write(tmp_path / "a" / name, 300.0)
        _write(tmp_path / "b" / name, 900.0)
    m = from_folders(tmp_path)
    assert [Path(it.path).name for it in m.items] == names * 2


# ------------------------------------------------------------------------------------ labels in file names


def _emotion_set(root: Path, layout: str) -> list[str]:
    """Tones named like emotional-speech sets: CREMA-D (``1001_DFA_ANG_XX.wav`` flat in ``AudioWAV/``) or RAVDESS
    (``Actor_01/03-01-05-01-01-02-01.wav``); the emotion decides the tone. Returns the relative paths."""
    made = []
    for actor in range(1, 4):
        for i, (emotion, code, freq) in enumerate([("ANG", "05", 300.0), ("HAP", "03", 600.0), ("SAD", "04", 900.0)]):
            for take in (1, 2):
                rel = (f"AudioWAV/{1000 + actor}_{['DFA', 'IEO'][take - 1]}_{emotion}_XX.wav" if layout == "crema" else
                       f"Actor_{actor:02d}/03-01-{code}-01-01-{take:02d}-{actor:02d}.wav")
                _write(root / rel, freq * (1 + 0.01 * actor))
                made.append(rel)
    return made


def test_a_template_names_the_fields_of_file_names(tmp_path):
    """``--pattern '{group}_{}_{label}_{}'``: each ``{name}`` captures the text between its separators, ``{}``
    skips it, the extension is left out; a name with more fields does not match and is reported."""
    root = tmp_path / "crema"
    made = _emotion_set(root, "crema")
    _write(root / "AudioWAV" / "1001_DFA_ANG_XX_extra.wav", 300.0)
    m = load_manifest(root, "{group}_{}_{label}_{}")
    assert m.source == "pattern" and len(m.items) == len(made) and m.labels == ["ANG", "HAP", "SAD"]
    assert {it.group for it in m.items} == {"1001", "1002", "1003"}
    assert [Path(p).name for p, _ in m.skipped] == ["1001_DFA_ANG_XX_extra.wav"]
    assert [it.path for it in load_manifest(root, "{group}_{}_{label}_{}.wav").items] == [it.path for it in m.items]
    # a folder in the template, and '-' separators: RAVDESS's emotion is the third field, the actor the folder
    ravdess = tmp_path / "ravdess"
    _emotion_set(ravdess, "ravdess")
    r = load_manifest(ravdess, "{group}/{}-{}-{label}-{}-{}-{}-{}")
    assert r.labels == ["03", "04", "05"] and {it.group for it in r.items} == {"Actor_01", "Actor_02", "Actor_03"}
    assert all(Path(it.path).name.split("-")[2] == it.labels[0] for it in r.items)
    with pytest.raises(ManifestError, match=r"needs a named group \(\?P<label>...\), or \{label\}"):
        load_manifest(root, "{group}_{}")


@pytest.mark.parametrize("layout", ["flat", "one folder"])
def test_labels_in_file_names_get_a_hint_that_works(tmp_path, layout):
    """Files outside class folders (CREMA-D flat, or all in one folder) are refused with what their names hold
    and a template; that template, with ``{label}`` moved to the emotion's field, reads the set."""
    root = tmp_path / "crema"
    _emotion_set(root, "crema")
    if layout == "flat":
        for f in (root / "AudioWAV").iterdir():
            f.rename(root / f.name)
        (root / "AudioWAV").rmdir()
    with pytest.raises(ManifestError) as e:
        load_manifest(root).require_classes()
    message = str(e.value)
    assert "\n" not in message
    assert ("not inside a class folder" if layout == "flat" else "only the class 'AudioWAV'") in message
    assert ("the file names are 4 fields separated by '_' (1001_DFA_ANG_XX.wav; they take 3, 2, 3 and 1 distinct "
            "values)") in message and "e.g. --pattern '{label}_{}_{}_{}' (field 1)" in message
    example = message.split("--pattern '")[-1].split("'")[0]
    assert load_manifest(root, example).labels == ["1001", "1002", "1003"]  # the example as printed reads the set
    assert load_manifest(root, example.replace("{label}", "{group}").replace("_{}_{}_", "_{}_{label}_")).labels == [
        "ANG", "HAP", "SAD"]


def test_numbered_class_folders_get_a_note(tmp_path, capsys):
    """Class folders that differ only in a number after one word (RAVDESS's ``Actor_01`` ...) are read as classes,
    with a note (once) that they look like speakers and what the file names hold; word-named or digit-named classes
    get none."""
    _emotion_set(tmp_path / "ravdess", "ravdess")
    assert load_manifest(tmp_path / "ravdess").labels == ["Actor_01", "Actor_02", "Actor_03"]
    err = capsys.readouterr().err
    assert "note: the class folders Actor_01 ... Actor_03 differ only in a number" in err
    assert "e.g. --pattern '{}-{}-{label}-{}-{}-{}-{}' (field 3)" in err
    load_manifest(tmp_path / "ravdess")  # a command loads it again for each run it trains: said once a process
    assert "differ only in a number" not in capsys.readouterr().err
    for names in (["dog", "cat", "bird"], ["0", "1", "2"], ["class_a", "class_b", "class_c"]):
        for name in names:
            _write(tmp_path / names[0] / name / "x.wav", 300.0)
        load_manifest(tmp_path / names[0])
        assert "differ only in a number" not in capsys.readouterr().err
