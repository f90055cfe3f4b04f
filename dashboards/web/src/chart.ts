// Time-series charts (uPlot): one line per series, time on x, a labelled y axis with its unit. Gaps (null) stay
// gaps: a window without a measurement is not drawn as zero.
import uPlot from "uplot";
import "uplot/dist/uPlot.min.css";
import { h } from "./dom";

export interface Series {
  label: string;
  /// Seconds since the epoch → value; missing times are gaps.
  points: Map<number, number | null>;
  dash?: boolean;
}

const COLOURS = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#ca8a04", "#db2777"];

export function lineChart(title: string, yLabel: string, series: Series[], empty: string): HTMLElement {
  const box = h("figure", { class: "chart" }, h("figcaption", {}, title));
  const withData = series.filter((s) => [...s.points.values()].some((v) => v !== null));
  if (withData.length === 0) {
    box.append(h("p", { class: "empty" }, empty));
    return box;
  }
  const times = [...new Set(withData.flatMap((s) => [...s.points.keys()]))].sort((a, b) => a - b);
  const data: uPlot.AlignedData = [
    times,
    ...withData.map((s) => times.map((t) => s.points.get(t) ?? null)),
  ];
  const plotHolder = h("div", { class: "chart-plot" });
  box.append(plotHolder);
  const opts: uPlot.Options = {
    width: 600,
    height: 240,
    series: [
      { label: "time" },
      ...withData.map((s, i) => ({
        label: s.label,
        stroke: COLOURS[i % COLOURS.length],
        width: 2,
        dash: s.dash ? [6, 4] : undefined,
        points: { show: true, size: 5 },
        spanGaps: false,
      })),
    ],
    axes: [
      { label: "time (local)", labelSize: 20 },
      { label: yLabel, labelSize: 20, size: 60 },
    ],
    scales: { x: { time: true } },
    legend: { live: true },
  };
  const plot = new uPlot(opts, data, plotHolder);
  // Follow the container's width (laptop or phone).
  const fit = () => plot.setSize({ width: Math.max(plotHolder.clientWidth, 240), height: 240 });
  new ResizeObserver(fit).observe(plotHolder);
  requestAnimationFrame(fit);
  return box;
}
