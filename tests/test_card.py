"""Model cards (labelspace.evaluation.card_render, labelspace.lifecycle.version_record): what they say, that the HTML is
self-contained and renders in a real browser with its images, and the round trip through a real
MLflow registry. The slow test runs `labelspace analyze` and `labelspace card` against a registered version."""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import yaml
from analysis_support import card_inputs, evaluated, trained_pair
from PIL import Image

from labelspace.evaluation.card_content import NO_GATE
from labelspace.evaluation.card_render import build_card

SECTIONS = ("Intended use", "Model", "Training data", "Labels and their word vectors", "Metrics", "Zero-shot",
            "Promotion gate", "Analyses", "Known limitations", "Lineage")


@pytest.fixture(scope="module")
def trained(tiny_dataset, small_vectors, project_config):
    return trained_pair(tiny_dataset, small_vectors, project_config)


@pytest.fixture(scope="module")
def card(trained):
    return build_card(card_inputs(trained))


class _Images(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.sources: list[str] = []
        self.external: list[str] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.sources.append(attrs.get("src", ""))
        for key in ("src", "href"):
            if attrs.get(key, "").startswith(("http:", "https:", "file:", "//")) or (tag == "link" and key in attrs):
                self.external.append(f"<{tag} {key}={attrs[key]}>")


def test_the_card_says_what_the_model_is(card, trained):
    md = card.markdown
    for section in SECTIONS:
        assert f"\n## {section}\n" in md, section
    report, _ = evaluated(trained)
    n_test = report["data"]["n_test_images"]
    assert f"Test split, {n_test} images" in md
    assert "| label space | top-3 |" in md and "| BCE baseline | top-3 |" in md
    assert "chance (%)" in md and "`sandal`" in md and "held out (zero-shot)" in md
    assert "vote over top-1" in md and "full model (D)" in md and " ± " in md
    assert NO_GATE in md  # no gate.* tags on this version
    assert "| `data.dataset_version` | `tiny` |" in md
    for name in card.images:
        assert f"](plots/{name})" in md


def test_a_gate_decision_and_the_champion_it_was_compared_with_are_shown(trained):
    tags = {"data.dataset_version": "tiny", "gate.decision": "rejected", "gate.compared_with": "version 3 (@champion)",
            "gate.reason": "top-3 O-F1 fell 4.1 points below the champion's"}
    card = build_card(card_inputs(trained, tags=tags))
    assert NO_GATE not in card.markdown
    assert "**Promotion gate:** **rejected** against version 3 (@champion)" in card.markdown
    assert "top-3 O-F1 fell 4.1 points below the champion&#x27;s" in card.html


def test_the_html_is_self_contained_and_every_image_is_a_png(card):
    parser = _Images()
    parser.feed(card.html)
    assert not parser.external, parser.external
    assert len(parser.sources) == len(card.images) >= 8
    for src in parser.sources:
        assert src.startswith("data:image/png;base64,")
        with Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1], validate=True))) as im:
            assert im.format == "PNG" and im.width > 300
    assert "<script" not in card.html


def test_the_card_is_written_as_markdown_html_and_plots(card, tmp_path):
    files = card.write(tmp_path)
    assert (tmp_path / "model_card.md").read_text() == card.markdown
    linked = re.findall(r"\]\((plots/[^)]+)\)", card.markdown)
    assert linked and all((tmp_path / link).is_file() for link in linked)
    assert len(files) == 2 + len(card.images)


# ---------------------------------------------------------------- as a person sees it


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    pytest.skip("no chromium binary: apt-get install chromium (scripts/install_system_packages.sh installs it)")


def _headless(browser: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                           "--no-first-run", "--disable-dev-shm-usage", *args],
                          capture_output=True, text=True, timeout=120)


def test_chromium_renders_the_card_with_its_images(card, tmp_path):
    browser = _chromium()
    page = tmp_path / "model_card.html"
    page.write_text(card.html, encoding="utf-8")
    # Every image decoded by the browser itself: count those with a natural size once the page has loaded.
    probe = tmp_path / "probe.html"
    probe.write_text(card.html.replace("</body>", "<script>window.addEventListener('load', () => {"
                                       "document.title = 'loaded ' + [...document.images].filter("
                                       "i => i.complete && i.naturalWidth > 0).length + ' of ' + "
                                       "document.images.length; });</script></body>"), encoding="utf-8")
    dom = _headless(browser, "--virtual-time-budget=10000", "--dump-dom", probe.as_uri())
    n = len(card.images)
    assert f"<title>loaded {n} of {n}</title>" in dom.stdout, dom.stderr[-2000:]

    shot = tmp_path / "card.png"
    done = _headless(browser, f"--screenshot={shot}", "--window-size=1200,3000", page.as_uri())
    assert shot.is_file(), done.stderr[-2000:]
    with Image.open(shot) as im:
        assert im.size == (1200, 3000)
        pixels = np.asarray(im.convert("RGB"), dtype=float)
    assert pixels.std() > 20  # not a blank page
    coloured = (pixels.max(axis=2) - pixels.min(axis=2)) > 60  # the plots' blues and oranges, not grey text
    assert coloured.mean() > 0.002, "no plot in the first 3000 px (the per-class F1 bars belong there)"


# ---------------------------------------------------------------- through MLflow


@pytest.fixture(scope="module")
def registered(trained, tmp_path_factory):
    """The trained label space logged and registered in a fresh sqlite MLflow, with its run's report and plots."""
    import mlflow

    from labelspace.lifecycle.registry import register_model
    from labelspace.lifecycle.tracking import ensure_experiment
    from labelspace.serving.pyfunc import log_labelspace_model

    tmp = tmp_path_factory.mktemp("cards")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    report, plots = evaluated(trained)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        with mlflow.start_run(experiment_id=ensure_experiment("card-test")):
            info = log_labelspace_model(trained.model)
            mlflow.log_dict(report, "reports/metrics.json")
            mlflow.log_image(Image.open(io.BytesIO(plots["training_curves.png"])), "plots/training_curves.png")
        tags = {"data.dataset_version": "tiny", "zenml.run_id": "unknown", "model.content_hash": "x"}
        version = register_model(info.model_uri, model_name="card-test", tags=tags, description="a tiny model")
        yield {"uri": uri, "tmp": tmp, "version": str(version.version)}


def test_a_registered_version_round_trips_through_its_card(registered, trained, tmp_path, monkeypatch):
    from mlflow import MlflowClient

    from labelspace.lifecycle.version_record import CARD_MARKER, load_version, log_analysis, log_card

    monkeypatch.setenv("MLFLOW_TRACKING_URI", registered["uri"])
    record = load_version("@challenger", "card-test")
    assert str(record.version.version) == registered["version"] and record.bundle.labels == trained.model.labels
    assert record.report["data"]["n_test_images"] == evaluated(trained)[0]["data"]["n_test_images"]
    assert record.analysis is None and set(record.plots) == {"training_curves.png"}
    with pytest.raises(ValueError, match="has no version 9; its versions are 1 @challenger"):
        load_version("9", "card-test")
    early = build_card(record.card_inputs())  # before `labelspace analyze`: it says so, and shows what the run has
    assert "No analysis logged for this version: run `labelspace analyze --version 1`" in early.markdown
    assert list(early.images) == ["training_curves.png"]

    summary = card_inputs(trained).analysis
    (tmp_path / "analysis.json").write_text(json.dumps(summary))
    log_analysis(record, [tmp_path / "analysis.json"], {"analysis_row_diversity_mean": summary["row_diversity"]["mean"]})
    record = load_version(registered["version"], "card-test")
    assert record.analysis["committee"] == summary["committee"]
    client = MlflowClient(tracking_uri=registered["uri"])
    assert client.get_run(record.run_id).data.metrics["analysis_row_diversity_mean"] == pytest.approx(
        summary["row_diversity"]["mean"])

    card = build_card(record.card_inputs())
    assert "no gate decision recorded" in card.markdown and "`@challenger`" in card.markdown
    card.write(tmp_path / "card")
    link = log_card(record, tmp_path / "card")
    log_card(load_version("@challenger", "card-test"), tmp_path / "card")  # again: still one link
    description = client.get_model_version("card-test", registered["version"]).description
    assert description.startswith("a tiny model\n") and description.count(CARD_MARKER) == 1 and link in description
    assert link.startswith("file://") and Path(link.removeprefix("file://")).read_text() == card.html
    names = {a.path for a in client.list_artifacts(record.run_id, "card")}
    assert {"card/model_card.md", "card/model_card.html", "card/plots"} <= names


@pytest.mark.slow
def test_the_analyze_and_card_commands_on_a_registered_version(registered, tiny_dataset, small_vectors, tmp_path,
                                                               monkeypatch, repo_root, capsys):
    from mlflow import MlflowClient

    from labelspace.cli import main

    root = tiny_dataset[0]
    params = yaml.safe_load((repo_root / "params.yaml").read_text())
    params["vectors"].update(path=str(small_vectors), limit=100_000)
    params["ingest"].update(dataset=str(root), cache_dir=str(tmp_path / "cache"))
    params["train"].update(mirror=False)
    params["analyze"].update(out=str(tmp_path / "analysis"), sweep_k=[2, 4], short_epochs=1, map_images=2,
                             worst_images=4)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    monkeypatch.setenv("LABELSPACE_PARAMS", str(tmp_path / "params.yaml"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", registered["uri"])
    monkeypatch.setenv("ZENML_CONFIG_PATH", str(tmp_path / "zenml"))

    assert main(["analyze", "--model", "card-test", "--budget", "short"]) == 0
    out = capsys.readouterr().out
    assert "committee of the k = 6 rows of A" in out and "vote over top-3" in out
    assert re.search(r"row diversity: .* \d\.\d{4} ± \d\.\d{4}", out)
    assert "k sweep (short budget" in out and "the version has no zenml.run_id tag" in out
    assert (tmp_path / "analysis" / "k_sweep.csv").read_text().startswith("k,")

    assert main(["card", "@challenger", "--model", "card-test", "--out", str(tmp_path / "card")]) == 0
    html = (tmp_path / "card" / "model_card.html").read_text()
    assert html.count('src="data:image/png;base64,') >= 7 and "k sweep (paper Fig. 8)" in html
    client = MlflowClient(tracking_uri=registered["uri"])
    version = client.get_model_version("card-test", registered["version"])
    assert "Model card: [card/model_card.html](" in version.description
    assert main(["card", "@nobody", "--model", "card-test", "--out", str(tmp_path / "x")]) == 2
