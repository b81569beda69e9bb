"""Progress output: a live bar on a terminal, a few plain lines in a log file."""
import io

from fitgap.progress import progress


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_a_log_file_gets_a_few_plain_lines_not_thousands_of_redraws():
    log = io.StringIO()
    bar = progress(range(20000), desc="epoch 0", file=log)
    for i in bar:
        if i % 10 == 0:
            bar.set_postfix(loss=f"{i:.4f}")  # a training loop's postfix must not force a line each time
    text = log.getvalue()
    assert "\r" not in text and text.endswith("\n")
    lines = text.splitlines()
    assert 1 <= len(lines) <= 3 and all(len(x) < 200 for x in lines), lines
    assert "20000/20000" in lines[-1] and "epoch 0" in lines[-1] and "loss=" in lines[-1]


def test_a_terminal_keeps_the_live_bar():
    tty = Terminal()
    for _ in progress(range(50), desc="x", file=tty, mininterval=0):
        pass
    assert tty.getvalue().count("\r") > 10
