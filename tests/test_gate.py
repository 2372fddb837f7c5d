"""The promotion gate's decision (labelspace.lifecycle.promotion_rules.decide) and the `promote` section of
params.yaml: pure functions, no MLflow."""

from __future__ import annotations

import dataclasses

import pytest

from labelspace.config import ConfigError, PromoteConfig, load_config
from labelspace.lifecycle.promotion_rules import comparison_table, decide, metric_name_problem, metric_values

RULES = PromoteConfig(auto=True, metrics=["labelspace.top3.O-F1", "labelspace.mAP", "zero_shot.top1.O-F1"],
                      minimum={"labelspace.top3.O-F1": 0.70, "labelspace.mAP": 0.85},
                      max_regression={"labelspace.top3.O-F1": 0.02, "labelspace.mAP": 0.02, "zero_shot.top1.O-F1": 0.05})
GOOD = {"labelspace.top3.O-F1": 0.77, "labelspace.mAP": 0.93, "zero_shot.top1.O-F1": 0.68}


def test_a_first_model_is_judged_by_the_minimums_alone():
    passed = decide(GOOD, None, RULES)
    assert passed.passed and passed.compared_with is None and passed.verdict == "passed"
    assert passed.notes == ("no champion yet: judged by the absolute minimums alone",)
    assert all(c.champion is None for c in passed.checks)
    failed = decide({**GOOD, "labelspace.mAP": 0.80}, None, RULES)
    assert not failed.passed
    assert failed.reasons == ("labelspace.mAP 0.8000 is below the minimum 0.8500",)


def test_a_regression_beyond_the_allowance_rejects_within_it_passes():
    champion = {"labelspace.top3.O-F1": 0.78, "labelspace.mAP": 0.94, "zero_shot.top1.O-F1": 0.70}
    within = decide(GOOD, champion, RULES, champion_version="3")
    assert within.passed and within.compared_with == "3"
    assert "labelspace.top3.O-F1 0.7700 vs champion v3's 0.7800 (regression allowed 0.0200)" in within.summary()
    worse = decide({**GOOD, "zero_shot.top1.O-F1": 0.60}, champion, RULES, champion_version="3")
    assert not worse.passed
    assert worse.reasons == ("zero_shot.top1.O-F1 0.6000 is 0.1000 below champion v3's 0.7000 (at most 0.0500 allowed)",)


def test_equal_to_the_threshold_passes_despite_rounding():
    exactly = {"labelspace.top3.O-F1": 0.7, "labelspace.mAP": 0.1 * 3 + 0.55, "zero_shot.top1.O-F1": 0.6}
    champion = {"labelspace.top3.O-F1": 0.72, "labelspace.mAP": 0.87, "zero_shot.top1.O-F1": 0.65}
    assert decide(exactly, champion, RULES, champion_version="1").passed


def test_a_metric_the_challenger_lacks_fails_and_one_the_champion_lacks_is_noted():
    without_zero_shot = {k: v for k, v in GOOD.items() if not k.startswith("zero_shot")}
    champion = {"labelspace.top3.O-F1": 0.70, "labelspace.mAP": 0.90}
    # The zero-shot rule needs the champion's figure: with none, the minimum (absent here) alone decides.
    assert decide(without_zero_shot, champion, RULES, champion_version="2").passed
    lacking = decide(without_zero_shot, {**champion, "zero_shot.top1.O-F1": 0.6}, RULES, champion_version="2")
    assert not lacking.passed and lacking.reasons == ("zero_shot.top1.O-F1 was not measured for the challenger",)
    noted = decide(GOOD, champion, RULES, champion_version="2")
    assert noted.passed and "zero_shot.top1.O-F1: champion v2 has no value, minimum only" in noted.reasons


def test_a_champion_that_cannot_be_compared_leaves_the_minimums():
    note = "champion v4 is not comparable: it was trained on label(s) this dataset lacks (hat)"
    decision = decide(GOOD, None, RULES, champion_version="4", champion_note=note)
    assert decision.passed and decision.compared_with is None and decision.notes == (note,)
    assert note in decision.summary()


def test_metric_values_flattens_a_metrics_report():
    report = {"labelspace": {"top3": {"O-F1": 0.77, "n_images_without_labels": 3}, "mAP": 0.93,
                             "threshold": {"O-F1": 0.88, "passed": True}},
              "bce": {"mAP": 0.95},
              "zero_shot": {"labels": ["sandal"], "top1": {"O-F1": 0.68}, "mAP": 0.66,
                            "chance": {"top1": {"O-F1": 0.5}, "mAP": 0.54}},
              "data": {"n_test_images": 1000}}
    assert metric_values(report) == {"labelspace.top3.O-F1": 0.77, "labelspace.top3.n_images_without_labels": 3.0,
                                     "labelspace.mAP": 0.93, "labelspace.threshold.O-F1": 0.88,
                                     "zero_shot.top1.O-F1": 0.68, "zero_shot.mAP": 0.66}


def test_metric_names_are_checked():
    for name in ("labelspace.top3.O-F1", "labelspace.top10.C-P", "labelspace.mAP", "labelspace.threshold.C-F1",
                 "zero_shot.top1.O-F1", "zero_shot.top5.C-F1", "zero_shot.mAP"):  # top-5: NUS-WIDE's 81 unseen
        assert metric_name_problem(name) == ""
    for name in ("labelspace.top3.F1", "bce.mAP", "mAP", "zero_shot.top3.F1", "zero_shot.gzsl.mAP", None):
        assert "is not a metric of reports/metrics.json" in metric_name_problem(name)


def test_the_comparison_table_has_a_row_per_metric_and_the_verdict():
    table = comparison_table(decide(GOOD, {"labelspace.top3.O-F1": 0.8}, RULES, champion_version="2"), "5")
    lines = table.splitlines()
    assert lines[0] == "| metric | challenger v5 | champion v2 | minimum | max regression | result |"
    assert "| labelspace.top3.O-F1 | 0.7700 | 0.8000 | 0.7000 | 0.0200 | FAIL |" in lines
    assert "| zero_shot.top1.O-F1 | 0.6800 | n/a | n/a | 0.0500 | pass |" in lines
    assert lines[-1].startswith("**rejected**: labelspace.top3.O-F1 0.7700 is 0.0300 below champion v2's")


def test_the_project_promote_section_passes_the_embedded_default_run():
    """params.yaml's rules against the README's default figures: the default model would be promoted."""
    from support import project_config

    config = project_config().promote
    readme = {"labelspace.top3.O-F1": 0.770, "labelspace.top3.C-F1": 0.763, "labelspace.mAP": 0.930,
              "zero_shot.top1.O-F1": 0.684}
    assert decide(readme, None, config).passed
    assert decide(readme, readme, config, champion_version="1").passed  # the same model again passes


@pytest.mark.parametrize("old, new, message", [
    ("  auto: true ", "  auto: yes please ", r"promote\.auto = 'yes please' is not true or false"),
    ("labelspace.top3.C-F1, labelspace.mAP", "labelspace.top3.CF1, labelspace.mAP",
     r"promote\.metrics = .* 'labelspace.top3.CF1' is not a metric of reports/metrics.json"),
    ("    labelspace.mAP: 0.85", "    labelspace.mAP: 85", r"promote\.minimum = .* must be a mapping of metric -> a fraction"),
    ("    labelspace.mAP: 0.02", "    bce.mAP: 0.02", r"promote\.max_regression = .* keys are among promote\.metrics"),
])
def test_a_bad_promote_section_names_the_key_and_line(tmp_path, repo_root, old, new, message):
    text = (repo_root / "params.yaml").read_text()
    assert old in text, old
    path = tmp_path / "params.yaml"
    path.write_text(text.replace(old, new, 1))
    with pytest.raises(ConfigError, match=message) as error:
        load_config(path)
    assert str(error.value).startswith(f"{path}:")


def test_replace_checks_the_promote_section(project_config):
    assert project_config.replace(promote={"auto": False}).promote.auto is False
    with pytest.raises(ConfigError, match="promote.minimum"):
        project_config.replace(promote={"minimum": {"labelspace.nope": 0.5}})
    assert dataclasses.asdict(project_config.promote)["metrics"][0] == "labelspace.top3.O-F1"
