"""One archive's grid of elites, coloured by quality, with a cursor that selects an elite.

Two BCs make a 2-D grid (first BC across, second BC upwards), one BC a single row, none a single cell; more than
two are projected onto the first two, each square keeping its best elite. Where the widget is wide enough each
square shows its quality ×100; otherwise a square is one character of a half block (two grid rows per line), so a
paper-sized 15 × 15 archive fits in 15 × 8 characters.
"""

from __future__ import annotations

from math import ceil
from pathlib import Path

from rich.color import Color
from rich.style import Style
from rich.text import Text
from textual.binding import Binding
from textual.geometry import Size
from textual.message import Message
from textual.widget import Widget

from cycleqd.monitor.colors import CURSOR, EMPTY, ink_on, quality_color
from cycleqd.monitor.queries.evolution_run import ArchiveView, CellView

NUMBER_WIDTH = 3  # " 73", "100": quality ×100
MAX_NUMBER_ROWS = 8  # taller grids switch to half blocks, or the screen has no room left for the rest


def project(archive: ArchiveView) -> dict[tuple[int, ...], CellView]:
    """The cells on the (at most) two axes drawn, each keeping its best elite."""
    shown: dict[tuple[int, ...], CellView] = {}
    for cell, view in archive.cells.items():
        key = cell[:2]
        if key not in shown or view.quality > shown[key].quality:
            shown[key] = view
    return shown


class Heatmap(Widget, can_focus=True):
    DEFAULT_CSS = Path(__file__).with_name("heatmap.tcss").read_text()
    BINDINGS = [
        Binding("left", "move(-1, 0)", "←", show=False),
        Binding("right", "move(1, 0)", "→", show=False),
        Binding("up", "move(0, 1)", "↑", show=False),
        Binding("down", "move(0, -1)", "↓", show=False),
        Binding("enter", "choose", "Lineage"),
    ]

    class CursorMoved(Message):
        """The elite under a heatmap's cursor changed (the cursor moved, or a new elite took the cell)."""

        def __init__(self, heatmap: Heatmap, cell: tuple[int, ...], elite: CellView | None) -> None:
            super().__init__()
            self.heatmap = heatmap
            self.cell = cell
            self.elite = elite

    class Chosen(CursorMoved):
        """Enter on a cell: show its elite's lineage."""

    def __init__(self, archive: ArchiveView, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.archive = archive
        self.cells = project(archive)
        self.cursor: tuple[int, ...] = (0,) * self.dims
        self._placed = False  # the cursor starts on the best elite, once there is one, until the user moves it
        self._announced: tuple[tuple[int, ...], CellView | None] | None = None
        self._place_on_best()
        self._update_titles()

    # -- data ------------------------------------------------------------------------------------------------------

    @property
    def dims(self) -> int:
        return min(len(self.archive.bc_tasks), 2)

    @property
    def elite(self) -> CellView | None:
        return self.cells.get(self.cursor)

    @property
    def best(self) -> float:
        return max((c.quality for c in self.archive.cells.values()), default=0.0)

    def show(self, archive: ArchiveView) -> None:
        resized = (archive.bins, len(archive.bc_tasks)) != (self.archive.bins, len(self.archive.bc_tasks))
        self.archive = archive
        self.cells = project(archive)
        if resized:
            self.cursor, self._placed = (0,) * self.dims, False
        self._place_on_best()
        self._update_titles()
        self.refresh(layout=resized)
        self._announce()

    def _place_on_best(self) -> None:
        if self._placed or not self.cells:
            return
        self.cursor = max(self.cells, key=lambda cell: (self.cells[cell].quality, cell))
        self._placed = True

    def _update_titles(self) -> None:
        a = self.archive
        coverage = len(a.cells) / a.cells_total if a.cells_total else 0.0
        self.border_title = f"{a.task_name} · best {self.best:.2f}"
        axes = " ".join(f"{axis} {name}" for axis, name in zip(("x", "y"), a.bc_tasks, strict=False))
        self.border_subtitle = f"{axes} · {coverage:.0%}" if axes else f"{coverage:.0%}"

    def _announce(self, always: bool = False) -> None:
        state = (self.cursor, self.elite)
        if always or state != self._announced:
            self._announced = state
            self.post_message(self.CursorMoved(self, self.cursor, self.elite))

    # -- actions ---------------------------------------------------------------------------------------------------

    def action_move(self, dx: int, dy: int) -> None:
        if self.dims == 0:
            return
        bins = self.archive.bins
        x = min(max(self.cursor[0] + dx, 0), bins - 1)
        if self.dims == 1:
            self.cursor = (x,)
        else:
            self.cursor = (x, min(max(self.cursor[1] + dy, 0), bins - 1))
        self._placed = True
        self.refresh()
        self._announce()

    def action_choose(self) -> None:
        self.post_message(self.Chosen(self, self.cursor, self.elite))

    def on_focus(self) -> None:
        # Whichever heatmap has the focus owns the lineage view.
        self.refresh()
        self._announce(always=True)

    def on_blur(self) -> None:
        self.refresh()

    # -- drawing ---------------------------------------------------------------------------------------------------

    def numbers_fit(self, width: int) -> bool:
        rows = self.archive.bins if self.dims == 2 else 1
        return self.archive.bins * NUMBER_WIDTH <= width and rows <= MAX_NUMBER_ROWS

    def grid_lines(self, width: int) -> int:
        if self.dims < 2:
            return 1
        return self.archive.bins if self.numbers_fit(width) else ceil(self.archive.bins / 2)

    def get_content_width(self, container: Size, viewport: Size) -> int:
        bins = self.archive.bins if self.dims else 1
        return max(bins * NUMBER_WIDTH, len(self.border_title or "") + 2)

    def get_content_height(self, container: Size, viewport: Size, width: int) -> int:
        return self.grid_lines(width) + 1  # + the caption

    def caption(self) -> str:
        where = f"({','.join(map(str, self.cursor))})" if self.cursor else "(·)"
        elite = self.elite
        if elite is None:
            return f"{where} empty"
        return f"{where} {elite.quality:.3f} #{elite.candidate_id} g{elite.generation}"

    def render(self) -> Text:
        width = self.content_size.width
        text = Text(no_wrap=True, overflow="crop")
        if self.numbers_fit(width):
            self._draw_numbers(text)
        else:
            self._draw_blocks(text, cell_width=2 if 2 * self.archive.bins <= width else 1)
        text.append(self.caption(), style="bold" if self.has_focus else "")
        return text

    def _rows(self) -> list[int | None]:
        """Grid rows from the top line down; None stands for "no second axis"."""
        return list(range(self.archive.bins - 1, -1, -1)) if self.dims == 2 else [None]

    def _key(self, x: int, y: int | None) -> tuple[int, ...]:
        return () if self.dims == 0 else (x,) if y is None else (x, y)

    def _columns(self) -> range:
        return range(self.archive.bins if self.dims else 1)

    def _draw_numbers(self, text: Text) -> None:
        best = self.best
        for y in self._rows():
            for x in self._columns():
                key = self._key(x, y)
                elite = self.cells.get(key)
                cursor = key == self.cursor
                marked = cursor and self.has_focus
                if elite is None:
                    text.append(" · ", style=Style(bgcolor=CURSOR) if marked else Style(dim=True, underline=cursor))
                    continue
                background = CURSOR if marked else quality_color(elite.quality, best)
                label = f"{round(elite.quality * 100):>{NUMBER_WIDTH}d}"[-NUMBER_WIDTH:]
                text.append(
                    label, style=Style(color=ink_on(background), bgcolor=background, bold=cursor, underline=cursor)
                )
            text.append("\n")

    def _color(self, x: int, y: int | None) -> Color:
        key = self._key(x, y)
        if key == self.cursor and self.has_focus:
            return CURSOR
        elite = self.cells.get(key)
        return EMPTY if elite is None else quality_color(elite.quality, self.best)

    def _draw_blocks(self, text: Text, cell_width: int) -> None:
        rows = self._rows()
        if rows == [None]:
            for x in self._columns():
                text.append("█" * cell_width, style=Style(color=self._color(x, None)))
            text.append("\n")
            return
        for top in range(0, len(rows), 2):
            upper = rows[top]
            lower = rows[top + 1] if top + 1 < len(rows) else None
            for x in self._columns():
                color = self._color(x, upper)
                below = self._color(x, lower) if lower is not None else None
                text.append("▀" * cell_width, style=Style(color=color, bgcolor=below))
            text.append("\n")
