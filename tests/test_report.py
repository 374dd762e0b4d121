"""The report: self-contained HTML with inline SVG, PNG fronts, summary.md, the CLI, and a real browser."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from matplotlib import image as mpimg

from planner import plan
from planner.cli import main
from planner.report import FRONTS, load, write_report
from planner.report.svg import cluster_layout, device_roles

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def plans_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("plans")
    # a TPOT objective between the fastest and slowest layouts, so there are rejected plans too
    request = dict(workload={"isl": 1024, "osl": 256, "concurrency": 128}, precision="fp8", power_caps=(None, 500, 400))
    tpots = sorted(p.metrics["tpot_ms"] for p in plan("llama-3.1-8b", "dgx-h100x2", **request).plans)
    r = plan("llama-3.1-8b", "dgx-h100x2", slo={"tpot_ms": (tpots[0] + tpots[-1]) / 2}, **request)
    assert r.rejected and r.plans
    r.save(out)
    return out


@pytest.fixture(scope="module")
def written(plans_dir: Path) -> dict[str, Path]:
    return write_report(plans_dir)


def test_report_files_are_written_next_to_plans(written, plans_dir):
    assert set(written) == {"report.html", "summary.md"} | {f"front_{s.key}" for s in FRONTS}
    assert all(p.parent == plans_dir and p.stat().st_size > 0 for p in written.values())


def test_html_is_self_contained_with_hover_titles(written, plans_dir):
    page = written["report.html"].read_text()
    for needle in ("http:", "https:", "src=", "href=", "@import", "<script", "<link", "url("):
        assert needle not in page.lower(), needle
    data = load(plans_dir)
    assert page.count("<svg") >= len(FRONTS) + len(data.spotlight())
    # every plan is a dot with a hover title on each front chart
    assert page.count("<circle") >= len(FRONTS) * len(data.plans)
    for spec in FRONTS:
        assert spec.title in page
        for p in data.front(spec):
            assert p["label"] in page
    assert len(re.findall(r"<title>", page)) > len(data.plans)
    assert "Rejected layouts" in page and f"{len(data.rejected)} layouts rejected" in page


def test_rejected_plans_are_on_no_front(plans_dir):
    data = load(plans_dir)
    rejected = {p["label"] for p in data.rejected}
    for spec in FRONTS:
        assert not rejected & {p["label"] for p in data.front(spec)}


def test_pngs_are_real_charts(written):
    for spec in FRONTS:
        img = mpimg.imread(written[f"front_{spec.key}"])
        assert img.ndim == 3 and img.shape[0] > 300 and img.shape[1] > 400
        assert float(img[..., :3].std()) > 0.05


def test_summary_states_the_energy_ratio(written, plans_dir):
    text = written["summary.md"].read_text()
    ratio = load(plans_dir).energy_ratio()
    assert ratio is not None and ratio.ratio >= 1.0
    assert f"**{ratio.ratio:.2f}x**" in text
    assert ratio.latency_optimal["metrics"]["tpot_ms"] <= ratio.energy_optimal["metrics"]["tpot_ms"]


def test_device_roles_pack_tp_groups_contiguously():
    roles = device_roles({"tp": 2, "pp": 2, "attention_dp": 1, "ep": 1}, replicas=3, devices=16)
    assert [r["replica"] for r in roles[:12]] == [0] * 4 + [1] * 4 + [2] * 4
    assert [(r["stage"], r["tp"]) for r in roles[:4]] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert roles[12:] == [None] * 4


def test_layout_drawing_has_one_box_per_device(plans_dir):
    data = load(plans_dir)
    shape = data.request["cluster_shape"]
    for p in data.spotlight():
        svg = cluster_layout(shape, p)
        devices = sum(g["num_nodes"] * g["devices_per_node"] for g in shape)
        assert svg.count("<title>device ") == devices
        assert svg.count("unused by this plan") == devices - p["devices"]


def test_cli_report_and_its_errors(plans_dir, tmp_path, capsys):
    assert main(["report", str(plans_dir), "--out", str(tmp_path)]) == 0
    assert (tmp_path / "report.html").is_file() and (tmp_path / "summary.md").is_file()
    assert main(["report", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: plans_dir:")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "plans.json").write_text("{not json")
    assert main(["report", str(tmp_path / "bad")]) == 2


def test_cli_plan_takes_power_caps(tmp_path, capsys):
    rc = main(["plan", "--model", "tiny-llama", "--cluster", "dgx-h100", "--isl", "128", "--osl", "32",
               "--concurrency", "8", "--power-caps", "700,none,500", "--out", str(tmp_path), "--json"])
    assert rc == 0
    saved = json.loads((tmp_path / "plans.json").read_text())
    assert saved["request"]["power_caps"] == [700.0, None, 500.0]
    assert {p["power_cap_w"] for p in saved["plans"]} == {700.0, None, 500.0}
    capsys.readouterr()
    assert main(["plan", "--model", "tiny-llama", "--cluster", "dgx-h100", "--isl", "128", "--osl", "32",
                 "--concurrency", "8", "--power-caps", "700,fast"]) == 2
    assert "power cap" in capsys.readouterr().err


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (.ci/run installs it)")
def test_report_renders_in_headless_chromium(written, tmp_path):
    shot = tmp_path / "shot.png"
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1400,1800", f"--screenshot={shot}",
           written["report.html"].resolve().as_uri()]
    subprocess.run(cmd, check=True, capture_output=True, timeout=120)
    img = mpimg.imread(shot)[..., :3]
    assert img.shape[0] >= 1000 and img.shape[1] >= 1000
    ink = np.mean(np.any(img < 0.9, axis=-1))  # share of pixels that are not (near) white
    assert ink > 0.03 and float(img.std()) > 0.05
    colours = {tuple(c) for c in (img[::7, ::7] * 255).astype(int).reshape(-1, 3)}
    assert len(colours) > 50  # text, axes, dots in several colours: a rendered page, not a blank one
