"""The NUS-WIDE layout reader on a hand-written fixture with every fault of the real release."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

from labelspace import cli
from labelspace.data.nuswide import ingest, read_label_sets, read_manifest, read_nuswide_layout, report_path

LABELS = "Groundtruth/TrainTestLabels"


def _jpeg(seed: int, size=(32, 24)) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def _write(path, content: str | bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content.encode() if isinstance(content, str) else content)


@pytest.fixture
def release(tmp_path):
    """A 3-concept dataset written the way the real release is, faults included."""
    root = tmp_path / "nus-wide"
    _write(root / "ConceptsList/Concepts81.txt", "lake\r\nsky\r\nperson\r\n\r\n")  # CRLF, blank trailing line
    train = [
        "lake\\0001_100.jpg",     # ok: lake, sky
        "lake\\0002_101.jpg  ",   # trailing spaces; stray `2` in the lake file -> sky only
        "sky\\0003_102.jpg",      # missing file; `x` in the person file
        "sky\\0004_103.jpg",      # zero-byte file
        "person\\0005_104.jpg",   # truncated JPEG
        "person\\0006_105.jpg",   # no label at all, kept
        "person\\0007_106.jpg",   # `-1` in the lake file -> person only
    ]
    _write(root / "ImageList/TrainImagelist.txt", "\r\n".join(train) + "\r\n\r\n\r\n")
    _write(root / LABELS / "Labels_lake_Train.txt", "1\r\n2\r\n0\r\n0\r\n0\r\n0\r\n-1\r\n")
    _write(root / LABELS / "Labels_sky_Train.txt", "1\n1\n1\n0\n0\n0\n0\n")
    _write(root / LABELS / "Labels_person_Train.txt", "0 \n0\t\nx\n0\n1\n0\n1\n\n")
    test = ["sky\\0008_107.jpg", "lake\\0009_108.jpg", "sky\\0008_107.jpg"]  # the last lists an image twice
    _write(root / "ImageList/TestImagelist.txt", "\n".join(test) + "\n")
    _write(root / LABELS / "Labels_lake_Test.txt", "0\n1 \n0\n")
    _write(root / LABELS / "Labels_sky_Test.txt", "1\r\n0\r\n1\r\n")
    _write(root / LABELS / "Labels_person_Test.txt", "0\n0\n0")  # no final line end
    for i, name in enumerate(["lake/0001_100", "lake/0002_101", "person/0006_105", "person/0007_106",
                              "sky/0008_107", "lake/0009_108"]):
        _write(root / f"Flickr/{name}.jpg", _jpeg(i))
    _write(root / "Flickr/sky/0004_103.jpg", b"")
    _write(root / "Flickr/person/0005_104.jpg", _jpeg(9, size=(64, 64))[:600])
    return root


def test_every_fault_is_counted_and_the_good_rows_are_exact(release):
    manifest, report = read_nuswide_layout(release)

    assert manifest.to_dict("list") == {
        "image_id": ["0001_100", "0002_101", "0006_105", "0007_106", "0008_107", "0009_108"],
        "path": ["Flickr/lake/0001_100.jpg", "Flickr/lake/0002_101.jpg", "Flickr/person/0006_105.jpg",
                 "Flickr/person/0007_106.jpg", "Flickr/sky/0008_107.jpg", "Flickr/lake/0009_108.jpg"],
        "folder": ["lake", "lake", "person", "person", "sky", "lake"],
        "split": ["train"] * 4 + ["test"] * 2,
        "labels": [["lake", "sky"], ["sky"], [], ["person"], ["sky"], ["lake"]],
    }
    assert report["concepts"] == ["lake", "sky", "person"]
    expected = {"listed": 10, "ok": 6, "missing_file": 1, "undecodable": 1, "truncated": 1, "duplicate": 1,
                "no_labels": 1, "bad_label_values": 3, "blank_list_lines": 0}
    assert {k: report[k] for k in expected} == expected
    assert report["per_split"]["train"] == {"listed": 7, "ok": 4, "missing_file": 1, "undecodable": 1,
                                            "truncated": 1, "duplicate": 0, "no_labels": 1}
    assert report["bad_label_value_locations"] == [
        {"file": f"{LABELS}/Labels_lake_Train.txt", "line": 2, "value": "2"},
        {"file": f"{LABELS}/Labels_lake_Train.txt", "line": 7, "value": "-1"},
        {"file": f"{LABELS}/Labels_person_Train.txt", "line": 3, "value": "x"},
    ]
    assert report["dropped"] == {"missing_file": ["Flickr/sky/0003_102.jpg"],
                                 "undecodable": ["Flickr/sky/0004_103.jpg"],
                                 "truncated": ["Flickr/person/0005_104.jpg"],
                                 "duplicate": ["Flickr/sky/0008_107.jpg"]}


def test_without_verification_only_existence_is_checked(release):
    manifest, report = read_nuswide_layout(release, verify_images=False)
    assert (report["ok"], report["missing_file"], report["undecodable"], report["truncated"]) == (8, 1, 0, 0)
    assert "Flickr/person/0005_104.jpg" in set(manifest["path"])
    assert report["images_verified"] is False


def test_a_label_file_shorter_than_its_image_list_is_an_error_naming_both_lengths(release):
    _write(release / LABELS / "Labels_sky_Test.txt", "1\n0\n")
    with pytest.raises(ValueError, match=r"Labels_sky_Test\.txt has 2 lines but its image list .*TestImagelist\.txt has 3"):
        read_nuswide_layout(release)


def test_a_label_file_longer_than_its_image_list_is_an_error(release):
    _write(release / LABELS / "Labels_lake_Train.txt", "0\n" * 8)
    with pytest.raises(ValueError, match=r"Labels_lake_Train\.txt has 8 lines but .* has 7"):
        read_nuswide_layout(release)


def test_a_concept_without_label_file_is_an_error_naming_it(release):
    (release / LABELS / "Labels_person_Test.txt").unlink()
    with pytest.raises(FileNotFoundError, match=r"Labels_person_Test\.txt for concept 'person'"):
        read_nuswide_layout(release)


def test_a_folder_that_is_not_a_dataset_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="NUS-WIDE layout"):
        read_nuswide_layout(tmp_path)


def test_blank_lines_inside_an_image_list_keep_the_labels_aligned(release):
    _write(release / "ImageList/TestImagelist.txt", "sky\\0008_107.jpg\n\nlake\\0009_108.jpg\n")
    manifest, report = read_nuswide_layout(release)
    test = manifest[manifest["split"] == "test"]
    assert test["labels"].tolist() == [["sky"], ["sky"]]  # line 3 of the sky file belongs to 0009_108
    assert report["blank_list_lines"] == 1


def test_ingest_writes_the_manifest_with_its_concepts_and_the_report_beside_it(release, tmp_path):
    out = tmp_path / "manifests" / "nus.parquet"
    report = ingest(release, out)
    manifest, concepts = read_manifest(out)
    expected, _ = read_nuswide_layout(release)
    assert manifest.to_dict("list") == expected.to_dict("list")
    assert concepts == ["lake", "sky", "person"]
    assert report_path(out) == tmp_path / "manifests" / "nus.report.json"
    assert json.loads(report_path(out).read_text()) == report


def test_read_manifest_rejects_a_parquet_without_concepts(tmp_path):
    import pandas as pd

    path = tmp_path / "other.parquet"
    pd.DataFrame({"path": ["a.jpg"]}).to_parquet(path)
    with pytest.raises(ValueError, match="not written by labelspace ingest"):
        read_manifest(path)


def test_cli_ingest(release, tmp_path, capsys):
    out = tmp_path / "m.parquet"
    assert cli.main(["ingest", "--root", str(release), "--out", str(out), "--no-verify-images"]) == 0
    printed = capsys.readouterr().out
    assert "8 of 10 listed images kept (2 with no label)" in printed
    assert "3 stray label value(s)" in printed
    assert json.loads(report_path(out).read_text())["images_verified"] is False


# NUS-WIDE's zero-shot split: NUS_WID_Tags/TagList1k.txt (here 5 tags, 2 of them concepts), the
# release's tag matrices (tab-separated 0/1, a trailing tab, as shipped) and the concepts as unseen.
TAG_LIST = ["boat", "lake", "dog", "sky", "water"]
TRAIN_TAGS = ["1 1 0 0 0", "0 0 1 0 1", "1 0 0 0 0", "0 0 0 0 0", "0 0 0 0 0", "0 0 0 0 1", "0 0 0 0 0"]
TEST_TAGS = ["0 0 1 1 0", "0 0 0 0 0", "1 1 1 1 1"]
ZSL_LABELS = [["boat", "lake", "sky"], ["dog", "water", "sky"], ["water"], ["person"], ["dog", "sky"], ["lake"]]


def _tag_rows(rows: list[str]) -> str:
    return "".join(row.replace(" ", "\t") + "\t\r\n" for row in rows)


def test_the_zero_shot_split_adds_the_seen_tags_and_marks_the_concepts_unseen(release, tmp_path):
    _write(release / "NUS_WID_Tags/TagList1k.txt", "\n".join(TAG_LIST) + "\n")
    _write(release / "NUS_WID_Tags/Train_Tags1k.dat", _tag_rows(TRAIN_TAGS))
    _write(release / "NUS_WID_Tags/Test_Tags1k.dat", _tag_rows(TEST_TAGS))
    manifest, report = read_nuswide_layout(release, labels="nuswide-zsl")
    assert manifest["labels"].tolist() == ZSL_LABELS
    assert report["concepts"] == ["boat", "dog", "water", "lake", "sky", "person"]  # seen, then unseen
    assert report["label_sets"] == {"name": "nuswide-zsl", "seen": ["boat", "dog", "water"],
                                    "unseen": ["lake", "sky", "person"], "concepts_in_tag_list": 2,
                                    "seen_targets": "Train_Tags1k.dat, Test_Tags1k.dat"}
    assert report["ok"] == 6 and report["no_labels"] == 0
    ingest(release, tmp_path / "m.parquet", labels="nuswide-zsl")
    _, concepts = read_manifest(tmp_path / "m.parquet")
    assert concepts == report["concepts"]
    assert read_label_sets(tmp_path / "m.parquet")["unseen"] == ["lake", "sky", "person"]


def test_the_zero_shot_split_reads_alltags1k_through_the_whole_image_list(release):
    order = [3, 0, 7, 1, 2, 4, 5, 6, 8, 9]  # Imagelist.txt in another order than train + test
    train = (release / "ImageList/TrainImagelist.txt").read_text().split()
    test = ["sky\\0008_107.jpg", "lake\\0009_108.jpg", "other\\0010_109.jpg"]
    names, rows = train + test, TRAIN_TAGS + TEST_TAGS
    _write(release / "ImageList/Imagelist.txt", "\r\n".join(names[i] for i in order) + "\r\n")
    _write(release / "NUS_WID_Tags/TagList1k.txt", "\n".join(TAG_LIST) + "\n")
    _write(release / "NUS_WID_Tags/AllTags1k.txt", _tag_rows([rows[i] for i in order]))
    manifest, report = read_nuswide_layout(release, labels="nuswide-zsl")
    assert manifest["labels"].tolist() == ZSL_LABELS
    assert report["label_sets"]["seen_targets"] == "AllTags1k.txt by ImageList/Imagelist.txt"


def test_the_zero_shot_split_names_what_is_missing(release):
    with pytest.raises(FileNotFoundError, match="NUS_WID_Tags"):
        read_nuswide_layout(release, labels="nuswide-zsl")
    _write(release / "NUS_WID_Tags/TagList1k.txt", "\n".join(TAG_LIST) + "\n")
    _write(release / "NUS_WID_Tags/Train_Tags1k.dat", _tag_rows(TRAIN_TAGS[:-1]))
    _write(release / "NUS_WID_Tags/Test_Tags1k.dat", _tag_rows(TEST_TAGS))
    with pytest.raises(ValueError, match="6 rows but its image list has 7"):
        read_nuswide_layout(release, labels="nuswide-zsl")
    with pytest.raises(ValueError, match="labels must be one of"):
        read_nuswide_layout(release, labels="1k")


def test_the_default_label_set_is_the_concepts(release, tmp_path):
    ingest(release, tmp_path / "m.parquet")
    assert read_label_sets(tmp_path / "m.parquet") == {"name": "concepts", "seen": ["lake", "sky", "person"],
                                                       "unseen": []}


def _with_tags(release):
    _write(release / "NUS_WID_Tags/TagList1k.txt", "\n".join(TAG_LIST) + "\n")
    _write(release / "NUS_WID_Tags/Train_Tags1k.dat", _tag_rows(TRAIN_TAGS))
    _write(release / "NUS_WID_Tags/Test_Tags1k.dat", _tag_rows(TEST_TAGS))
    return release


def test_the_data_cache_keeps_each_label_set_of_one_data_version_apart(release, tmp_path):
    from labelspace.data.prepared import PreparedData

    _with_tags(release)
    common = dict(dataset=str(release), version="v1", image_size=16, cache_dir=str(tmp_path))
    concepts, zsl = PreparedData(**common), PreparedData(**common, labels="nuswide-zsl")
    assert concepts.folder != zsl.folder
    zsl.ensure()
    concepts.ensure()  # the concepts' cache next to it: neither overwrites the other
    assert zsl.manifest()[1] == ["boat", "dog", "water", "lake", "sky", "person"]
    assert zsl.manifest()[0]["labels"].tolist() == ZSL_LABELS and zsl.unseen_labels() == ["lake", "sky", "person"]
    assert concepts.manifest()[1] == ["lake", "sky", "person"] and concepts.unseen_labels() == []
    assert np.array_equal(np.asarray(zsl.images()), np.asarray(concepts.images()))  # the same images, in order


def test_cli_ingest_reads_the_label_set_asked_for(release, tmp_path, capsys):
    _with_tags(release)
    out = tmp_path / "zsl.parquet"
    assert cli.main(["ingest", "--root", str(release), "--out", str(out), "--labels", "nuswide-zsl"]) == 0
    assert "6 concepts" in capsys.readouterr().out
    assert read_label_sets(out)["unseen"] == ["lake", "sky", "person"]


def test_a_project_folder_inside_an_untracked_dataset_does_not_change_its_fingerprint(release):
    from labelspace.data.dvc_versions import fingerprint_path

    before = fingerprint_path(release)
    _write(release / "zsl/params.yaml", "ingest: {}\n")
    _write(release / "zsl/mlflow/mlflow.db", b"a run")  # what a run with that project root writes
    assert fingerprint_path(release) == before
    _write(release / "Flickr/lake/0010_110.jpg", _jpeg(10))  # new data does change it
    assert fingerprint_path(release) != before
