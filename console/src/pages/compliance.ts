// Compliance: the report (GET /v1/compliance) with a chart of each credential's age against its maxAgeDays, the CSV
// export as the API writes it, and a printable view (print CSS: navigation and buttons left out, every row on paper)
// that an auditor saves as PDF for an evidence pack.
import { html, nothing } from 'lit';
import { type Compliance, download, getJson, type Me } from '../api.ts';
import { badge, LightElement, labelsText, pageShown, problem, when } from '../base.ts';

/** The chart shows the credentials closest to (or past) their limit; the table shows them all. */
const CHART_MAX = 40;

class KtCompliance extends LightElement {
  static override properties = {
    me: { attribute: false },
    report: { state: true },
    error: { state: true },
    exported: { state: true },
  };
  declare me: Me;
  declare report: Compliance | null;
  declare error: unknown;
  declare exported: string;

  constructor() {
    super();
    this.report = null;
    this.error = null;
    this.exported = '';
  }

  override connectedCallback(): void {
    super.connectedCallback();
    void this.#load();
  }

  override firstUpdated(): void {
    pageShown(this, 'Compliance');
  }

  async #load(): Promise<void> {
    try {
      this.report = await getJson<Compliance>('/v1/compliance');
      this.error = null;
    } catch (err) {
      this.error = err;
    }
  }

  async #csv(): Promise<void> {
    try {
      const name = await download('/v1/compliance?format=csv', 'text/csv', 'keyturn-compliance.csv');
      this.exported = `Saved ${name}`;
    } catch (err) {
      this.error = err;
    }
  }

  override render() {
    const r = this.report;
    const who = `${this.me.name} (${this.me.roles.join(', ')})`;
    return html`<h1>Compliance</h1>
      <p class="print-only">Keyturn compliance report as of ${when(r?.asOf)}, printed by ${who}.</p>
      <div class="actions no-print">
        <button type="button" id="export-csv" @click=${this.#csv}>Export CSV</button>
        <button type="button" class="secondary" id="print" @click=${() => window.print()}>
          Print or save as PDF
        </button>
        <span role="status" aria-live="polite">${this.exported}</span>
      </div>
      ${problem(this.error)}
      ${r ? this.#report(r) : this.error ? nothing : html`<p aria-live="polite">Loading…</p>`}`;
  }

  #report(r: Compliance) {
    const t = r.totals;
    const judged = r.credentials.filter((c) => c.maxAgeDays !== null);
    const worst = [...judged]
      .sort((a, b) => b.ageDays / (b.maxAgeDays ?? 1) - a.ageDays / (a.maxAgeDays ?? 1))
      .slice(0, CHART_MAX);
    return html`<section aria-labelledby="totals-h">
        <h2 id="totals-h">As of ${when(r.asOf)}</h2>
        <ul class="cards">
          <li class="card"><span class="count" data-total="credentials">${t.credentials}</span><span class="what">credentials</span></li>
          <li class="card card-active"><span class="count" data-total="withinPolicy">${t.withinPolicy}</span><span class="what">within policy${t.withinPolicyPercent === null ? '' : ` (${t.withinPolicyPercent}%)`}</span></li>
          <li class="card card-overdue"><span class="count" data-total="overdue">${t.overdue}</span><span class="what">overdue</span></li>
          <li class="card card-failed"><span class="count" data-total="failed">${t.failed}</span><span class="what">last rotation failed</span></li>
          <li class="card"><span class="count" data-total="neverRotated">${t.neverRotated}</span><span class="what">never rotated</span></li>
          <li class="card card-paused"><span class="count" data-total="paused">${t.paused}</span><span class="what">paused</span></li>
        </ul>
      </section>
      <section aria-labelledby="agechart-h">
        <h2 id="agechart-h">Age against maxAgeDays</h2>
        ${
          worst.length === 0
            ? html`<p>No credential has a <code>maxAgeDays</code>: ages are judged by schedules only.</p>`
            : html`<kt-chart
              caption=${`Age of the current version (days) against its maxAgeDays, ${worst.length} credentials nearest their limit`}
              yLabel="days"
              .xLabels=${worst.map((c) => c.id)}
              .series=${[
                {
                  label: 'age (days)',
                  values: worst.map((c) => c.ageDays),
                  colorVar: '--accent',
                  kind: 'bars',
                },
                {
                  label: 'maxAgeDays',
                  values: worst.map((c) => c.maxAgeDays),
                  colorVar: '--bad',
                  kind: 'points',
                },
              ]}
            ></kt-chart>`
        }
      </section>
      <section aria-labelledby="rows-h">
        <h2 id="rows-h">Credentials</h2>
        <table class="compliance">
          <thead>
            <tr>
              <th scope="col">Credential</th>
              <th scope="col">Target</th>
              <th scope="col">Status</th>
              <th scope="col">Age (days)</th>
              <th scope="col">Max age</th>
              <th scope="col">Last rotated</th>
              <th scope="col">Overdue since</th>
              <th scope="col">Labels</th>
            </tr>
          </thead>
          <tbody>
            ${r.credentials.map(
              (c) =>
                html`<tr data-credential=${c.id}>
                  <td><a href="#/credentials/${encodeURIComponent(c.id)}">${c.id}</a></td>
                  <td>${c.targetType ?? '—'} / ${c.connection}</td>
                  <td>
                    ${badge(c.status)} ${c.overdue ? badge('overdue') : nothing}
                    ${c.paused ? badge('paused') : nothing} ${c.neverRotated ? badge('never') : nothing}
                  </td>
                  <td>${c.ageDays}</td>
                  <td>${c.maxAgeDays ?? '—'}</td>
                  <td>${when(c.lastRotatedAt)}</td>
                  <td>${when(c.overdueSince)}</td>
                  <td>${labelsText(c.labels)}</td>
                </tr>`,
            )}
          </tbody>
        </table>
      </section>`;
  }
}

customElements.define('kt-compliance', KtCompliance);
