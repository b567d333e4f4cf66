"""The QD metrics of every archive over the generations: the latest values, and a sparkline of one metric
(QD-score, coverage or best quality; `m` cycles) drawn on one scale for all archives so they compare."""

from __future__ import annotations

from pathlib import Path

from rich.text import Text
from textual.geometry import Size
from textual.reactive import reactive
from textual.widget import Widget

from cycleqd.monitor.queries.evolution_run import GenerationView

METRICS = (("qd_score", "QD-score"), ("coverage", "coverage"), ("best", "best quality"))
BARS = "▁▂▃▄▅▆▇█"
NAME_WIDTH = 8


def spark(values: list[float], width: int, high: float) -> str:
    """`values` in `width` characters; when there are more values than characters each character shows the largest
    value of its stretch (the metrics only grow, so that is the stretch's last)."""
    if width <= 0 or not values:
        return ""
    if len(values) > width:
        step = len(values) / width
        values = [max(values[int(i * step) : max(int((i + 1) * step), int(i * step) + 1)]) for i in range(width)]
    top = len(BARS) - 1
    return "".join(BARS[round(min(max(v / high, 0.0), 1.0) * top)] if high > 0 else BARS[0] for v in values)


class QDChart(Widget):
    DEFAULT_CSS = Path(__file__).with_name("qd_chart.tcss").read_text()
    metric = reactive(0)

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.archives: list[str] = []
        self.history: list[GenerationView] = []

    def show(self, archives: list[str], history: list[GenerationView]) -> None:
        if (archives, history) != (self.archives, self.history):
            self.archives, self.history = archives, history
            self.refresh(layout=True)

    def next_metric(self) -> None:
        self.metric = (self.metric + 1) % len(METRICS)

    def series(self, archive: str, key: str) -> list[float]:
        return [float(g.metrics.get(archive, {}).get(key, 0.0)) for g in self.history]

    def render(self) -> Text:
        key, label = METRICS[self.metric]
        text = Text(no_wrap=True, overflow="crop")
        if not self.history:
            text.append("no generation committed yet", style="dim")
            return text
        first, last = self.history[0].number, self.history[-1].number
        text.append(f"{label}, generations {first}–{last}", style="bold")
        text.append("   m: next metric\n", style="dim")
        high = max((v for a in self.archives for v in self.series(a, key)), default=0.0)
        for archive in self.archives:
            latest = self.history[-1].metrics.get(archive, {})
            numbers = (
                f"{archive[:NAME_WIDTH]:<{NAME_WIDTH}} cov {float(latest.get('coverage', 0.0)):>4.0%} "
                f"qd {float(latest.get('qd_score', 0.0)):>6.2f} best {float(latest.get('best', 0.0)):.2f} "
            )
            text.append(numbers)
            width = self.content_size.width - len(numbers)
            text.append(spark(self.series(archive, key), width, high), style="green")
            text.append("\n")
        return text

    def get_content_height(self, container: Size, viewport: Size, width: int) -> int:
        return 1 + max(len(self.archives), 1) if self.history else 1
