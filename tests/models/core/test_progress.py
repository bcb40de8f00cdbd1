"""Plain progress lines when stderr is not a terminal; bars on one; nothing when switched off."""

import io

from slimflow.models.core.progress import PlainProgress, fmt_seconds, progress_bar, progress_note


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_plain_progress_writes_a_line_per_interval_with_rate_and_eta():
    out, clock = io.StringIO(), Clock()
    p = PlainProgress(10, "teacher epoch 1/2", interval_s=30, stream=out, clock=clock)
    for _ in range(3):
        clock.t += 5
        p.update()
    assert out.getvalue() == ""  # 15 s: not due yet
    p.set_postfix(loss="0.4123")
    for _ in range(3):
        clock.t += 5
        p.update()
    lines = out.getvalue().splitlines()
    assert lines == [
        "teacher epoch 1/2: 6/10 batches (60%), 0m30s elapsed, ETA 0m20s, 5.00 s/batch, loss 0.4123"
    ]
    for _ in range(4):
        clock.t += 5
        p.update()
    p.close()
    p.close()  # once
    lines = out.getvalue().splitlines()
    assert len(lines) == 2 and lines[1].startswith("teacher epoch 1/2: 10/10 batches (100%), 0m50s elapsed")
    assert lines[1].endswith("(done)") and "ETA" not in lines[1]


def test_fast_work_reports_a_rate_per_second_and_long_work_hours():
    out, clock = io.StringIO(), Clock()
    p = PlainProgress(1000, "bench", unit="setting", interval_s=0, stream=out, clock=clock)
    clock.t += 2
    p.update(100)
    assert "100/1000 settings (10%)" in out.getvalue() and "50.0 setting/s" in out.getvalue()
    assert fmt_seconds(3725) == "1h02m" and fmt_seconds(59.6) == "1m00s"


def test_the_bar_is_chosen_by_the_setting_and_the_terminal(capsys):
    off = progress_bar(5, "x", enabled=False)
    off.update()
    off.close()
    progress_note(off, "never shown")
    assert capsys.readouterr().err == ""
    plain = progress_bar(5, "x", enabled=None)  # pytest's captured stderr is not a terminal
    assert isinstance(plain, PlainProgress)
    progress_note(plain, "epoch 1: loss 0.5")
    plain.close()
    err = capsys.readouterr().err
    assert "epoch 1: loss 0.5" in err and "x: 0/5 batches (0%)" in err
    from tqdm.auto import tqdm

    bar = progress_bar(5, "x", enabled=True)  # asked for: a bar even without a terminal
    assert isinstance(bar, tqdm)
    bar.close()
