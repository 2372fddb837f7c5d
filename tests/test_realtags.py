"""The real-tag dataset builder (labelspace.data.realtags): tiny packages in OpenMoji's and Tabler's
formats, and (slow) the installed openmoji and @tabler/icons packages themselves."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from labelspace import cli
from labelspace.data.nuswide import read_nuswide_layout
from labelspace.data.realtags import (
    PACKAGE_DIRS,
    build_tag_dataset,
    choose_concepts,
    label_statistics,
    read_openmoji,
    read_tabler,
    vector_lookup,
)
from labelspace.data.word_vectors import save_word_vectors

REPO = Path(__file__).resolve().parents[1]

# (hexcode, group, tags, openmoji_tags, skintone, base hexcode, fill colour)
EMOJIS = [
    ("1F600", "smileys-emotion", "face, happy, smile", "", "", "", "#ffcc00"),
    ("1F622", "smileys-emotion", "face, sad, tear", "", "", "", "#3366ff"),
    ("1F44D", "people-body", "hand, thumbs up, +1", "", "", "1F44D", "#ff9900"),
    ("1F44D-1F3FB", "people-body", "", "", "1", "1F44D", "#ffe0c0"),   # skin-tone variant: the base's tags
    ("1F1EB-1F1F7", "flags", "flag", "france, not", "", "", "#0000ff"),
    ("1F3F3", "flags", "flag", "", "", "", "#ffffff"),
    ("E000", "extras-openmoji", "", "", "", "", "#00ff00"),                # no tag at all: kept, unlabelled
    ("1F431", "animals-nature", "animal, cat, face", "kitty", "", "", "#ff0000"),
]
WORDS = ["face", "happy", "smile", "sad", "tear", "hand", "thumbs", "up", "flag", "france", "not", "animal", "cat"]


@pytest.fixture
def package(tmp_path):
    root = tmp_path / "openmoji"
    (root / "color" / "svg").mkdir(parents=True)
    (root / "data").mkdir()
    entries = []
    for order, (code, group, tags, own, tone, base, colour) in enumerate(EMOJIS, start=1):
        entries.append({"hexcode": code, "group": group, "subgroups": "x", "annotation": code.lower(),
                        "tags": tags, "openmoji_tags": own, "skintone": int(tone) if tone else "",
                        "skintone_base_hexcode": base, "order": order})
        (root / "color" / "svg" / f"{code}.svg").write_text(
            '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 72 72">'
            f'<rect x="12" y="12" width="48" height="48" fill="{colour}"/></svg>', encoding="utf-8")
    (root / "data" / "openmoji.json").write_text(json.dumps(entries), encoding="utf-8")
    return root


@pytest.fixture
def vectors(tmp_path):
    path = tmp_path / "vectors.bin"
    save_word_vectors(WORDS, np.random.default_rng(0).normal(size=(len(WORDS), 8)).astype(np.float32), path)
    return path


# (name, category, tags, styles): an -off variant of `lock`, `hand-off` (no base: an icon of its own),
# a number among the tags, an icon drawn only filled (never read).
ICONS = [
    ("lock", "System", ["security", "password", "secure"], ["outline", "filled"]),
    ("lock-off", "System", ["security", "password", "disabled", "off"], ["outline"]),
    ("key", "System", ["password", "security", "door"], ["outline"]),
    ("hand-off", "Gestures", ["hand", "stop", "reject"], ["outline"]),
    ("cat", "Animals", ["pet", "animal", 7], ["outline"]),
    ("dog", "Animals", ["pet", "animal", "puppy"], ["outline"]),
    ("circle", "Shapes", ["round", "geometry"], ["outline"]),
    ("blob", "Shapes", ["organic shape"], ["filled"]),
]
TABLER_WORDS = ["security", "password", "system", "animals", "pet", "animal", "hand", "shapes", "round"]


@pytest.fixture
def tabler_package(tmp_path):
    root = tmp_path / "tabler"
    entries = {}
    for name, category, tags, styles in ICONS:
        entries[name] = {"name": name, "category": category, "tags": tags,
                         "styles": {style: {"version": "1.0", "unicode": "ea01"} for style in styles}}
        for style in styles:  # a stroke drawing as Tabler writes them (stroke 6, not 2: a pixel fully black at 16 px)
            (root / "icons" / style).mkdir(parents=True, exist_ok=True)
            (root / "icons" / style / f"{name}.svg").write_text(
                '<svg xmlns="http://www.w3.org/2000/svg" width="24" height="24" viewBox="0 0 24 24" fill="none" '
                'stroke="currentColor" stroke-width="6"><path stroke="none" d="M0 0h24v24H0z" fill="none"/>'
                '<path d="M12 3v18"/></svg>', encoding="utf-8")
    (root / "icons.json").write_text(json.dumps(entries), encoding="utf-8")
    return root


def _build(package, vectors, out, **kwargs):
    options = {"n_concepts": 3, "image_size": 16, "seed": 0, "test_fraction": 0.4, **kwargs}
    return build_tag_dataset(out, package=package, has_vector=vector_lookup(vectors), **options)


def test_the_concept_rule_takes_the_most_frequent_words_with_a_vector_and_counts_the_rest():
    counts = {"face": 5, "flag": 5, "thumbs up": 9, "+1": 7, "not": 6, "kitty": 6, "cat": 2, "sad": 2, "tear": 1}
    concepts, report = choose_concepts(counts, lambda word: word != "kitty", 3)
    assert concepts == ["cat", "face", "flag"]  # 5, 5, then the tie 2/2 broken alphabetically
    skipped = report["skipped"]
    assert skipped["multi_word"]["most_frequent"] == [["thumbs up", 9]]
    assert skipped["not_a_word"]["most_frequent"] == [["+1", 7]]
    assert skipped["stop_word"]["most_frequent"] == [["not", 6]]
    assert skipped["no_vector"] == {"distinct_tags": 1, "tag_uses": 6, "at_or_above_cutoff": 1,
                                    "most_frequent": [["kitty", 6]]}
    with pytest.raises(ValueError, match="only 5 tags qualify"):
        choose_concepts(counts, lambda word: word != "kitty", 6)


def test_the_build_is_a_nuswide_layout_with_unlabelled_images_and_rendered_artwork(package, vectors, tmp_path):
    report = _build(package, vectors, tmp_path / "ds")
    manifest, ingest_report = read_nuswide_layout(tmp_path / "ds")
    assert ingest_report["concepts"] == report["concepts"] == ["animal", "face", "flag"]  # 3, 2, then 1s: alphabetical
    assert ingest_report["ok"] == len(manifest) == 7  # the skin-tone variant is left out by default
    labels = {row.image_id.split("_", 1)[1]: row.labels for row in manifest.itertuples()}
    assert labels == {"1F600": ["face"], "1F622": ["face"], "1F44D": [], "1F1EB-1F1F7": ["flag"],
                      "1F3F3": ["flag"], "E000": [], "1F431": ["animal", "face"]}
    assert ingest_report["no_labels"] == 2 and report["images_without_tags"] == 1  # tags, but none a concept
    assert sorted(manifest["split"].value_counts().to_dict().items()) == [("test", 3), ("train", 4)]
    cat = manifest[manifest["image_id"].str.endswith("1F431")].iloc[0]
    assert cat["path"].startswith("Flickr/animals-nature/")
    pixels = np.asarray(Image.open(tmp_path / "ds" / cat["path"]))
    assert pixels.shape == (16, 16, 3)
    assert tuple(pixels[8, 8]) == (255, 0, 0) and tuple(pixels[0, 0]) == (255, 255, 255)  # red square on white
    tags = (tmp_path / "ds" / "Tags" / "AllTags.txt").read_text(encoding="utf-8")
    assert "0001_1F431.png\tanimal, cat, face, kitty" in tags
    stats = report["statistics"]
    assert stats["images"] == 7 and stats["unlabelled"] == 2 and stats["most_frequent_concept"] == "face"
    assert stats["images_per_concept"] == {"face": 3, "flag": 2, "animal": 1}


def test_same_inputs_give_the_same_bytes_and_a_rebuild_replaces_the_folder(package, vectors, tmp_path):
    def files(root):
        return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}

    _build(package, vectors, tmp_path / "a")
    _build(package, vectors, tmp_path / "b")
    assert files(tmp_path / "a") == files(tmp_path / "b")
    _build(package, vectors, tmp_path / "a", n_concepts=2)
    assert not (tmp_path / "a" / "Groundtruth" / "TrainTestLabels" / "Labels_animal_Train.txt").exists()


def test_skin_tone_variants_carry_the_base_tags_and_share_its_split(package, vectors, tmp_path):
    images = {im.key: im for im in read_openmoji(package, skin_tones=True)}
    assert images["1F44D-1F3FB"].tags == images["1F44D"].tags and images["1F44D-1F3FB"].base == "1F44D"
    for seed in range(6):
        _build(package, vectors, tmp_path / "ds", variants=True, seed=seed)
        manifest, _ = read_nuswide_layout(tmp_path / "ds")
        splits = manifest[manifest["image_id"].str.contains("_1F44D")]["split"]
        assert len(splits) == 2 and splits.nunique() == 1


def test_a_missing_package_names_the_install_command(tmp_path, vectors):
    with pytest.raises(FileNotFoundError, match="make datasets"):
        _build(tmp_path / "nothing", vectors, tmp_path / "ds")
    with pytest.raises(FileNotFoundError, match="make datasets"):
        _build(tmp_path / "nothing", vectors, tmp_path / "ds", source="tabler")


def test_tabler_icons_are_outline_drawings_tagged_with_their_tags_and_category(tabler_package):
    images = {im.key: im for im in read_tabler(tabler_package)}
    assert sorted(images) == ["cat", "circle", "dog", "hand-off", "key", "lock"]  # no -off variant, no filled-only
    assert images["cat"].tags == ("7", "animal", "animals", "pet") and images["cat"].folder == "animals"
    assert images["hand-off"].base == "hand-off" and images["lock"].svg.parent.name == "outline"
    variants = {im.key: im for im in read_tabler(tabler_package, off_variants=True)}
    assert variants["lock-off"].base == "lock" and "disabled" in variants["lock-off"].tags


def test_tabler_build_draws_the_stroke_icons_black_on_white(tabler_package, tmp_path):
    vectors = tmp_path / "tabler-vectors.bin"
    save_word_vectors(TABLER_WORDS, np.random.default_rng(0).normal(size=(len(TABLER_WORDS), 8)).astype(np.float32),
                      vectors)
    report = _build(tabler_package, vectors, tmp_path / "ds", source="tabler", n_concepts=4)
    manifest, ingest_report = read_nuswide_layout(tmp_path / "ds")
    # password, security: 2 (lock, key); animal, pet: 2; then animals, system, ... 2 each: alphabetical
    assert report["concepts"] == ingest_report["concepts"] == ["animal", "animals", "password", "pet"]
    labels = {row.image_id.split("_", 1)[1]: row.labels for row in manifest.itertuples()}
    assert labels["cat"] == ["animal", "animals", "pet"] and labels["circle"] == [] and len(labels) == 6
    cat = manifest[manifest["image_id"].str.endswith("_cat")].iloc[0]
    assert cat["path"].startswith("Flickr/animals/")
    pixels = np.asarray(Image.open(tmp_path / "ds" / cat["path"]))
    assert pixels.shape == (16, 16, 3) and tuple(pixels[8, 8]) == (0, 0, 0)  # currentColor: a black stroke
    assert tuple(pixels[8, 2]) == (255, 255, 255)  # on white
    for seed in range(6):  # an -off variant sits in its base icon's split
        _build(tabler_package, vectors, tmp_path / "ds", source="tabler", n_concepts=4, variants=True, seed=seed)
        manifest, _ = read_nuswide_layout(tmp_path / "ds")
        splits = manifest[manifest["image_id"].str.contains(r"_lock(?:-off)?$")]["split"]
        assert len(splits) == 2 and splits.nunique() == 1


def test_max_images_keeps_a_seeded_draw_of_base_images_with_their_variants(tabler_package, tmp_path):
    vectors = tmp_path / "tabler-vectors.bin"
    save_word_vectors(TABLER_WORDS, np.ones((len(TABLER_WORDS), 8), np.float32), vectors)
    kept = set()
    for seed in range(8):
        report = _build(tabler_package, vectors, tmp_path / "ds", source="tabler", n_concepts=1, variants=True,
                        max_images=3, seed=seed)
        manifest, _ = read_nuswide_layout(tmp_path / "ds")
        names = {image_id.split("_", 1)[1] for image_id in manifest["image_id"]}
        assert len(names - {"lock-off"}) == 3 and ("lock" in names) == ("lock-off" in names)
        assert report["images_available"] == 7 and report["statistics"]["images"] == len(names)
        kept.add(frozenset(names))
    assert len(kept) > 1  # the draw follows the seed
    with pytest.raises(ValueError, match="max_images"):
        _build(tabler_package, vectors, tmp_path / "ds", source="tabler", max_images=0)


def test_cli_build_tags_writes_the_dataset_and_its_report(package, vectors, tmp_path, capsys):
    out = tmp_path / "ds"
    assert cli.main(["build-tags", "--out", str(out), "--package", str(package), "--vectors", str(vectors),
                     "--n-concepts", "3", "--image-size", "16"]) == 0
    printed = capsys.readouterr().out
    assert "7 images (6 train, 1 test)" in printed and "unlabelled 2" in printed
    report = json.loads((tmp_path / "ds.report.json").read_text())
    assert report["concepts"] == ["animal", "face", "flag"] and report["vectors"] == str(vectors)


def test_the_datasets_params_files_are_valid_configs():
    from labelspace.config import load_config

    config = load_config(REPO / "datasets" / "openmoji" / "params.yaml")
    assert config.resolve(config.ingest.dataset) == REPO / "datasets" / "openmoji" / "data"
    assert config.resolve(config.vectors.path) == REPO / "data" / "vectors" / "glove-6b-50d.bin"
    zsl = load_config(REPO / "datasets" / "nuswide" / "zsl" / "params.yaml")  # NUS-WIDE's zero-shot protocol
    assert zsl.resolve(zsl.ingest.dataset) == REPO / "datasets" / "nuswide" and zsl.ingest.labels == "nuswide-zsl"
    assert zsl.resolve(zsl.vectors.path) == config.resolve(config.vectors.path)
    assert zsl.resolve(zsl.ingest.cache_dir) == REPO / "data" / "cache" and zsl.evaluate.zero_shot_labels == "auto"
    tabler = load_config(REPO / "datasets" / "tabler" / "params.yaml")
    assert tabler.resolve(tabler.ingest.dataset) == REPO / "datasets" / "tabler" / "data"
    assert tabler.resolve(tabler.vectors.path) == config.resolve(config.vectors.path)
    assert tabler.register.model_name == "labelspace-tabler"


@pytest.mark.slow
def test_openmoji_from_the_installed_package(tmp_path, small_vectors):
    """The real dataset, as the DVC stage builds it: >= 40 noisy, long-tailed concepts, unlabelled images."""
    package = REPO / PACKAGE_DIRS["openmoji"]
    report = build_tag_dataset(tmp_path / "openmoji", package=package, has_vector=vector_lookup(small_vectors))
    manifest, ingest_report = read_nuswide_layout(tmp_path / "openmoji")
    stats = label_statistics(manifest, ingest_report["concepts"])
    print(json.dumps({k: v for k, v in stats.items() if k != "images_per_concept"}))
    assert stats == report["statistics"]
    assert ingest_report["ok"] == ingest_report["listed"] == len(manifest) > 2000
    assert len(ingest_report["concepts"]) >= 40 and len(report["concepts"]) == 80
    assert ingest_report["no_labels"] > 0 and 0.05 < stats["unlabelled_share"] < 0.6
    assert stats["most_frequent_images"] >= 5 * stats["median_concept_images"]  # a long tail
    assert stats["per_split"]["test"] > 300
    assert report["concept_rule"]["skipped"]["no_vector"]["distinct_tags"] > 0  # counted, and reported


@pytest.mark.slow
def test_tabler_from_the_installed_package(tmp_path, small_vectors):
    """The real dataset, as the DVC stage builds it: 60 noisy concepts, more than one label per image."""
    package = REPO / PACKAGE_DIRS["tabler"]
    report = build_tag_dataset(tmp_path / "tabler", source="tabler", package=package,
                               has_vector=vector_lookup(small_vectors), n_concepts=60, max_images=3000)
    manifest, ingest_report = read_nuswide_layout(tmp_path / "tabler")
    stats = label_statistics(manifest, ingest_report["concepts"])
    print(json.dumps({k: v for k, v in stats.items() if k != "images_per_concept"}))
    assert stats == report["statistics"] and report["missing_artwork"] == []
    assert ingest_report["ok"] == ingest_report["listed"] == len(manifest) == 3000
    assert report["images_available"] > 4500  # the outline icons without their -off variants
    assert len(ingest_report["concepts"]) >= 40 and len(report["concepts"]) == 60
    assert stats["labels_per_image"] > 1 and 0.05 < stats["unlabelled_share"] < 0.5
    assert stats["per_split"]["test"] == 600
    assert report["concept_rule"]["skipped"]["no_vector"]["distinct_tags"] > 0  # counted, and reported
