"""Leave-one-group-out bookkeeping: which fits it needs, their cache, and the layout-pair ordering score."""

from dataclasses import replace

import pytest

from costmodel.calibration import logo, ship
from costmodel.calibration.profile import EngineTuning
from costmodel.calibration.silicon import load_rows, supported


@pytest.fixture
def rows(silicon_csv):
    return [r for r in load_rows(silicon_csv) if supported(r)]


def test_every_fitted_group_gets_one_fit_of_its_own_engine_and_donors_come_first(rows):
    jobs = logo.fit_jobs(rows)
    groups = {r.group: r.backend for r in rows if logo.is_fitted(r)}
    held = [(e, g) for e, g in jobs if g != logo.ALL]
    assert sorted(held) == sorted((e, g) for g, e in groups.items())  # one per group, its own engine
    assert not {r.group for r in rows if not logo.is_fitted(r)} & {g for _, g in held}
    donors = [e for e, g in jobs if g == logo.ALL]
    assert donors == sorted(set(ship.BORROW.values())) and jobs[:len(donors)] == [(d, logo.ALL) for d in donors]


def test_fit_cache_round_trips_and_is_keyed_by_engine_group_and_digest(tmp_path):
    t = EngineTuning(compute_scale=1.1, iteration_overhead_ms=2.0, fitted_on="x")
    a = logo.FitCache("d1", tmp_path)
    assert a.get("vllm", "g") is None
    a.put("vllm", "g", t)
    assert a.get("vllm", "g") == t
    assert a.get("sglang", "g") is None and a.get("vllm", "h") is None
    assert logo.FitCache("d2", tmp_path).get("vllm", "g") is None  # other code: other fits
    assert logo.FitCache("d1", tmp_path, sample=20).get("vllm", "g") is None


def test_cached_tuning_is_used_without_fitting(rows, tmp_path):
    cache = logo.FitCache("d", tmp_path)
    group = next(r.group for r in rows if r.backend == "sglang" and logo.is_fitted(r))
    t = EngineTuning(memory_scale=0.9, fitted_on="cached")
    cache.put("sglang", group, t)
    assert logo.tuning_without("sglang", group, rows, cache) is not None
    assert logo.tuning_without("sglang", group, rows, cache) == t


def test_code_digest_changes_with_the_code(tmp_path):
    extra = tmp_path / "data.csv"
    extra.write_text("a\n")
    before = logo.code_digest([extra])
    assert before == logo.code_digest([extra])
    extra.write_text("b\n")
    assert logo.code_digest([extra]) != before


def test_layout_pairs_are_scored_by_measured_order(rows):
    base = next(r for r in rows if r.layout.tp == 1 and r.layout.pp == 1)
    a = replace(base, layout=base.layout.model_copy(update={"tp": 1}), tpot_ms=10.0, ttft_ms=100.0)
    b = replace(base, layout=base.layout.model_copy(update={"tp": 2}), tpot_ms=20.0, ttft_ms=100.0)
    other_load = replace(b, concurrency=base.concurrency + 1)  # not a pair with a: another load
    right = [logo.Prediction(a, 100.0, 11.0, True), logo.Prediction(b, 100.0, 19.0, True),
             logo.Prediction(other_load, 100.0, 1.0, True)]
    wrong = [logo.Prediction(a, 100.0, 25.0, True), logo.Prediction(b, 100.0, 19.0, True)]
    assert logo.pair_agreement(right)["tpot"] == (1, 1)
    assert logo.pair_agreement(wrong)["tpot"] == (0, 1)
    # tok/s per device: a runs 1 device at twice b's speed on 2: a is 4x better, as predicted in `right`
    assert logo.pair_agreement(right)["tok_s_per_device"] == (1, 1)
    assert logo.pair_agreement(right, min_gap=0.6)["tpot"] == (0, 0)  # 10 vs 20 ms differ by 50%
