"""The one style of every table tunesmith prints in a terminal: readable at 80 columns, no figure ever cut.

rich squeezes a table wider than the terminal by cutting cells ("bas…", "0.6…"). A `Table` from here never does:
its columns get at least the width of their longest word (the rest of the room shared out), and when even those
do not fit, its columns are split over several tables, one under the other, each repeating the first column, so
every row stays readable. Only a single word wider than the whole terminal folds onto a second line.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from rich.console import Console, ConsoleOptions, RenderResult
from rich.measure import Measurement
from rich.padding import Padding
from rich.table import Column
from rich.table import Table as RichTable


class Table(RichTable):
    """rich's Table (same arguments; title and caption left-aligned unless told otherwise), rendered to fit the terminal."""

    def __init__(self, *headers: str | Column, **kwargs: Any) -> None:
        kwargs.setdefault("title_justify", "left")
        kwargs.setdefault("caption_justify", "left")
        super().__init__(*headers, **kwargs)

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        if not self.columns:
            yield from super().__rich_console__(console, options)
            return
        width = options.max_width
        ranges = [column_range(console, options, c) for c in self.columns]
        if sum(hi for _, hi in ranges) + self.chrome(len(ranges)) <= width:
            yield from super().__rich_console__(console, options)
            return
        groups = self.groups([lo for lo, _ in ranges], width)
        for k, group in enumerate(groups):
            part = self.part(group, [ranges[i] for i in group], width, first=k == 0, last=k == len(groups) - 1)
            yield from RichTable.__rich_console__(part, console, options)

    def chrome(self, n: int) -> int:
        """Columns of the terminal a table of `n` columns spends on padding and borders."""
        _, right, _, left = Padding.unpack(self.padding)
        borders = (n - 1 + (2 if self.show_edge else 0)) if self.box else 0
        return n * (left + right) + borders

    def groups(self, minimums: list[int], width: int) -> list[list[int]]:
        """Column indices per part: the first column, then as many more as fit at their minimum widths."""
        groups: list[list[int]] = [[0]]
        for i in range(1, len(minimums)):
            trial = [*groups[-1], i]
            if len(groups[-1]) > 1 and sum(minimums[j] for j in trial) + self.chrome(len(trial)) > width:
                groups.append([0, i])
            else:
                groups[-1] = trial
        return groups

    def part(self, group: list[int], ranges: list[tuple[int, int]], width: int, first: bool, last: bool) -> RichTable:
        """The columns `group` of this table as a table of its own, with widths that fit `width`."""
        widths = share(ranges, width - self.chrome(len(group)))
        part = RichTable(
            title=self.title if first else None,
            caption=self.caption if last else None,
            box=self.box,
            show_header=self.show_header,
            show_edge=self.show_edge,
            show_lines=self.show_lines,
            pad_edge=self.pad_edge,
            padding=self.padding,
            header_style=self.header_style,
            title_justify=self.title_justify,
            caption_justify=self.caption_justify,
            row_styles=self.row_styles,
        )
        for i, w in zip(group, widths, strict=True):
            c = self.columns[i]
            part.add_column(c.header, justify=c.justify, style=c.style, header_style=c.header_style, width=w, overflow="fold")
        cells = [list(self.columns[i].cells) for i in group]
        for r, row in enumerate(self.rows):
            part.add_row(*(col[r] for col in cells), style=row.style, end_section=row.end_section)
        return part


def column_range(console: Console, options: ConsoleOptions, column: Column) -> tuple[int, int]:
    """(longest word, widest line) of a column's header and cells, in terminal cells."""
    parts: Iterable[Any] = [column.header, *column.cells]
    measured = [Measurement.get(console, options, p) for p in parts]
    low = max([m.minimum for m in measured] + [column.min_width or 0])
    return low, max(low, *(m.maximum for m in measured))


def share(ranges: list[tuple[int, int]], room: int) -> list[int]:
    """Widths within `room`: each column its minimum, then what is left shared out up to each one's maximum
    (the narrowest needs first). A minimum wider than the room is cut to it (the cell folds, nothing is lost)."""
    widths = [min(lo, max(room, 1)) for lo, _ in ranges]
    left = room - sum(widths)
    order = sorted(range(len(ranges)), key=lambda i: ranges[i][1] - widths[i])
    for n, i in enumerate(order):
        give = min(ranges[i][1] - widths[i], max(left, 0) // (len(order) - n))
        widths[i] += give
        left -= give
    return widths
