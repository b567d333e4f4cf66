"""A DataTable whose rows are replaced on every poll without losing the row the user is on."""

from __future__ import annotations

from collections.abc import Sequence

from rich.text import Text
from textual.widgets import DataTable

Cell = str | Text
Row = tuple[str, Sequence[Cell]]  # (key, cells)


class LiveTable(DataTable[Cell]):
    def __init__(self, columns: Sequence[str], **kwargs: object) -> None:
        super().__init__(cursor_type="row", zebra_stripes=True, **kwargs)  # type: ignore[arg-type]
        self._column_labels = list(columns)
        self._shown: list[tuple[str, tuple[str, ...]]] = []

    def on_mount(self) -> None:
        self.add_columns(*self._column_labels)

    @property
    def selected_key(self) -> str | None:
        if not self.row_count:
            return None
        return self.coordinate_to_cell_key(self.cursor_coordinate).row_key.value

    def replace_rows(self, rows: Sequence[Row]) -> None:
        """Show `rows`; unchanged data is left alone (no flicker), and the cursor stays on the same key."""
        shown = [(key, tuple(str(c) for c in cells)) for key, cells in rows]
        if shown == self._shown:
            return
        self._shown = shown
        keep = self.selected_key
        self.clear()
        for key, cells in rows:
            self.add_row(*cells, key=key)
        keys = [key for key, _ in rows]
        if keep in keys:
            self.move_cursor(row=keys.index(keep), animate=False, scroll=True)
