"""The report renders from a fixture run folder alone, with valid PNG plots and each gain beside its
tax."""

import subprocess
import sys
from pathlib import Path

from test_release import ROOT, fixture_run

from cai.store import Records, Run, write_json_atomic


def score(x, n=20):
    return {"score": x, "low": max(0.0, x - 0.2), "high": min(1.0, x + 0.2), "n": n}


def test_the_report_renders_from_the_run_folder_alone(tmp_path):
    run = fixture_run(tmp_path)
    for n, (if_score, refusal, relevance) in enumerate(
        [(0.4, 0.1, 0.6), (0.5, 0.1, 0.58), (0.3, 0.2, 0.5)]
    ):
        write_json_atomic(
            run.stage_dir(n) / "eval.json",
            {
                "model": f"stage{n}",
                "guard": "self",
                "instruction_following": score(if_score),
                "over_refusal": score(refusal),
                "relevance": score(relevance),
                "off_topic": score(0.1),
                "length_words": {"score": 40.0, "low": 35.0, "high": 45.0, "n": 20},
                "harmlessness_unsafe": score(0.0),
                **(
                    {
                        "win_rate_vs_base": {
                            **score(0.1),
                            "wins": 2,
                            "ties": 18,
                            "losses": 0,
                            "against": "stage0",
                        }
                    }
                    if n
                    else {}
                ),
            },
        )
    critiques = Records(run.stage_dir(1) / "critiques.jsonl")
    critiques.append(
        {
            "id": "s1-seed00-r0-c",
            "ok": True,
            "principle_id": "follow-the-instruction",
            "critique": "Commas.",
        }
    )
    run.stage(2)["steps"]["pairs"].update(dropped_filter_relevance=4, dropped_filter_length=1)
    run.stage(2).update(
        promoted=False,
        gate={"against": "stage1", "failed": ["instruction_following fell from 0.500 to 0.300"]},
    )
    run.stage(0)["steps"] = {
        "evaluate": {
            "status": "done",
            "seconds": 30.0,
            "prompt_tokens": 100,
            "completion_tokens": 50,
        }
    }
    run.save()

    result = subprocess.run(
        [sys.executable, str(ROOT / "bootstrap.py"), "report", "--run", str(run.root)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    report = (run.root / "report.md").read_text()
    assert (
        "| 2 | 0.30 [0.10, 0.50] (20) |" in report
        and "instruction_following fell from 0.500 to 0.300" in report
    )
    # the tax beside the gain
    assert "over_refusal" in report and "2 won, 18 tied, 0 lost" in report
    assert "| follow-the-instruction | 1 | 1 | 1.0 |" in report
    # compliance beside relevance, off-topic share and length, with what the filters dropped
    assert (
        "| 2 | 0.30 [0.10, 0.50] (20) | 0.50 [0.30, 0.70] (20) | 0.10 [0.00, 0.30] (20) | 40.0 "
        "[35.0, 45.0] (20) | relevance 4, length 1 |" in report
    )
    assert "What this model can show" in report and "Example pairs" in report
    pngs = sorted(p.name for p in (run.root / "report").glob("*.png"))
    # test.png once the test set is evaluated
    assert pngs == ["dev.png", "pairs.png", "principles.png", "time.png", "tokens.png"]
    for name in pngs:
        data = (run.root / "report" / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000
        assert f"report/{name}" in report


def test_report_of_a_folder_that_is_not_a_run_says_so(tmp_path):
    result = subprocess.run(
        [sys.executable, str(ROOT / "bootstrap.py"), "report", "--run", str(tmp_path / "nothing")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2 and "has no manifest.json" in result.stderr


def verdict(final, run=None):
    """The dev set's reading of stage 1 against the base, as the report words it."""
    from cai.measuring.verdict import DEV, compare, wording

    base = {
        "instruction_following": score(0.15, 200) | {"low": 0.10, "high": 0.20},
        "relevance": score(0.6) | {"low": 0.57, "high": 0.63},
    }
    rows, better, worse = compare(run or Run(Path("/nonexistent")), 1, 0, final, base, DEV, None)
    return wording("dev set", better, worse), "\n".join(rows)


def test_the_verdict_pairs_the_items_where_their_records_are_at_hand(tmp_path):
    """+0.07 in compliance is inside the unpaired intervals' reach; paired over the same 200
    items (14 gained, none lost) it is a change."""
    run = Run(tmp_path)
    for n, passed in ((0, range(30)), (1, range(44))):
        rows = Records(run.stage_dir(n) / "eval" / "instruction_following.jsonl")
        for i in range(200):
            rows.append(
                {
                    "id": str(i),
                    "metrics": {
                        "prompt_level_strict_acc": i in passed,
                        "prompt_level_loose_acc": i in passed,
                    },
                }
            )
    final = {"instruction_following": {"score": 0.22, "low": 0.16, "high": 0.28, "n": 200}}
    assert (
        verdict(final)[0]
        == "On the dev set, **shows no change**: no score moved beyond its interval."
    )
    last, table = verdict(final, run=run)
    assert last == "On the dev set, **shows a change**: instruction_following better, none worse."
    assert "| +0.070 [+0.035, +0.105] (paired, 200) | better |" in table


def test_the_verdict_counts_a_change_only_beyond_both_intervals():
    same_relevance = {"score": 0.6, "low": 0.57, "high": 0.63, "n": 200}
    last, table = verdict(
        {
            "instruction_following": {"score": 0.30, "low": 0.24, "high": 0.36, "n": 200},
            "relevance": same_relevance,
        }
    )
    assert last == "On the dev set, **shows a change**: instruction_following better, none worse."
    assert (
        "| instruction_following | 0.15 [0.10, 0.20] (200) | 0.30 [0.24, 0.36] (200) | +0.150 "
        "[+0.072, +0.228] (unpaired, 200) | better |" in table
    )
    last, _ = verdict(
        {
            "instruction_following": {"score": 0.22, "low": 0.16, "high": 0.28, "n": 200},
            "relevance": same_relevance,
        }
    )
    # +0.07 is inside the intervals' reach
    assert last == "On the dev set, **shows no change**: no score moved beyond its interval."
    last, _ = verdict(
        {
            "instruction_following": {"score": 0.46, "low": 0.39, "high": 0.53, "n": 200},
            "relevance": {"score": 0.51, "low": 0.47, "high": 0.55, "n": 200},
        }
    )
    # DESIGN.md's hack, read as such
    assert last == "On the dev set, **mixed**: instruction_following better, relevance worse."
    from cai.measuring.verdict import verdict as section

    assert (
        section(Run(Path("/nonexistent")), promoted=[])[-2]
        == "No stage was promoted: the final policy is the base model."
    )


def report_of_stage_two(run: Run) -> str:
    """The report with stages 1 and 2 promoted and the test set run beside stage 2."""
    from cai.run.report import write_report

    run.stage(2)["steps"]["test"] = {"status": "done"}
    run.stage(1).update(promoted=True)
    run.stage(2).update(promoted=True)
    run.save()
    return write_report(run).read_text()


def test_the_verdict_reads_the_test_set_paired_and_labels_the_dev_set_apart(tmp_path):
    """IFEval and HarmBench at the base and the final policy, item by item; the dev set beside them,
    labelled; the plots a page wide, each stage beside the base on the same items."""
    import json

    run = fixture_run(tmp_path)
    for n, kept in ((0, range(150)), (2, range(200))):
        rows = Records(run.stage_dir(n) / "test" / "ifeval.jsonl")
        for i in range(541):
            ok = i in kept
            rows.append(
                {
                    "id": str(1000 + i),
                    "finish": "end",
                    "metrics": {
                        "prompt_level_strict_acc": ok,
                        "prompt_level_loose_acc": ok,
                        "inst_level_strict_acc": [ok],
                        "inst_level_loose_acc": [ok],
                    },
                }
            )
        caps = {
            "ifeval": {
                "cap": 1280,
                "n": 541,
                "reached_cap": 9,
                "stopped_repeating": 200,
                "share_reached_cap": 0.0166,
                "changed_if_cut_at_half": 0,
            }
        }
        write_json_atomic(
            run.stage_dir(n) / "test.json",
            {
                "model": f"stage{n}",
                "set": "test",
                "caps": caps,
                "ifeval_prompt_strict": score(len(kept) / 541, 541),
            },
        )
        write_json_atomic(
            run.stage_dir(n) / "eval.json",
            {"model": f"stage{n}", "set": "dev", "instruction_following": score(0.3)},
        )
    report = report_of_stage_two(run)
    assert (
        "**Test set** (the verdict): IFEval (541 prompts" in report
        and "against `stage2` (the final policy)" in report
    )
    assert (
        "| ifeval_prompt_strict | 0.28 [0.08, 0.48] (541) | 0.37 [0.17, 0.57] (541) | +0.092 "
        "[+0.068, +0.117] (paired, 541) | better |" in report
    )
    assert (
        "**Dev set** (the project's suites" in report
        and "On the test set, **shows a change**: ifeval_prompt_strict better" in report
    )
    assert "ifeval (cap 1280 new tokens): 9 and 9 of 541 reached the cap" in report
    from PIL import Image

    assert (
        Image.open(run.root / "report" / "dev.png").size[0] == 1200
        and Image.open(run.root / "report" / "test.png").size[0] == 1200
    )
    assert (
        json.loads((run.root / "manifest.json").read_text())["stages"]["stage2"]["steps"]["test"][
            "status"
        ]
        == "done"
    )


def test_a_profile_without_a_test_set_has_no_verdict_on_it(tmp_path):
    """`cpu-dev` runs no benchmark: its test step writes a test.json with no score in it, and the
    report says there is no verdict rather than that nothing moved."""

    run = fixture_run(tmp_path)
    for n in (0, 2):
        write_json_atomic(run.stage_dir(n) / "test.json", {"model": f"stage{n}", "set": "test"})
        write_json_atomic(
            run.stage_dir(n) / "eval.json",
            {"model": f"stage{n}", "set": "dev", "instruction_following": score(0.3)},
        )
    report = report_of_stage_two(run)
    assert "**Test set**: not evaluated" in report and "On the test set" not in report
    assert "On the dev set, **shows no change**" in report
