// uPlot charts for the console (no hand-written charting): bars of counts per day, and credentials' age against their
// maxAgeDays. uPlot draws on a canvas, so every chart also has its numbers in a table for screen readers and print.
import { html, type PropertyValues } from 'lit';
import uPlot from 'uplot';
import { LightElement } from './base.ts';

export interface ChartSeries {
  label: string;
  values: Array<number | null>;
  /** A CSS class whose `color` is the series' colour (kept in the stylesheet, not inline: CSP). */
  colorVar: string;
  kind: 'bars' | 'points';
}

/** Reads a custom property of the stylesheet: the one place colours are defined. */
function cssColor(name: string): string {
  return getComputedStyle(document.documentElement).getPropertyValue(name).trim() || '#333';
}

export class KtChart extends LightElement {
  static override properties = {
    caption: { type: String },
    xLabels: { attribute: false },
    series: { attribute: false },
    yLabel: { type: String },
  };
  declare caption: string;
  declare xLabels: string[];
  declare series: ChartSeries[];
  declare yLabel: string;
  #plot: uPlot | undefined;
  #resize = new ResizeObserver(() => this.#fit());

  constructor() {
    super();
    this.caption = '';
    this.xLabels = [];
    this.series = [];
    this.yLabel = '';
  }

  override connectedCallback(): void {
    super.connectedCallback();
    this.#resize.observe(this);
  }

  override disconnectedCallback(): void {
    super.disconnectedCallback();
    this.#resize.disconnect();
    this.#plot?.destroy();
    this.#plot = undefined;
  }

  #fit(): void {
    const host = this.querySelector<HTMLElement>('.chart-canvas');
    if (this.#plot && host) this.#plot.setSize({ width: Math.max(300, host.clientWidth), height: 240 });
  }

  protected override updated(changed: PropertyValues): void {
    if (!changed.has('series') && !changed.has('xLabels')) return;
    const host = this.querySelector<HTMLElement>('.chart-canvas');
    if (!host) return;
    this.#plot?.destroy();
    const labels = this.xLabels;
    const n = labels.length;
    const groups = this.series.filter((s) => s.kind === 'bars').length;
    let barIndex = 0;
    const opts: uPlot.Options = {
      width: Math.max(300, host.clientWidth),
      height: 240,
      // A static legend (the series' names and colours): the values are in the table below the chart.
      legend: { show: true, live: false },
      cursor: { drag: { x: false, y: false } },
      scales: { x: { time: false, range: [-0.5, n - 0.5] } },
      axes: [
        {
          values: (_u, splits) => splits.map((i) => labels[Math.round(i)] ?? ''),
          splits: () => {
            // At most about 10 labels along the axis.
            const step = Math.max(1, Math.ceil(n / 10));
            return labels.map((_, i) => i).filter((i) => i % step === 0);
          },
          stroke: cssColor('--text'),
          grid: { stroke: cssColor('--grid') },
        },
        { label: this.yLabel, stroke: cssColor('--text'), grid: { stroke: cssColor('--grid') } },
      ],
      series: [
        { label: this.yLabel === 'days' ? 'credential' : 'day' },
        ...this.series.map((s) => {
          const color = cssColor(s.colorVar);
          if (s.kind === 'points') {
            return { label: s.label, stroke: color, width: 0, points: { show: true, size: 8, fill: color } };
          }
          // Side by side bars: with two series, one on each side of the day's tick.
          const place = barIndex++;
          const align = groups === 1 ? 0 : place === 0 ? 1 : -1;
          return {
            label: s.label,
            stroke: color,
            fill: color,
            width: 1,
            paths: uPlot.paths.bars?.({ size: [groups === 1 ? 0.6 : 0.4, 40], align: align as -1 | 0 | 1 }),
            points: { show: false },
          };
        }),
      ],
    };
    const data: uPlot.AlignedData = [labels.map((_, i) => i), ...this.series.map((s) => s.values)];
    this.#plot = new uPlot(opts, data, host);
  }

  override render() {
    return html`<figure class="chart">
      <figcaption>${this.caption}</figcaption>
      <div class="chart-canvas" aria-hidden="true"></div>
      <details class="chart-data">
        <summary>The chart's numbers</summary>
        <table>
          <thead>
            <tr>
              <th scope="col">${this.yLabel ? 'Item' : ''}</th>
              ${this.series.map((s) => html`<th scope="col">${s.label}</th>`)}
            </tr>
          </thead>
          <tbody>
            ${this.xLabels.map(
              (label, i) =>
                html`<tr>
                  <th scope="row">${label}</th>
                  ${this.series.map((s) => html`<td>${s.values[i] ?? '—'}</td>`)}
                </tr>`,
            )}
          </tbody>
        </table>
      </details>
    </figure>`;
  }
}

customElements.define('kt-chart', KtChart);
