"""What a run shows while it works: rich progress bars, or nothing with --quiet."""
from __future__ import annotations

import time

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text


def fmt(value, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def duration(seconds: float) -> str:
    """``seconds`` as people read a wait: 45 s, 12 min, 2 h 05 min."""
    seconds = max(0.0, seconds)
    if seconds < 90:
        return f"{seconds:.0f} s"
    minutes = round(seconds / 60)
    return f"{minutes} min" if minutes < 120 else f"{minutes // 60} h {minutes % 60:02d} min"


def time_left(seconds: float) -> str:
    """How long is left and the clock time it ends: 'about 12 min left (done ~21:55)'."""
    return f"about {duration(seconds)} left (done ~{time.strftime('%H:%M', time.localtime(time.time() + seconds))})"


class EtaColumn(ProgressColumn):
    """Time left in a bar: until the task's ``ends_at`` field (a time.time(), set by the caller who knows
    the run's schedule) or, without it, elapsed time per step so far times the steps left. Rich's own
    TimeRemainingColumn averages over the last 30 s only, too short for epochs of a minute."""

    def render(self, task) -> Text:
        ends_at = task.fields.get("ends_at")
        eta = None if ends_at is None else ends_at - time.time()
        if eta is None and task.total and task.completed and task.elapsed:
            eta = task.elapsed / task.completed * (task.total - task.completed)
        if eta is None or task.finished:
            return Text("")
        return Text(f"ETA {duration(eta)}", style="cyan")


class Reporter:
    """Progress for periods, merges and epochs; one printed line per period."""

    def __init__(self, console: Console | None = None, quiet: bool = False, err_console: Console | None = None) -> None:
        self.console = console or Console()
        self.err_console = err_console or Console(stderr=True)
        self.quiet = quiet
        self.progress: Progress | None = None
        self._tasks: dict[str, int] = {}

    def __enter__(self) -> "Reporter":
        if not self.quiet:
            self.progress = Progress(
                TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                EtaColumn(), TextColumn("{task.fields[info]}"), console=self.console, transient=True,
            )
            self.progress.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self.progress is not None:
            self.progress.__exit__(*exc)
            self.progress = None

    def bar(self, name: str, total: int, description: str, info: str = "") -> None:
        if self.progress is None:
            return
        if name in self._tasks:
            self.progress.reset(self._tasks[name], total=total, description=description, info=info, visible=True,
                                ends_at=None)
        else:
            self._tasks[name] = self.progress.add_task(description, total=total, info=info, ends_at=None)

    def estimate(self, name: str, total: int | None = None, seconds_left: float | None = None) -> None:
        """Re-estimate bar ``name``: its length ``total`` and the seconds left until it ends."""
        if self.progress is None or name not in self._tasks:
            return
        kwargs = {} if total is None else {"total": total}
        if seconds_left is not None:
            kwargs["ends_at"] = time.time() + seconds_left
        self.progress.update(self._tasks[name], **kwargs)

    def advance(self, name: str, completed: int | None = None, info: str | None = None) -> None:
        if self.progress is None or name not in self._tasks:
            return
        kwargs = {"info": info} if info is not None else {}
        if completed is None:
            self.progress.advance(self._tasks[name])
            if kwargs:
                self.progress.update(self._tasks[name], **kwargs)
        else:
            self.progress.update(self._tasks[name], completed=completed, **kwargs)

    def hide(self, name: str) -> None:
        if self.progress is not None and name in self._tasks:
            self.progress.update(self._tasks[name], visible=False)

    def log(self, message: str) -> None:
        if not self.quiet:
            self.console.print(message, highlight=False, markup=False)  # paths may contain [brackets]

    def warn(self, message: str) -> None:
        """Shown even with --quiet (on stderr, so a script's one stdout line stays clean)."""
        self.err_console.print(f"warning: {message}", highlight=False, markup=False, soft_wrap=True)

    def period(self, row: dict, left: float | None = None) -> None:
        """One line for a finished period; ``left``: the run's estimated seconds still to go."""
        parts = [f"period {row['period']}: {row['clusters']} clusters"]
        for key in ("nmi", "acc", "ari"):
            if key in row:
                parts.append(f"{key.upper()} {row[key]:.4f}")
        if row.get("loss") is not None:
            parts.append(f"loss {row['loss']:.4f}")
        parts.append(f"{row['seconds']:.1f} s")
        if left is not None:
            parts.append(time_left(left))
        self.log(", ".join(parts))

    def table(self, rows: list[dict], summary: dict) -> None:
        if self.quiet:
            return
        table = Table(title=f"{summary.get('recipe_name', 'run')} on {summary['dataset']} ({summary['device']})")
        cols = ["period", "clusters", "nmi", "acc", "ari", "nmi_prev", "loss", "seconds"]
        cols = [c for c in cols if any(c in r for r in rows)]
        for c in cols:
            table.add_column(c, justify="right")
        for r in rows:
            table.add_row(*[fmt(r.get(c)) for c in cols])
        self.console.print(table)
