"""The report from fixture records (success, OOM, failed, pruned, CPU): every file, real images,
nothing dropped; the study form; and the HTML page in headless Chromium."""

import json
import os
import select
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pandas as pd
import pytest
from matplotlib import image as mpimg

from harness.analysis.frame import StudySource
from harness.analysis.pareto import pareto_mask
from harness.analysis.plots import PLOTS
from harness.analysis.report import build_report, main
from harness.analysis.sources import load_records_frame

RECORDS = Path(__file__).parent / "fixtures" / "records"
H100 = RECORDS / "h100-llama3-8b"
N_TRIALS = 19  # 15 in h100-llama3-8b + 4 in cpu-smollm2


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return build_report(RECORDS, tmp_path_factory.mktemp("report"), title="fixture sweep")


def test_report_writes_every_file(report: dict[str, Path]) -> None:
    expected = {"summary.csv", "summary.parquet", "report.html", "summary.md"}
    expected |= {f"{name}.{ext}" for name in PLOTS for ext in ("png", "svg")}
    assert expected <= set(report)
    for path in report.values():
        assert path.is_file() and path.stat().st_size > 0, path


def test_plots_are_real_images(report: dict[str, Path]) -> None:
    for name in PLOTS:
        png = report[f"{name}.png"]
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        pixels = mpimg.imread(png)
        assert pixels.shape[0] > 200 and pixels.shape[1] > 300, name
        assert np.std(pixels[..., :3]) > 0.02, f"{name}.png looks blank"
        assert report[f"{name}.svg"].read_text().lstrip().startswith(("<?xml", "<svg"))


def test_summary_keeps_failed_and_oom_trials(report: dict[str, Path]) -> None:
    csv = pd.read_csv(report["summary.csv"])
    parquet = pd.read_parquet(report["summary.parquet"])
    assert len(csv) == len(parquet) == N_TRIALS
    assert csv["status"].value_counts().to_dict() == {
        "success": 15,
        "failed": 2,
        "oom": 1,
        "pruned": 1,
    }
    oom = csv[csv["status"] == "oom"].iloc[0]
    assert "out of memory" in oom["error"] and np.isnan(oom["rank"])
    # Ranked: successful trials first, best score first.
    ok = csv[csv["status"] == "success"]
    assert list(ok["rank"]) == list(range(1, 16))
    assert ok["score"].is_monotonic_decreasing
    assert csv.iloc[0]["trial"] == "t09"  # nf4 dq r64 DoRA: the best fixture score, 0.588


def test_markdown_and_html_reference_every_plot(report: dict[str, Path]) -> None:
    md = report["summary.md"].read_text()
    page = report["report.html"].read_text()
    for name in PLOTS:
        assert f"]({name}.png)" in md
        assert f"alt='{name}'" in page
    assert page.count("src='data:image/png;base64,") == len(PLOTS)
    assert "src='http" not in page and "src='/" not in page  # self-contained
    assert "t13" in md and "oom" in md and "CUDA out of memory" in md  # greyed, with reason


def test_report_of_one_failed_trial_says_why_each_panel_is_absent(tmp_path: Path) -> None:
    files = build_report(H100 / "t14", tmp_path, title="only a failure", svg=False)
    assert {n for n in files if n.endswith(".png")} == {"memory_model.png"}
    md = files["summary.md"].read_text()
    assert "torch._dynamo.exc.Unsupported" in md
    assert "No rank panel: lora.r does not vary" in md
    assert "No quantization panel: quant.type and quant.double_quant do not vary" in md


def test_panels_with_nothing_to_compare_are_absent(tmp_path: Path) -> None:
    """A CPU sweep over lora.r: no VRAM panel, no one-bar quantization panel; each says why."""
    files = build_report(RECORDS / "cpu-smollm2", tmp_path, title="cpu", svg=False)
    assert "vram_vs_score.png" not in files and "quant_dq.png" not in files
    assert {"score_vs_rank.png", "loss_curves.png", "throughput.png"} <= set(files)
    page = files["report.html"].read_text()
    assert "No memory-vs-quality panel: no trial measured VRAM (CPU trials record process RSS" in (
        page
    )
    assert "peak RSS (GiB)" in page and "<td class='num'>2.3</td>" in page  # c00: 2.31 GiB


def test_score_plots_carry_intervals(tmp_path: Path) -> None:
    """Whiskers (gid "ci") on every score and loss panel; the tables print 95% intervals."""
    files = build_report(RECORDS, tmp_path, title="fixture", svg=True)
    for name in ("score_vs_rank", "vram_vs_score", "lm_eval", "quant_dq", "loss_curves"):
        assert 'id="ci' in files[f"{name}.svg"].read_text(), name
    csv = pd.read_csv(files["summary.csv"]).set_index("trial")
    # t09: score 0.588, stderr of gsm8k exact match from the record: 0.588 +- 1.96 se.
    se = csv.loc["t09", "score_stderr"]
    assert csv.loc["t09", "score_ci"] == (f"0.588 (95% CI {0.588 - 1.959964 * se:.3f}-"
                                          f"{0.588 + 1.959964 * se:.3f})")  # fmt: skip


def test_frame_columns() -> None:
    frame = load_records_frame(H100)
    cols = ["lora.r", "quant.type", "quant.double_quant", "score", "loss_tokens_per_s",
            "peak_vram_reserved_gib", "params_trainable", "status", "error", "label"]  # fmt: skip
    assert set(cols) <= set(frame.columns)
    t00 = frame.set_index("trial").loc["t00"]
    assert (t00["lora.r"], t00["quant.type"], t00["loss_tokens_per_s"]) == (16, "nf4", 2950)
    # read in today's keys: train.checkpointing/kernels are engine levers, train.compile is gone
    assert t00["label"] == "nf4 dq r16 lora b4 ckpt:full no-liger"


def test_pareto_front_on_crafted_points() -> None:
    frame = pd.DataFrame({"vram": [10, 12, 11, 20, 20, np.nan], "score": [1, 2, 0.5, 3, 2.5, 9]})
    on = pareto_mask(frame, {"vram": "minimize", "score": "maximize"})
    assert list(on) == [True, True, False, True, False, False]


def test_pareto_set_over_three_objectives_among_candidates() -> None:
    """Row 2 dominates rows 0 and 1; left out of the candidates (an infeasible trial), it beats
    nobody. An empty frame has an empty set; a misspelt direction is refused."""
    frame = pd.DataFrame({"loss": [1.0, 0.9, 0.8, 1.2], "vram": [10, 12, 9, 8],
                          "tps": [5, 5, 6, 9]})  # fmt: skip
    directions = {"loss": "minimize", "vram": "minimize", "tps": "maximize"}
    assert list(pareto_mask(frame, directions)) == [False, False, True, True]
    among = pd.Series([True, True, False, True])
    assert list(pareto_mask(frame, directions, among=among)) == [True, True, False, True]
    assert pareto_mask(frame.iloc[:0], directions).empty
    with pytest.raises(ValueError, match="maximise"):
        pareto_mask(frame, {"tps": "maximise"})


def test_study_source_uses_records_and_falls_back_to_user_attrs(tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path / 'sweep.db'}"
    study = optuna.create_study(study_name="s", storage=storage, direction="maximize")
    dist = {"lora.r": optuna.distributions.CategoricalDistribution([8, 16, 64])}
    study.add_trial(optuna.trial.create_trial(
        params={"lora.r": 16}, distributions=dist, value=0.571,
        user_attrs={"record_dir": str((H100 / "t00").resolve())}))  # fmt: skip
    study.add_trial(optuna.trial.create_trial(
        params={"lora.r": 64}, distributions=dist, value=0.5,
        user_attrs={"record_dir": str(tmp_path / "gone"), "peak_vram_reserved_gib": 25.0,
                    "loss_tokens_per_s": 2800.0}))  # fmt: skip
    study.add_trial(optuna.trial.create_trial(
        params={"lora.r": 8}, distributions=dist, state=optuna.trial.TrialState.FAIL))  # fmt: skip
    frame = load_records_frame(StudySource(storage, "s"))
    assert list(frame["status"]) == ["success", "success", "failed"]
    assert frame.loc[0, "trial"] == "t00" and frame.loc[0, "quant.type"] == "nf4"
    assert frame.loc[1, "peak_vram_reserved_gib"] == 25.0 and frame.loc[1, "lora.r"] == 64
    assert frame.loc[1, "loss_tokens_per_s"] == 2800.0
    assert "record.json missing" in frame.loc[1, "error"]
    assert "record.json missing" in frame.loc[2, "error"]
    assert load_records_frame(study)["trial"].tolist() == frame["trial"].tolist()  # Study object


def test_cli_default_out_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("HARNESS_OUTPUT_ROOT", raising=False)
    assert main([str(RECORDS / "cpu-smollm2"), "--no-svg"]) == 0
    out = tmp_path / "outputs" / "reports" / "cpu-smollm2"  # <output root>/reports/<name>
    assert (out / "report.html").is_file() and (out / "throughput.png").is_file()
    assert main([str(tmp_path / "nothing-here")]) == 2


# ---- headless Chromium over the DevTools protocol (--remote-debugging-pipe, no extra deps) ----

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="chromium not installed (apt-get install -y chromium; .ci/run does)"
)
CHECK_IMAGES = (
    "JSON.stringify(Array.from(document.images)"
    ".map(i => [i.alt, i.complete && i.naturalWidth > 0]))"
)
CHECK_TEXT = (
    "JSON.stringify({figures: Array.from(document.querySelectorAll('figure h2'))"
    ".map(h => h.innerText), cells: Array.from(document.querySelectorAll('td'))"
    ".map(td => td.innerText)})"
)


class Chromium:
    """Headless Chromium driven over fds 3/4: JSON messages terminated by NUL bytes."""

    def __init__(self, profile: Path) -> None:
        to_r, self._to_w = os.pipe()
        self._from_r, from_w = os.pipe()
        flags = [
            *("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run"),
            *("--disable-background-networking", "--disable-component-update", "--disable-sync"),
            f"--user-data-dir={profile}",
            "--remote-debugging-pipe",
        ]
        # Chromium reads commands on fd 3 and answers on fd 4: bash moves the pipe ends there.
        cmd = ["bash", "-c", f'exec "$0" "$@" 3<&{to_r} 4>&{from_w}', CHROMIUM, *flags]
        self.proc = subprocess.Popen(cmd, pass_fds=(to_r, from_w), stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)  # fmt: skip
        os.close(to_r)
        os.close(from_w)
        self._buf, self._id, self.events = b"", 0, []

    def send(self, method: str, params: dict | None = None, session: str | None = None) -> dict:
        self._id += 1
        msg = {"id": self._id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self._to_w, json.dumps(msg).encode() + b"\0")
        while True:
            reply = self._next()
            if reply.get("id") == self._id:
                assert "error" not in reply, reply
                return reply.get("result", {})
            self.events.append(reply)

    def wait_for(self, method: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while not any(e.get("method") == method for e in self.events):
            self.events.append(self._next(deadline - time.monotonic()))

    def _next(self, timeout: float = 30) -> dict:
        while b"\0" not in self._buf:
            ready, _, _ = select.select([self._from_r], [], [], max(timeout, 0.1))
            assert ready, "chromium did not answer"
            chunk = os.read(self._from_r, 1 << 20)
            assert chunk, "chromium closed the pipe"
            self._buf += chunk
        raw, self._buf = self._buf.split(b"\0", 1)
        return json.loads(raw)

    def close(self) -> None:
        try:
            self.send("Browser.close")
        finally:
            self.proc.wait(timeout=20)
            os.close(self._to_w)
            os.close(self._from_r)


def open_page(path: Path, profile: Path, expression: str = CHECK_IMAGES) -> tuple[Any, list[str]]:
    """Load a file; return (what ``expression`` gives, by default [alt, loaded] per image;
    console errors and exceptions)."""
    browser = Chromium(profile)
    try:
        target = browser.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = browser.send("Target.attachToTarget", {"targetId": target, "flatten": True})[
            "sessionId"
        ]
        for domain in ("Runtime", "Log", "Page"):
            browser.send(f"{domain}.enable", session=session)
        browser.send("Page.navigate", {"url": path.resolve().as_uri()}, session=session)
        browser.wait_for("Page.loadEventFired")
        value = browser.send("Runtime.evaluate", {"expression": expression,
                                                  "returnByValue": True}, session)  # fmt: skip
    finally:
        browser.close()
    errors = []
    for e in browser.events:
        p = e.get("params", {})
        if e.get("method") == "Runtime.exceptionThrown":
            errors.append(p["exceptionDetails"].get("text", "exception"))
        elif e.get("method") == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
            errors.append(str(p.get("args")))
        elif e.get("method") == "Log.entryAdded" and p["entry"].get("level") == "error":
            errors.append(p["entry"].get("text", ""))
    return json.loads(value["result"]["value"]), errors


@needs_chromium
def test_html_opens_in_chromium_without_errors(report: dict[str, Path], tmp_path: Path) -> None:
    images, errors = open_page(report["report.html"], tmp_path / "profile")
    assert errors == []
    assert sorted(alt for alt, _ in images) == sorted(PLOTS)
    assert all(ok for _, ok in images), images


@needs_chromium
def test_chromium_shows_intervals_and_the_tie_break(tmp_path: Path) -> None:
    """On the decide fixture: each score/loss figure is captioned with its 95% intervals, the
    ranked table prints them, and the budget table names the tie and the cheaper pick."""
    from decide_fixture import write_sweep

    files = build_report(write_sweep(tmp_path / "sweep", tasks=["qh_embedded"]), tmp_path / "r",
                         title="decide fixture", svg=False)  # fmt: skip
    shown = open_page(files["report.html"], tmp_path / "profile", expression=CHECK_TEXT)[0]
    heads = [h.split(",")[0].split(" with")[0] for h in shown["figures"] if "95% intervals" in h]
    assert heads == ["Ranking metric vs LoRA rank", "Peak VRAM vs ranking metric"], heads
    assert "0.800 (95% CI 0.539-1.061)" in shown["cells"]  # r16: 8 of 10, se 0.1333
    assert any("r16 and r4 are within noise" in c and "picking r4: 0.3 GiB less" in c
               for c in shown["cells"])  # fmt: skip


@needs_chromium
def test_chromium_check_catches_a_broken_page(tmp_path: Path) -> None:
    page = tmp_path / "broken.html"
    page.write_text("<html><body><img alt='gone' src='missing.png'>"
                    "<script>console.error('boom')</script></body></html>")  # fmt: skip
    images, errors = open_page(page, tmp_path / "profile")
    assert images == [["gone", False]]
    assert any("boom" in e for e in errors)
