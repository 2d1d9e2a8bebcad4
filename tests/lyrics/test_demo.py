"""The demo's closing lines count the answer formats the fine-tuned model learned and say plainly
that the tiny profile cannot show accuracy."""

from lyrics.demo import what_tiny_shows


def result(benchmark: str, total: int, unparsable: int) -> dict:
    return {"benchmark": benchmark, "metrics": {"accuracy": 0.0, "total": total, "unparsable": unparsable}}


def test_closing_lines_count_the_formats_and_name_the_limits():
    text = what_tiny_shows([result("sample-rec", 20, 3), result("sample-scienceqa", 48, 8), result("sample-vqa", 48, 0)], 64, 260)
    assert "17 of 20 REC answers are boxes" in text
    assert "40 of 48 multiple-choice answers name an option" in text
    assert "It cannot show accuracy" in text and "random weights" in text and "paper profile" in text
    assert "64 steps on 260 examples" in text
