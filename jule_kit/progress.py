"""What a run shows while it works: rich progress bars, or nothing with --quiet."""
from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table


def fmt(value, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}" if isinstance(value, float) else str(value)


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
                TextColumn("{task.fields[info]}"), console=self.console, transient=True,
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
            self.progress.reset(self._tasks[name], total=total, description=description, info=info, visible=True)
        else:
            self._tasks[name] = self.progress.add_task(description, total=total, info=info)

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

    def period(self, row: dict) -> None:
        parts = [f"period {row['period']}: {row['clusters']} clusters"]
        for key in ("nmi", "acc", "ari"):
            if key in row:
                parts.append(f"{key.upper()} {row[key]:.4f}")
        if row.get("loss") is not None:
            parts.append(f"loss {row['loss']:.4f}")
        parts.append(f"{row['seconds']:.1f} s")
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
