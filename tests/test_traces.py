"""Trace readers: each public format parses; malformed lines are named by number; nothing vanishes."""

import json

import numpy as np
import pytest

from costmodel.traces import read_trace
from costmodel.workload_dist import SimWorkload, draw
from planner import PlannerInputError

BURSTGPT = """Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type
5,ChatGPT,472,18,490,Conversation log
45,ChatGPT,1087,0,1087,Conversation log
46,GPT-4,417,334,751,API log
47.5,ChatGPT,1360,304,1664,Conversation log
"""

AZURE = """TIMESTAMP,ContextTokens,GeneratedTokens
2023-11-16 18:15:46.6805900,374,44
2023-11-16 18:15:50.9951690,396,109
2023-11-16 18:15:51.2224670,879,55
"""

MOONCAKE = [
    {"timestamp": 0, "input_length": 6955, "output_length": 52, "hash_ids": [0, 1, 2]},
    {"timestamp": 1500, "input_length": 6472, "output_length": 26, "hash_ids": [3, 4]},
    {"timestamp": 2250, "input_length": 8338, "output_length": 11, "hash_ids": []},
]


def test_burstgpt_parses_and_lists_failed_requests_by_line(tmp_path):
    f = tmp_path / "burst.csv"
    f.write_text(BURSTGPT)
    tr = read_trace(f)
    assert tr.fmt == "burstgpt"
    assert tr.isl.tolist() == [472, 417, 1360] and tr.osl.tolist() == [18, 334, 304]
    assert tr.arrival_s.tolist() == pytest.approx([0.0, 41.0, 42.5])
    # the failed request (0 response tokens, line 3) is kept out of the requests but reported
    assert len(tr.excluded) == 1 and tr.excluded[0][0] == 3 and "zero response" in tr.excluded[0][1]


def test_azure_parses_seven_digit_fractions(tmp_path):
    f = tmp_path / "AzureLLMInferenceTrace_conv.csv"
    f.write_text(AZURE)
    tr = read_trace(f)
    assert tr.fmt == "azure" and tr.n == 3 and not tr.excluded
    assert tr.isl.tolist() == [374, 396, 879] and tr.osl.tolist() == [44, 109, 55]
    assert tr.arrival_s.tolist() == pytest.approx([0.0, 4.314579, 4.541877], abs=1e-6)


def test_mooncake_jsonl_timestamps_are_milliseconds(tmp_path):
    f = tmp_path / "mooncake.jsonl"
    f.write_text("\n".join(json.dumps(r) for r in MOONCAKE) + "\n")
    tr = read_trace(f)
    assert tr.fmt == "mooncake" and tr.arrival_s.tolist() == pytest.approx([0.0, 1.5, 2.25])
    assert tr.isl.tolist() == [6955, 6472, 8338] and tr.osl.tolist() == [52, 26, 11]
    assert tr.rate_rps == pytest.approx(2 / 2.25)


@pytest.mark.parametrize(("name", "text", "line", "words"), [
    ("b.csv", BURSTGPT.replace("46,GPT-4,417", "46,GPT-4,abc"), 4, "'Request tokens' is 'abc'"),
    ("b.csv", BURSTGPT.replace("47.5,ChatGPT,1360,304", "47.5,ChatGPT,1360,-3"), 5, "whole number"),
    ("a.csv", AZURE.replace("2023-11-16 18:15:50.9951690", "yesterday"), 3, "neither seconds nor a datetime"),
    ("a.csv", AZURE + "2023-11-16 18:15:52.0,12\n", 5, "'GeneratedTokens' is empty"),
    ("m.jsonl", json.dumps(MOONCAKE[0]) + "\n{not json\n", 2, "not valid JSON"),
    ("m.jsonl", json.dumps(MOONCAKE[0]) + "\n" + json.dumps({"timestamp": 3, "input_length": 5}) + "\n", 2,
     "'output_length' is missing"),
])
def test_malformed_line_is_named_by_number(tmp_path, name, text, line, words):
    f = tmp_path / name
    f.write_text(text)
    with pytest.raises(PlannerInputError) as exc:
        read_trace(f)
    msg = str(exc.value)
    assert f"line {line}:" in msg and words in msg and "\n" not in msg


def test_every_malformed_line_is_counted(tmp_path):
    f = tmp_path / "b.csv"
    f.write_text(BURSTGPT.replace("5,ChatGPT,472", "5,ChatGPT,?")
                 + "48,ChatGPT,x,1,1,Conversation log\n49,ChatGPT,2,y,1,Conversation log\n")
    with pytest.raises(PlannerInputError, match=r"line 2: .*\(3 malformed lines: 2, 6, 7\)"):
        read_trace(f)


def test_missing_column_unknown_format_and_missing_file(tmp_path):
    f = tmp_path / "x.csv"
    f.write_text("Timestamp,Model,Request tokens\n1,a,2\n")
    with pytest.raises(PlannerInputError, match="cannot tell the trace format"):
        read_trace(f)
    with pytest.raises(PlannerInputError, match="column 'Response tokens' is missing"):
        read_trace(f, "burstgpt")
    with pytest.raises(PlannerInputError, match="does not exist"):
        read_trace(tmp_path / "nope.csv")


def test_trace_workload_replays_or_rescales_timing(tmp_path):
    f = tmp_path / "burst.csv"
    f.write_text(BURSTGPT)
    own = draw(SimWorkload(trace=str(f)))
    assert own.n == 3 and own.arrival_s.tolist() == pytest.approx([0.0, 41.0, 42.5])
    fast = draw(SimWorkload(trace=str(f), rate_rps=2.0))
    assert fast.arrival_s[-1] == pytest.approx(1.0)  # two gaps at 2 req/s
    assert np.array_equal(fast.isl, own.isl)


def test_simulate_replays_a_trace_and_reports_what_it_left_out(tmp_path):
    from planner import simulate

    f = tmp_path / "burst.csv"
    f.write_text(BURSTGPT)
    res = simulate("llama-3.1-8b", "dgx-h100", workload={"trace": str(f)})
    assert res.num_requests == 3 and res.completed.all()
    assert res.arrival_s.tolist() == pytest.approx([0.0, 41.0, 42.5])
    assert res.osl.tolist() == [18, 334, 304]
    assert any("1 trace requests excluded (first: line 3" in n for n in res.notes)
