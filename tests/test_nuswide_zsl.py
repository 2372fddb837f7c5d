"""End to end: NUS-WIDE's zero-shot protocol (datasets/nuswide/zsl/params.yaml) on a small release in
that layout: real images (the embedded garments), seen targets from NUS_WID_Tags, the concepts unseen."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from labelspace.data.nuswide import read_concepts

pytestmark = pytest.mark.slow

# Seen tags of each garment, as a Flickr user might write them; `dress` and `bag` are concepts too, so
# they are no seen label (NUS-WIDE: 75 of the 81 concepts are among the 1,000 tags).
TAGS_OF = {"t-shirt": ["top"], "shirt": ["top"], "pullover": ["sweater", "top"], "coat": ["jacket"],
           "trouser": ["pants"], "sandal": ["shoes"], "sneaker": ["shoes"], "ankle_boot": ["shoes"],
           "dress": ["dress"], "bag": ["bag", "leather"]}
TAG_LIST = ["top", "sweater", "jacket", "pants", "shoes", "dress", "bag", "leather", "fashion"]


def _image_labels(root: Path, concepts: list[str], split: str) -> list[set[str]]:
    listing = (root / f"ImageList/{split}Imagelist.txt").read_text().split()
    columns = [np.loadtxt(root / f"Groundtruth/TrainTestLabels/Labels_{c}_{split}.txt", dtype=int, ndmin=1)
               for c in concepts]
    return [{c for c, col in zip(concepts, columns, strict=True) if col[i]} for i in range(len(listing))]


@pytest.fixture(scope="module")
def zsl_release(tiny_dataset, tmp_path_factory):
    """The tiny garments release with NUS_WID_Tags/: TagList1k.txt and noisy Train/Test_Tags1k.dat."""
    root = tmp_path_factory.mktemp("nuswide-zsl") / "release"
    shutil.copytree(tiny_dataset[0], root)
    concepts = read_concepts(root)
    rng = np.random.default_rng(0)
    (root / "NUS_WID_Tags").mkdir()
    (root / "NUS_WID_Tags/TagList1k.txt").write_text("\n".join(TAG_LIST) + "\n")
    for split in ("Train", "Test"):
        rows = []
        for labels in _image_labels(root, concepts, split):
            tags = {t for c in labels for t in TAGS_OF[c] if rng.random() > 0.1}  # a tenth of the tags missing
            tags |= {"fashion"} if rng.random() < 0.3 else set()  # and a tag unrelated to the garments
            rows.append("\t".join("1" if t in tags else "0" for t in TAG_LIST) + "\t")
        (root / f"NUS_WID_Tags/{split}_Tags1k.dat").write_text("\r\n".join(rows) + "\r\n")
    return root, concepts


def test_the_zero_shot_params_set_trains_on_seen_tags_and_ranks_the_unseen_concepts(
        zsl_release, small_vectors, tmp_path, repo_root):
    release, concepts = zsl_release
    params = yaml.safe_load((repo_root / "datasets/nuswide/zsl/params.yaml").read_text())
    assert params["ingest"]["labels"] == "nuswide-zsl" and params["evaluate"]["zero_shot_labels"] == "auto"
    params["ingest"].update(dataset=str(release), image_size=32, shard_size=64, cache_dir=str(tmp_path / "cache"))
    params["vectors"]["path"] = str(small_vectors)
    params["train"].update(epochs=1, batch_size=32, device="cpu", checkpoint_dir=str(tmp_path / "checkpoints"))
    params["register"]["open_vocabulary_size"] = 2000
    project = tmp_path / "project"
    project.mkdir()
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "ZENML_"))}
    env.update(LABELSPACE_PARAMS=str(project / "params.yaml"), ZENML_CONFIG_PATH=str(project / "zenml"),
               ZENML_ANALYTICS_OPT_IN="false", MLFLOW_DISABLE_TELEMETRY="true", DO_NOT_TRACK="true",
               DVC_NO_ANALYTICS="1", HF_HUB_OFFLINE="1")
    out = subprocess.run([str(Path(sys.executable).parent / "labelspace"), "run"], env=env, cwd=project,
                         capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-5000:]
    assert f"zero-shot labels (the label set's own {len(concepts)} unseen labels)" in out.stdout

    report = json.loads((project / "reports/metrics.json").read_text())
    seen = [t for t in TAG_LIST if t not in concepts]
    assert report["data"]["evaluated_labels"] == seen  # trained on the seen tags only
    zero_shot = report["zero_shot"]
    assert zero_shot["labels"] == concepts and "no_vector" not in zero_shot
    for k in (1, 3, 5):  # ZSL: the unseen concepts ranked alone, beside exact chance
        assert 0 <= zero_shot[f"top{k}"]["O-F1"] <= 1 and 0 < zero_shot["chance"][f"top{k}"]["O-F1"] < 1
    assert zero_shot["gzsl"]["n_labels_ranked"] == len(seen) + len(concepts)  # GZSL: all labels together
    assert 0 < zero_shot["chance"]["mAP"] < 1 and 0 < zero_shot["mAP"] <= 1
    assert "C-F1@5" in out.stdout  # the table shows the protocol's F1@5 (GZSL's rows show O-F1 only)
