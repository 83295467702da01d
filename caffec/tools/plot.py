"""Charts of a training log: the loss, the test scores and the learning rate against the
iterations or the seconds, as the chart types of Caffe's ``tools/extra/plot_training_log.py``.

The log is what ``caffec train`` (or Caffe's ``caffe train``) writes on stderr, in glog's
format. Four lines are read:

* ``Iteration N (... iter/s, ...), loss = X`` (or Caffe's older ``Iteration N, loss = X``):
  the training loss, averaged over the solver's ``average_loss`` iterations;
* ``Iteration N, lr = X``: the learning rate;
* ``Iteration N, Testing net (#K)``: a test pass of test net K starts;
* ``Test net output #I: NAME = X``: one of its outputs, a loss when the line ends with
  ``(* W = Y loss)``.

The seconds are counted from the log's first glog time stamp. Several logs can be drawn on
one chart (one line each), as Caffe's script does.
"""

from __future__ import annotations

import datetime as _dt
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from caffec.errors import UserError
from caffec.formats.atomic import write_atomically

PathLike = str | os.PathLike[str]

# glog's prefix: severity, MMDD, HH:MM:SS.micro (the year is not written)
_STAMP = re.compile(r"^[IWEF](\d\d)(\d\d) (\d\d):(\d\d):(\d\d)\.(\d+)")
_TRAIN_LOSS = re.compile(r"\] Iteration (\d+)(?: \([^)]*\))?, loss = (\S+)")
_LEARNING_RATE = re.compile(r"\] Iteration (\d+), lr = (\S+)")
_TESTING = re.compile(r"\] Iteration (\d+), Testing net \(#(\d+)\)")
_TEST_OUTPUT = re.compile(r"Test net output #(\d+): (\S+) = (\S+)(.*)$")

# what each chart shows: (the values, their axis label)
QUANTITIES = {
    "test-accuracy": "test accuracy",
    "test-loss": "test loss",
    "learning-rate": "learning rate",
    "train-loss": "training loss",
}
# Caffe's plot_training_log.py numbers its chart types 0..7; the same charts by number
CAFFE_CHART_TYPES = {
    0: ("test-accuracy", "iters"),
    1: ("test-accuracy", "seconds"),
    2: ("test-loss", "iters"),
    3: ("test-loss", "seconds"),
    4: ("learning-rate", "iters"),
    5: ("learning-rate", "seconds"),
    6: ("train-loss", "iters"),
    7: ("train-loss", "seconds"),
}
CHARTS = ("summary", *QUANTITIES)


@dataclass
class Series:
    """Points of one quantity: iterations, seconds since the log's start, values."""

    iters: list[int] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    values: list[float] = field(default_factory=list)

    def add(self, iteration: int, second: float, value: float) -> None:
        self.iters.append(iteration)
        self.seconds.append(second)
        self.values.append(value)

    def x(self, axis: str) -> list[float]:
        return list(self.seconds) if axis == "seconds" else [float(i) for i in self.iters]


@dataclass
class TrainingLog:
    """What one log says: the training loss, the learning rate, and each test output by its
    name (``accuracy``; ``accuracy (#1)`` for test net 1), split into scores and losses."""

    path: Path
    train_loss: Series = field(default_factory=Series)
    learning_rate: Series = field(default_factory=Series)
    test_scores: dict[str, Series] = field(default_factory=dict)
    test_losses: dict[str, Series] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.path.stem

    def accuracies(self) -> dict[str, Series]:
        """The test outputs that are not losses (accuracies, top-k scores): what an
        accuracy chart shows."""
        return dict(self.test_scores)

    def quantity(self, what: str) -> dict[str, Series]:
        """The series a chart of ``what`` draws, by label."""
        if what == "train-loss":
            return {"train loss": self.train_loss} if self.train_loss.iters else {}
        if what == "learning-rate":
            return {"lr": self.learning_rate} if self.learning_rate.iters else {}
        if what == "test-loss":
            return {f"test {name}": series for name, series in self.test_losses.items()}
        return self.accuracies()


def _number(text: str) -> float | None:
    try:
        return float(text.rstrip(","))
    except ValueError:
        return None


def parse_log(path: PathLike) -> TrainingLog:
    """Read the training log at ``path``; a log with no training or test line is an error."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        raise UserError(
            f"no log file {path}",
            hint="give the file `caffec train ... 2> LOG` (or `2>&1 | tee LOG`) wrote",
        ) from None
    except IsADirectoryError:
        raise UserError(f"{path} is a folder, not a training log") from None
    except OSError as err:
        raise UserError(f"cannot read {path}: {err.strerror}") from None
    log = TrainingLog(path)
    start: _dt.datetime | None = None
    year = 2000  # a leap year, so that a log written on 29 February parses
    previous: _dt.datetime | None = None
    second = 0.0
    test_net = 0
    test_iteration: int | None = None
    for line in text.splitlines():
        stamp = _STAMP.match(line)
        if stamp:
            month, day, hour, minute, sec, micro = (int(g) for g in stamp.groups())
            try:
                when = _dt.datetime(year, month, day, hour, minute, sec, int(f"{micro:06d}"[:6]))
            except ValueError:
                continue  # not a glog line after all
            if previous is not None and when < previous:  # the log went past New Year
                year += 1
                when = when.replace(year=year)
            previous = when
            start = start or when
            second = (when - start).total_seconds()
        if match := _TRAIN_LOSS.search(line):
            if (value := _number(match[2])) is not None:
                log.train_loss.add(int(match[1]), second, value)
        elif match := _LEARNING_RATE.search(line):
            if (value := _number(match[2])) is not None:
                log.learning_rate.add(int(match[1]), second, value)
        elif match := _TESTING.search(line):
            test_iteration, test_net = int(match[1]), int(match[2])
        elif (match := _TEST_OUTPUT.search(line)) and test_iteration is not None:
            value = _number(match[3])
            if value is None:
                continue
            label = match[2] if test_net == 0 else f"{match[2]} (#{test_net})"
            table = log.test_losses if re.search(r"\bloss\)\s*$", match[4]) else log.test_scores
            table.setdefault(label, Series()).add(test_iteration, second, value)
    if not log.train_loss.iters and not log.test_scores and not log.test_losses:
        raise UserError(
            f"{path} has no training lines ('Iteration N ..., loss = X') nor test outputs "
            "('Test net output #0: accuracy = X')",
            hint="give the log `caffec train` (or `caffe train`) wrote on stderr, e.g. "
            "`caffec train -solver S 2>&1 | tee LOG`",
        )
    return log


def _pyplot_free_figure(width: float, height: float):  # noqa: ANN202 - matplotlib's types
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise UserError(
            "caffec plot needs matplotlib",
            hint="pip install 'caffec[draw]' (or pip install matplotlib)",
        ) from None
    figure = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(figure)
    return figure


def _draw(axes, logs: Sequence[TrainingLog], what: str, axis: str) -> bool:  # noqa: ANN001
    """Draw ``what`` of every log on ``axes``; whether anything was drawn."""
    drawn = False
    for log in logs:
        for label, series in log.quantity(what).items():
            name = label if len(logs) == 1 else f"{log.name}: {label}"
            sparse = len(series.iters) < 40  # test passes: markers show where they were
            axes.plot(series.x(axis), series.values, marker="o" if sparse else None,
                      markersize=3, linewidth=1.2, label=name)  # fmt: skip
            drawn = True
    axes.set_xlabel("seconds" if axis == "seconds" else "iterations")
    axes.set_ylabel(QUANTITIES[what])
    axes.grid(True, alpha=0.3)
    if what == "learning-rate" and drawn:
        values = [v for log in logs for s in log.quantity(what).values() for v in s.values]
        if min(values) > 0 and max(values) / min(values) > 20:
            axes.set_yscale("log")
    if drawn:
        axes.legend(fontsize="small")
    return drawn


def plot_logs(
    logs: Sequence[PathLike],
    output: PathLike,
    chart: str = "summary",
    axis: str = "iters",
    title: str | None = None,
) -> list[TrainingLog]:
    """Draw ``chart`` of the training ``logs`` into ``output`` (its suffix is the format:
    ``.png``, ``.svg``, ``.pdf``, ...), written whole then renamed into place. ``summary``
    draws the losses (training and test) beside the test accuracy; the other charts draw
    one quantity, as one of Caffe's chart types. ``axis``: ``iters`` or ``seconds``."""
    if chart not in CHARTS:
        raise UserError(f"no chart '{chart}'", hint=f"charts: {', '.join(CHARTS)}")
    if axis not in ("iters", "seconds"):
        raise UserError(f"no x axis '{axis}'", hint="iters or seconds")
    output = Path(output)
    suffix = output.suffix.lower().lstrip(".")
    parsed = [parse_log(path) for path in logs]
    if chart == "summary":
        has_accuracy = any(log.accuracies() for log in parsed)
        figure = _pyplot_free_figure(11 if has_accuracy else 6.5, 4.2)
        loss_axes = figure.add_subplot(1, 2 if has_accuracy else 1, 1)
        _draw(loss_axes, parsed, "train-loss", axis)
        _draw(loss_axes, parsed, "test-loss", axis)
        loss_axes.set_ylabel("loss")
        loss_axes.set_title("loss")
        if has_accuracy:
            accuracy_axes = figure.add_subplot(1, 2, 2)
            _draw(accuracy_axes, parsed, "test-accuracy", axis)
            accuracy_axes.set_title("test accuracy")
    else:
        figure = _pyplot_free_figure(6.5, 4.2)
        axes = figure.add_subplot(1, 1, 1)
        if not _draw(axes, parsed, chart, axis):
            names = ", ".join(str(log.path) for log in parsed)
            raise UserError(
                f"{names} has no {QUANTITIES[chart]} to plot",
                hint="the summary chart draws what the log has",
            )
        axes.set_title(f"{QUANTITIES[chart]} vs. {'seconds' if axis == 'seconds' else 'iters'}")
    if title:
        figure.suptitle(title, wrap=True)
    figure.tight_layout()
    import io

    buffer = io.BytesIO()
    try:
        figure.savefig(buffer, format=suffix or "png")
    except ValueError as err:  # matplotlib's "Format 'xyz' is not supported"
        raise UserError(
            f"cannot write {output}: {err}", hint="end the file name with .png, .svg or .pdf"
        ) from None
    write_atomically(output, [buffer.getvalue()])
    return parsed


def describe(log: TrainingLog) -> str:
    """One line about a parsed log: its points and its last values."""
    parts = [f"{len(log.train_loss.iters)} training points"]
    if log.train_loss.iters:
        parts.append(
            f"last loss {log.train_loss.values[-1]:g} at iteration {log.train_loss.iters[-1]}"
        )
    tests = {**log.test_scores, **log.test_losses}
    if tests:
        last = next(iter(tests.values()))
        parts.append(f"{len(last.iters)} test passes")
        parts.extend(f"last test {name} {s.values[-1]:g}" for name, s in tests.items())
    return f"{log.path}: " + ", ".join(parts)
