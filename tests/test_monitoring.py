"""Monitoring as code: committed dashboards equal what monitoring.dashboards builds, the Prometheus
configs and alert rules pass promtool (and the rules' unit tests), every query is written against
the metric catalog in monitoring.metrics, and the 3D quality record keys become the catalog's series."""

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from monitoring import dashboards
from monitoring.exporter import PrometheusExporter
from monitoring.metrics import BY_NAME, METRICS

PROMETHEUS_DIR = Path(__file__).resolve().parents[1] / "monitoring" / "prometheus"
# Labels every eg3d series has (run, rank) or Prometheus adds to every target (job, instance).
COMMON_LABELS = {"run", "rank", "job", "instance"}
CATALOG_LABELS = {metric.label for metric in METRICS if metric.label}
RULE_LABELS = {"metric"}  # EG3DQualityWorsening names the quality metric it found worse (label_replace)
TEMPLATE_VARIABLES = {"run", "rank", "__rate_interval"}
# Catalog metrics that no panel shows, each with the reason.
NOT_ON_DASHBOARDS: dict[str, str] = {}

METRIC_NAME = re.compile(r"eg3d_[a-z0-9_]+")
SELECTOR = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\s*\{([^}]*)\}")
MATCHER = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)\s*\"")
GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
VARIABLE = re.compile(r"\$\{?([a-zA-Z_]\w*)")  # not $1, a label_replace group


def alert_rules() -> list[dict]:
    groups = yaml.safe_load((PROMETHEUS_DIR / "alerts.yml").read_text())["groups"]
    assert [group["name"] for group in groups] == ["eg3d"]
    return groups[0]["rules"]


def all_queries() -> list[tuple[str, str]]:
    """(where, PromQL) for every panel target and every alert expression."""
    panels = [(f"{uid} / {title}", expr) for uid, title, expr in dashboards.panel_queries()]
    return panels + [(f"alert {rule['alert']}", rule["expr"]) for rule in alert_rules()]


def promtool(*args: str, cwd: Path = PROMETHEUS_DIR) -> subprocess.CompletedProcess:
    if shutil.which("promtool") is None:
        pytest.skip("promtool is not on PATH (CI installs Debian's prometheus package)")
    return subprocess.run(["promtool", *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def assert_ok(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 0, result.stdout + result.stderr


def test_committed_dashboards_equal_build():
    built = dashboards.build()
    assert sorted(path.name for path in dashboards.OUTPUT_DIR.glob("*.json")) == sorted(built)
    for file_name, model in built.items():
        committed = (dashboards.OUTPUT_DIR / file_name).read_text()
        assert committed == dashboards.to_json(model), f"{file_name} is stale: run python -m monitoring.dashboards"
    assert dashboards.build() == built  # deterministic


def test_dashboards_have_variables_units_and_descriptions():
    built = {model["uid"]: model for model in dashboards.build().values()}
    assert sorted(built) == ["eg3d-rank", "eg3d-training"]
    for model in built.values():
        variables = {variable["name"]: variable for variable in model["templating"]["list"]}
        assert variables["datasource"]["query"] == "prometheus"
        assert variables["run"]["query"] == "label_values(eg3d_images_seen, run)"
        panels = [panel for panel in model["panels"] if panel["type"] != "row"]
        assert len({panel["id"] for panel in model["panels"]}) == len(model["panels"])
        for panel in panels:
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
            assert panel["description"] and panel["fieldConfig"]["defaults"]["unit"], panel["title"]
            assert [target["refId"] for target in panel["targets"]] == list("ABCDEFGH"[:len(panel["targets"])])
            for name in {name for target in panel["targets"] for name in METRIC_NAME.findall(target["expr"])}:
                assert BY_NAME[name].help in panel["description"], f"{panel['title']}: help of {name}"
    assert built["eg3d-rank"]["templating"]["list"][2]["query"] == 'label_values(eg3d_images_seen{run="$run"}, rank)'
    rows = [panel["title"] for panel in built["eg3d-training"]["panels"] if panel["type"] == "row"]
    assert rows == ["Progress", "Throughput", "GAN health", "Quality", "3D quality", "Schedules", "Memory",
                    "Reliability"]
    for panel in built["eg3d-rank"]["panels"]:
        for target in panel.get("targets", []):
            assert target["legendFormat"].startswith("rank {{rank}}"), panel["title"]


def test_readme_lists_every_panel():
    readme = " ".join((dashboards.OUTPUT_DIR.parent / "README.md").read_text().split())
    missing = {title for _, title, _ in dashboards.panel_queries() if title not in readme}
    assert not missing, f"monitoring/README.md does not list {missing}"


def test_panel_queries_parse(tmp_path):
    """Every panel query, with its template variables filled in, is PromQL that promtool accepts."""
    filled = [expr.replace("$__rate_interval", "1m").replace("$run", "r1").replace("$rank", ".*")
              for _, _, expr in dashboards.panel_queries()]
    rules = [{"record": f"panel:query_{index}", "expr": expr} for index, expr in enumerate(filled)]
    (tmp_path / "panels.yml").write_text(yaml.safe_dump({"groups": [{"name": "panels", "rules": rules}]}))
    assert_ok(promtool("check", "rules", "panels.yml", cwd=tmp_path))


def test_local_scrape_config():
    config = yaml.safe_load((PROMETHEUS_DIR / "local.yml").read_text())
    assert config["rule_files"] == ["alerts.yml"]
    [job] = config["scrape_configs"]
    assert (job["job_name"], job["scrape_interval"], job["honor_labels"]) == ("eg3d", "5s", True)
    assert job["file_sd_configs"] == [{"files": ["../../runs/prometheus-targets/*.json"], "refresh_interval": "10s"}]
    assert_ok(promtool("check", "config", "local.yml"))  # the file_sd folder may not exist yet: a warning


def test_kubernetes_scrape_config(tmp_path):
    config = yaml.safe_load((PROMETHEUS_DIR / "kubernetes.yml").read_text())
    assert config["rule_files"] == ["alerts.yml"]
    [job] = config["scrape_configs"]
    assert (job["job_name"], job["honor_labels"], job["kubernetes_sd_configs"]) == ("eg3d", True, [{"role": "pod"}])
    [keep] = [rule for rule in job["relabel_configs"] if rule.get("action") == "keep"]
    assert keep["source_labels"] == ["__meta_kubernetes_pod_container_port_name"]
    port_name = re.compile(keep["regex"])  # Prometheus anchors relabel regexes at both ends
    assert all(port_name.fullmatch(f"eg3d-metrics-{n}") for n in (0, 1, 7, 15))
    assert not any(port_name.fullmatch(name) for name in ("metrics", "eg3d-metrics-", "eg3d-metrics-a", "x-eg3d-metrics-0"))
    set_labels = {rule.get("target_label") for rule in job["relabel_configs"]}
    assert {"namespace", "pod"} <= set_labels

    result = promtool("check", "config", "kubernetes.yml")
    if "kubernetes_sd_configs not found" in result.stdout + result.stderr:
        # Debian builds Prometheus without Kubernetes discovery: check everything else with a static target.
        del job["kubernetes_sd_configs"]
        job["static_configs"] = [{"targets": ["127.0.0.1:9400"]}]
        (tmp_path / "kubernetes.yml").write_text(yaml.safe_dump(config))
        shutil.copy(PROMETHEUS_DIR / "alerts.yml", tmp_path / "alerts.yml")
        result = promtool("check", "config", "kubernetes.yml", cwd=tmp_path)
    assert_ok(result)


def test_alert_rules_check():
    assert_ok(promtool("check", "rules", "alerts.yml"))


def test_alert_rules_unit_tests():
    assert_ok(promtool("test", "rules", "alerts_test.yml"))


def test_alert_rules_are_complete():
    rules = alert_rules()
    assert [rule["alert"] for rule in rules] == [
        "EG3DNoProgress", "EG3DNonFiniteLoss", "EG3DWorkerLost", "EG3DDataStall", "EG3DQualityWorsening"]
    for rule in rules:
        assert "\n" not in rule["expr"].strip() and rule["for"], rule["alert"]
        assert rule["labels"]["severity"] in {"warning", "critical"}, rule["alert"]
        text = rule["annotations"]["summary"] + rule["annotations"]["description"]
        assert "$labels.run" in text and "$labels.rank" in text, rule["alert"]
    tested = yaml.safe_load((PROMETHEUS_DIR / "alerts_test.yml").read_text())["tests"]
    cases = [case for test in tested for case in test["alert_rule_test"]]
    for rule in rules:
        expected = [case["exp_alerts"] for case in cases if case["alertname"] == rule["alert"]]
        assert any(expected) and not all(expected), f"{rule['alert']} needs a firing and a quiet test case"


@pytest.mark.parametrize("where, expr", all_queries())
def test_queries_use_catalog_metrics_and_labels(where, expr):
    unknown = set(METRIC_NAME.findall(expr)) - set(BY_NAME)
    assert not unknown, f"{where}: metrics not in monitoring/metrics.py: {unknown}"
    for metric, matchers in SELECTOR.findall(expr):
        allowed = COMMON_LABELS | ({BY_NAME[metric].label} if metric in BY_NAME else set())
        assert set(MATCHER.findall(matchers)) <= allowed, f"{where}: {metric}{{{matchers}}}"
    grouped = {label.strip() for labels in GROUPING.findall(expr) for label in labels.split(",") if label.strip()}
    known = COMMON_LABELS | CATALOG_LABELS | RULE_LABELS
    assert grouped <= known, f"{where}: unknown labels {grouped - known}"
    assert set(VARIABLE.findall(expr)) <= TEMPLATE_VARIABLES, f"{where}: template variables {VARIABLE.findall(expr)}"


def test_every_catalog_metric_is_on_a_dashboard():
    shown = {name for _, _, expr in dashboards.panel_queries() for name in METRIC_NAME.findall(expr)}
    assert set(BY_NAME) - shown == set(NOT_ON_DASHBOARDS)
    assert not set(NOT_ON_DASHBOARDS) & shown, "a metric on the allow-list is shown: drop it from the list"


# --- 3D quality: the evaluator's record keys, their series, panels and alert ------------------------------

EVALUATOR_RECORD = {"fd_data": 41.5, "pose_error_deg": 7.25, "depth_error": 0.4, "consistency_raw": 0.05,
                    "consistency_final": 0.08, "evaluator_floor/pose_error_deg": 3.5,
                    "evaluator_floor/depth_error": 0.25, "quality_nimg/evaluator": 8000,
                    "quality_seconds/evaluator": 95.0}
# Written out here rather than derived from the catalog: (metric, extra labels) -> value.
EVALUATOR_SERIES = {
    ("eg3d_fd_data", ()): 41.5,
    ("eg3d_pose_error_degrees", ()): 7.25,
    ("eg3d_pose_error_floor_degrees", ()): 3.5,
    ("eg3d_depth_error", ()): 0.4,
    ("eg3d_depth_error_floor", ()): 0.25,
    ("eg3d_consistency_error", (("image", "raw"),)): 0.05,
    ("eg3d_consistency_error", (("image", "final"),)): 0.08,
    ("eg3d_quality_images_seen", (("extractor", "evaluator"),)): 8000,
    ("eg3d_quality_seconds", (("extractor", "evaluator"),)): 95.0,
}


def exported(record: dict) -> dict[tuple, float]:
    """{(metric, extra labels): value} that the exporter of run "demo", rank 0 serves after `record`."""
    exporter = PrometheusExporter(run="demo", rank=0, host="127.0.0.1", port=0)
    try:
        exporter.update(record, {})
        text = generate_latest(exporter.registry).decode()
    finally:
        exporter.close()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = dict(sample.labels)
            assert (labels.pop("run"), labels.pop("rank")) == ("demo", "0")
            samples[sample.name, tuple(sorted(labels.items()))] = sample.value
    return samples


def test_the_evaluator_record_keys_become_their_series():
    assert exported({"nimg": 8000, **EVALUATOR_RECORD}) == {("eg3d_images_seen", ()): 8000, **EVALUATOR_SERIES}
    without_depth = {k: v for k, v in EVALUATOR_RECORD.items() if "depth" not in k}  # no depth ground truth
    assert exported(without_depth) == {key: value for key, value in EVALUATOR_SERIES.items() if "depth" not in key[0]}
    for (name, labels), _ in EVALUATOR_SERIES.items():  # the label values the catalog documents
        assert all(value in BY_NAME[name].values for _, value in labels), (name, labels)


def test_the_3d_quality_row_shows_every_evaluator_metric_with_its_floor():
    model = dashboards.build()["eg3d-training.json"]
    titles = [panel["title"] for panel in model["panels"]]
    start = titles.index("3D quality")
    panels = model["panels"][start + 1:titles.index("Schedules")]
    read = [[METRIC_NAME.findall(target["expr"]) for target in panel["targets"]] for panel in panels]
    assert read == [[["eg3d_fd_data"]],
                    [["eg3d_pose_error_degrees"], ["eg3d_pose_error_floor_degrees"]],
                    [["eg3d_depth_error"], ["eg3d_depth_error_floor"]],
                    [["eg3d_consistency_error"]]]
    assert "NOT FID" in panels[0]["title"] and "{{image}}" == panels[3]["targets"][0]["legendFormat"]
    for panel in panels[1:3]:  # the floor (query B) dashed
        [override] = panel["fieldConfig"]["overrides"]
        assert override["matcher"] == {"id": "byFrameRefID", "options": "B"}
        assert override["properties"] == [{"id": "custom.lineStyle", "value": {"dash": [10, 10], "fill": "dash"}}]


def test_the_quality_alert_has_firing_tests_for_every_quality_metric():
    [rule] = [rule for rule in alert_rules() if rule["alert"] == "EG3DQualityWorsening"]
    assert {"eg3d_frechet_distance", "eg3d_fd_data", "eg3d_pose_error_degrees", "eg3d_depth_error"} <= set(
        METRIC_NAME.findall(rule["expr"]))
    tested = yaml.safe_load((PROMETHEUS_DIR / "alerts_test.yml").read_text())["tests"]
    fired = {alert["exp_labels"]["metric"] for test in tested for case in test["alert_rule_test"]
             if case["alertname"] == "EG3DQualityWorsening" for alert in case["exp_alerts"]}
    assert fired == {"frechet_distance/inception_v3", "fd_data", "pose_error_deg", "depth_error"}
