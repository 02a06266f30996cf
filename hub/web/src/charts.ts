// ECharts, tree-shaken to what the dashboard draws. Each chart resizes with its box and is
// disposed with the page; its container carries data-points (how many values it drew).

import * as echarts from "echarts/core";
import { BarChart, LineChart, PieChart, ScatterChart } from "echarts/charts";
import {
  DataZoomComponent,
  GridComponent,
  LegendComponent,
  TooltipComponent,
} from "echarts/components";
import { CanvasRenderer } from "echarts/renderers";
import type { EChartsCoreOption } from "echarts/core";

echarts.use([
  BarChart,
  LineChart,
  PieChart,
  ScatterChart,
  DataZoomComponent,
  GridComponent,
  LegendComponent,
  TooltipComponent,
  CanvasRenderer,
]);

const live: { chart: echarts.ECharts; observer: ResizeObserver }[] = [];

/** Draw `option` into `el` (a chart box); `points` is recorded for tests and empty states. */
export function chart(el: HTMLElement, option: EChartsCoreOption, points: number): echarts.ECharts {
  el.dataset.points = String(points);
  const c = echarts.init(el, undefined, { renderer: "canvas" });
  c.setOption({ animation: points < 2000, textStyle: { fontFamily: "inherit" }, ...option });
  const observer = new ResizeObserver(() => c.resize());
  observer.observe(el);
  live.push({ chart: c, observer });
  return c;
}

/** Dispose every chart (on leaving a page). */
export function disposeCharts() {
  for (const { chart: c, observer } of live.splice(0)) {
    observer.disconnect();
    c.dispose();
  }
}

export const palette = ["#2f6fde", "#e8743b", "#19a979", "#ed4a7b", "#945ecf", "#13a4b4", "#525df4", "#bf399e"];

/** A time x axis over the page's range (the whole range shows, data or not). */
export function timeAxis(range?: { from: Date; to: Date }): EChartsCoreOption {
  return {
    xAxis: { type: "time", min: range?.from.getTime(), max: range?.to.getTime() },
    tooltip: { trigger: "axis" },
    grid: { left: 60, right: 20, top: 30, bottom: 50 },
    dataZoom: [{ type: "inside" }, { type: "slider", height: 18, bottom: 8 }],
  };
}
