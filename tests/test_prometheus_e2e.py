"""End to end: Debian's Prometheus on 127.0.0.1 scrapes a real 2-worker training run (Ray, local shards)
through monitoring/prometheus/local.yml's file_sd targets; then every dashboard query and every alert
expression is evaluated against what it stored."""

import json
import re
import shutil
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml

from model_helpers import MICRO_OVERRIDES
from distributed_helpers import free_port
from monitoring import dashboards

REPO = Path(__file__).resolve().parents[1]
PROMETHEUS_DIR = REPO / "monitoring" / "prometheus"
RATE_INTERVAL = "10s"  # what Grafana's $__rate_interval becomes at a 1 s scrape interval

NO_EVALUATOR = ("3D quality is measured only with an evaluator trained on the run's data set (depth error only "
                "with depth ground truth)")
# Queries that cannot return data on this machine, with the reason.
EXPECTED_EMPTY_PANELS = {
    "GPU": "no GPU here: the workers export GPU memory only when they train on CUDA",
    **dict.fromkeys(("fd_data", "Camera pose error", "Depth error", "consistency"), NO_EVALUATOR),
}
# Alert inputs that this run may not export, with the reason.
MAYBE_ABSENT_ALERT_INPUTS = dict.fromkeys(("eg3d_fd_data", "eg3d_pose_error_degrees", "eg3d_depth_error"), NO_EVALUATOR)
EXPECTED_EMPTY_ALERTS = {
    "EG3DNoProgress": "the run makes progress",
    "EG3DNonFiniteLoss": "every loss and gradient stays finite",
    "EG3DWorkerLost": "no worker is lost",
    "EG3DDataStall": "the reader keeps up",
    "EG3DQualityWorsening": "needs hours of history",
}


def prometheus_config(tmp_path: Path, targets: Path) -> Path:
    """local.yml as shipped, with a 1 s scrape and evaluation interval and absolute paths."""
    config = yaml.safe_load((PROMETHEUS_DIR / "local.yml").read_text())
    config["global"].update(scrape_interval="1s", evaluation_interval="1s")
    config["rule_files"] = [str(PROMETHEUS_DIR / name) for name in config["rule_files"]]
    (job,) = config["scrape_configs"]
    job["scrape_interval"] = "1s"
    (sd,) = job["file_sd_configs"]
    sd["files"] = [str(targets / Path(pattern).name) for pattern in sd["files"]]
    sd["refresh_interval"] = "1s"
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    return path


class Prometheus:
    def __init__(self, config: Path, data: Path):
        self.url = f"http://127.0.0.1:{free_port()}"
        self.process = subprocess.Popen(
            ["prometheus", f"--config.file={config}", f"--storage.tsdb.path={data}",
             f"--web.listen-address={self.url.removeprefix('http://')}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                urllib.request.urlopen(f"{self.url}/-/ready", timeout=2)
                return
            except OSError:
                if self.process.poll() is not None:
                    raise RuntimeError(f"prometheus exited: {self.process.stderr.read()}")
                time.sleep(0.5)
        raise TimeoutError("prometheus did not become ready")

    def query(self, expr: str, at: float) -> list[dict]:
        params = urllib.parse.urlencode({"query": expr, "time": f"{at:.3f}"})
        answer = json.loads(urllib.request.urlopen(f"{self.url}/api/v1/query?{params}", timeout=30).read())
        assert answer["status"] == "success", (expr, answer)
        return answer["data"]["result"]

    def last_sample_time(self, expr: str, start: float, end: float) -> float:
        params = urllib.parse.urlencode({"query": expr, "start": start, "end": end, "step": "1"})
        answer = json.loads(urllib.request.urlopen(f"{self.url}/api/v1/query_range?{params}", timeout=30).read())
        return max(float(t) for series in answer["data"]["result"] for t, _ in series["values"])

    def stop(self):
        self.process.terminate()
        self.process.wait(timeout=30)


def fill(expr: str, run: str) -> str:
    return expr.replace("$__rate_interval", RATE_INTERVAL).replace("$run", run).replace("$rank", ".*")


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("prometheus") is None, reason="Debian's prometheus is not installed")
def test_prometheus_scrapes_a_two_worker_run_and_every_query_answers(tmp_path):
    storage, run = tmp_path / "runs", "scraped"
    targets = storage / "prometheus-targets"
    targets.mkdir(parents=True)  # file_sd watches this folder from the start
    prometheus = Prometheus(prometheus_config(tmp_path, targets), tmp_path / "tsdb")
    try:
        overrides = MICRO_OVERRIDES + [
            "data.synthetic_count=24", "run.log_kimg=0.008", "run.checkpoint_kimg=0.04", "run.snapshot_kimg=0.04",
            f"telemetry.metrics_port={free_port()}", "distributed.cpus_per_worker=1"]
        start = time.time()
        subprocess.run([sys.executable, "-m", "eg3d.train", "--preset", "tiny", "--storage", str(storage),
                        "--name", run, "--kimg", "0.12", "--workers", "2",
                        *[arg for override in overrides for arg in ("--set", override)]],
                       cwd=REPO, check=True, timeout=900)
        end = time.time()
        # The last moment both workers were still being scraped (they stop one after the other): queries
        # are evaluated there.
        at = prometheus.last_sample_time(f'count(eg3d_images_seen{{run="{run}"}}) == 2', start, end)
        up = {series["metric"]["rank"]: series["value"][1] for series in prometheus.query(f'up{{run="{run}"}}', at)}
        assert up == {"0": "1", "1": "1", "driver": "1"}
        assert list(targets.iterdir()) == []  # the finished run took its targets away

        records = [json.loads(line) for line in (storage / run / "log.jsonl").read_text().splitlines()]
        seen = prometheus.query(f'eg3d_images_seen{{run="{run}"}}', at)
        assert {s["metric"]["rank"] for s in seen} == {"0", "1"}
        assert {int(s["value"][1]) for s in seen} <= {r["nimg"] for r in records}
        quality = prometheus.query(f'eg3d_frechet_distance{{run="{run}", rank="0"}}', at)
        measured = {r["quality_nimg/random"]: r["frechet_distance/random"] for r in records if "quality_nimg/random" in r}
        assert [q["metric"]["extractor"] for q in quality] == ["random"]
        assert float(quality[0]["value"][1]) in measured.values()

        empty_panels = []
        for uid, title, expr in dashboards.panel_queries():
            if not prometheus.query(fill(expr, run), at):
                empty_panels.append(title)
        unexplained = [t for t in empty_panels if not any(key in t for key in EXPECTED_EMPTY_PANELS)]
        assert unexplained == [], f"panels without data: {unexplained}"
        assert empty_panels, "the GPU memory panels are expected empty on a CPU machine"

        rules = yaml.safe_load((PROMETHEUS_DIR / "alerts.yml").read_text())["groups"][0]["rules"]
        assert {rule["alert"] for rule in rules} == set(EXPECTED_EMPTY_ALERTS)
        for rule in rules:
            assert prometheus.query(rule["expr"], at) == [], rule["alert"]  # a healthy run fires nothing
            inputs = set(re.findall(r"\beg3d_[a-z0-9_]+", rule["expr"])) - set(MAYBE_ABSENT_ALERT_INPUTS)
            for metric in inputs:  # ... but every input exists
                assert prometheus.query(f'{metric}{{run="{run}"}}', at), (rule["alert"], metric)
    finally:
        prometheus.stop()
