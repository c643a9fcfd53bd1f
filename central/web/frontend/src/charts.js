// ECharts options for the console's few chart shapes.
const PALETTE = ["#409eff", "#e6a23c", "#67c23a", "#f56c6c", "#9b59b6", "#909399"];

const base = (labels, series) => ({
  color: PALETTE,
  tooltip: { trigger: "axis" },
  legend: { top: 0, data: series.map((s) => s.name) },
  grid: { left: 40, right: 16, top: 32, bottom: 28, containLabel: true },
  xAxis: { type: "category", data: labels, axisLabel: { hideOverlap: true } },
  yAxis: { type: "value", minInterval: 1 },
});

// series = [{name, values}]
export const bars = (labels, series) => ({
  ...base(labels, series),
  series: series.map((s) => ({ name: s.name, type: "bar", data: s.values })),
});

export const lines = (labels, series) => ({
  ...base(labels, series),
  series: series.map((s) => ({ name: s.name, type: "line", data: s.values, smooth: true })),
});
