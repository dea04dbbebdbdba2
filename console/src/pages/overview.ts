// Overview: credentials by state, rotations per day (succeeded and failed) over 30 or 90 days, the next rotations
// due, and (for those who may read the audit trail) the chain's verification status.
import { html, nothing } from 'lit';
import { getJson, type Me, type Overview, type Verify } from '../api.ts';
import { ago, badge, canAudit, LightElement, pageShown, problem, when } from '../base.ts';

const STATES = ['total', 'active', 'rotating', 'failed', 'overdue', 'paused', 'pending'] as const;

class KtOverview extends LightElement {
  static override properties = {
    me: { attribute: false },
    days: { state: true },
    data: { state: true },
    chain: { state: true },
    error: { state: true },
    chainError: { state: true },
  };
  declare me: Me;
  declare days: 30 | 90;
  declare data: Overview | null;
  declare chain: Verify | null;
  declare error: unknown;
  declare chainError: unknown;

  constructor() {
    super();
    this.days = 30;
    this.data = null;
    this.chain = null;
    this.error = null;
    this.chainError = null;
  }

  override connectedCallback(): void {
    super.connectedCallback();
    void this.#load();
    if (canAudit(this.me)) void this.#loadChain();
  }

  override firstUpdated(): void {
    pageShown(this, 'Overview');
  }

  async #load(): Promise<void> {
    try {
      this.data = await getJson<Overview>(`/v1/overview?days=${this.days}`);
      this.error = null;
    } catch (err) {
      this.error = err;
    }
  }

  async #loadChain(): Promise<void> {
    try {
      this.chain = await getJson<Verify>('/v1/audit/verify');
      this.chainError = null;
    } catch (err) {
      this.chainError = err;
    }
  }

  #setDays(event: Event): void {
    this.days = Number((event.target as HTMLSelectElement).value) === 90 ? 90 : 30;
    void this.#load();
  }

  override render() {
    const d = this.data;
    return html`<h1>Overview</h1>
      ${problem(this.error)}
      <section aria-labelledby="states-h">
        <h2 id="states-h">Credentials by state</h2>
        ${
          d
            ? html`<ul class="cards">
              ${STATES.map(
                (s) =>
                  html`<li class="card card-${s}">
                    <a href=${filterFor(s)}>
                      <span class="count" data-state=${s}>${d.credentials[s]}</span>
                      <span class="what">${s}</span>
                    </a>
                  </li>`,
              )}
            </ul>`
            : html`<p aria-live="polite">Loading…</p>`
        }
      </section>
      <section aria-labelledby="rotations-h">
        <h2 id="rotations-h">Rotations per day</h2>
        <label for="days">Period</label>
        <select id="days" @change=${this.#setDays}>
          <option value="30" ?selected=${this.days === 30}>Last 30 days</option>
          <option value="90" ?selected=${this.days === 90}>Last 90 days</option>
        </select>
        ${
          d
            ? html`<kt-chart
              caption=${`Rotations finished per UTC day, last ${d.days} days: ${sum(d, 'succeeded')} succeeded, ${sum(d, 'failed')} failed`}
              yLabel="rotations"
              .xLabels=${d.rotationsPerDay.map((r) => r.day.slice(5))}
              .series=${[
                {
                  label: 'succeeded',
                  values: d.rotationsPerDay.map((r) => r.succeeded),
                  colorVar: '--ok',
                  kind: 'bars',
                },
                {
                  label: 'failed',
                  values: d.rotationsPerDay.map((r) => r.failed),
                  colorVar: '--bad',
                  kind: 'bars',
                },
              ]}
            ></kt-chart>`
            : nothing
        }
      </section>
      <section aria-labelledby="due-h">
        <h2 id="due-h">Next rotations due</h2>
        ${d && d.nextDue.length === 0 ? html`<p>No scheduled rotation.</p>` : nothing}
        ${
          d && d.nextDue.length > 0
            ? html`<table class="due">
              <thead>
                <tr>
                  <th scope="col">Credential</th>
                  <th scope="col">Due</th>
                  <th scope="col">Status</th>
                </tr>
              </thead>
              <tbody>
                ${d.nextDue.map(
                  (c) =>
                    html`<tr>
                      <td><a href="#/credentials/${encodeURIComponent(c.id)}">${c.id}</a></td>
                      <td>${when(c.nextRotationAt)} <span class="muted">(${ago(c.nextRotationAt)})</span></td>
                      <td>${badge(c.status)} ${c.overdue ? badge('overdue') : nothing}</td>
                    </tr>`,
                )}
              </tbody>
            </table>`
            : nothing
        }
      </section>
      ${canAudit(this.me) ? this.#chainStatus() : nothing}`;
  }

  #chainStatus() {
    const v = this.chain;
    return html`<section aria-labelledby="chain-h">
      <h2 id="chain-h">Audit chain</h2>
      ${problem(this.chainError)}
      ${
        v
          ? html`<dl class="chain-status">
            <dt>Verification</dt>
            <dd data-chain="ok">${v.ok ? badge('verified') : badge('broken')} ${v.count} events checked</dd>
            <dt>Signed through</dt>
            <dd data-chain="signed">
              ${
                v.signedThrough
                  ? html`event #${v.signedThrough.seq} (checkpoint ${v.signedThrough.n}, ${when(v.signedThrough.time)})`
                  : 'no checkpoint yet'
              }
            </dd>
            <dt>Unsigned</dt>
            <dd data-chain="unsigned">${v.unsigned} events after the last checkpoint</dd>
            <dt>Pending</dt>
            <dd data-chain="pending">${v.pending} events not yet in the chain</dd>
          </dl>
          <p><a href="#/audit">Verify and explore the trail</a></p>`
          : this.chainError
            ? nothing
            : html`<p aria-live="polite">Verifying…</p>`
      }
    </section>`;
  }
}

function sum(d: Overview, key: 'succeeded' | 'failed'): number {
  return d.rotationsPerDay.reduce((n, r) => n + r[key], 0);
}

/** The credentials list filtered to a state, where the list can filter by it (it has no paused filter). */
function filterFor(state: string): string {
  if (state === 'overdue') return '#/credentials?overdue=true';
  if (state === 'total' || state === 'paused') return '#/credentials';
  return `#/credentials?status=${state}`;
}

customElements.define('kt-overview', KtOverview);
