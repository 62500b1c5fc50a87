"""The run store: records append once, survive a torn last line, and resume by id."""

import json

from cai.store import Records, Run


def test_records_append_and_reload(tmp_path):
    path = tmp_path / "r.jsonl"
    recs = Records(path)
    recs.append({"id": "a", "x": 1})
    recs.append({"id": "b", "x": 2})
    recs.append({"id": "a", "x": 99})  # an id already written is not written again
    again = Records(path)
    assert [r["id"] for r in again] == ["a", "b"] and again.get("a")["x"] == 1
    assert len(path.read_text().splitlines()) == 2


def test_torn_last_line_is_dropped_and_the_file_repaired(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text(json.dumps({"id": "a"}) + "\n" + '{"id": "b", "x": ')
    recs = Records(path)
    assert list(recs.by_id) == ["a"]
    recs.append({"id": "b", "x": 2})
    assert [json.loads(line)["id"] for line in path.read_text().splitlines()] == ["a", "b"]


def test_manifest_marks_steps_done(tmp_path):
    run = Run(tmp_path / "run")
    run.manifest = {"config": {}}
    assert not run.step_done(1, "propose")
    run.mark_done(1, "propose", 1.5, ok=3)
    reopened = Run(tmp_path / "run")
    assert reopened.step_done(1, "propose") and not reopened.stage_done(1)
    assert reopened.stage(1)["steps"]["propose"] == {"status": "done", "seconds": 1.5, "ok": 3}


def test_verify_finds_changed_missing_and_unrecorded_files(tmp_path):
    import bootstrap

    run = Run(tmp_path / "run")
    run.manifest = {"run": "run", "config": {}, "stages": {}}
    (run.stage_dir(1) / "adapter").mkdir(parents=True)
    (run.stage_dir(1) / "pairs.jsonl").write_text('{"id": "a"}\n')
    (run.stage_dir(1) / "adapter" / "weights").write_bytes(b"\0" * 10)
    run.mark_done(1, "gate", 1.0)
    assert set(run.manifest["stages"]["stage1"]["files"]) == {"pairs.jsonl", "adapter/weights"}
    assert bootstrap.main(["verify", "--run", str(run.root)]) == 0
    (run.stage_dir(1) / "pairs.jsonl").write_text('{"id": "b"}\n')
    (run.stage_dir(1) / "adapter" / "weights").unlink()
    (run.stage_dir(1) / "stray.txt").write_text("x")
    problems = Run(run.root).verify()
    assert problems[0] == "stage1/adapter/weights: missing" and problems[1].startswith(
        "stage1/pairs.jsonl: changed"
    )
    assert problems[2:] == ["stage1/stray.txt: not in the manifest"]
    assert bootstrap.main(["verify", "--run", str(run.root)]) == 1


def test_records_keep_answers_holding_unicode_line_separators(tmp_path):
    """Found at stage 6 of the cpu-full run: an answer held U+2028, which json.dumps leaves raw
    and str.splitlines() splits on, so the resumed step could not read its own records."""
    from cai.store import Records, read_jsonl

    path = tmp_path / "responses.jsonl"
    rows = Records(path)
    rows.append({"id": "a", "text": "one\u2028two\x85three"})
    rows.append({"id": "b", "text": "plain"})
    assert Records(path).get("a")["text"] == "one\u2028two\x85three" and len(Records(path)) == 2
    assert [r["id"] for r in read_jsonl(path)] == ["a", "b"]
