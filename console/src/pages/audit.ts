// Audit: the trail (GET /v1/audit) filtered and paged, its verification explained (signed through which event,
// how much is unsigned or pending, and the first bad event when it fails), the export (JSONL or CSV, with hashes and
// checkpoints, for offline verification) and the public key that checks it.
import { html, nothing } from 'lit';
import { type AuditEvent, download, getJson, getText, type Me, type Verify } from '../api.ts';
import { badge, LightElement, pageShown, problem, when } from '../base.ts';

const PAGE = 50;
const FILTERS = ['credential', 'actor', 'action', 'since', 'until'] as const;

/** What each kind of first bad event means, for a person (the API's reason says exactly what it found). */
const KINDS: Record<string, string> = {
  altered: 'an event was changed after it was written: its content no longer matches its digest',
  missing: 'events are missing: the chain has a gap where events were deleted',
  reordered: 'events are out of order: their positions in the chain do not follow each other',
  inserted: 'an event was inserted: it claims a place in the chain that another event holds',
  rewritten: 'the chain itself was rewritten: a link no longer follows from the one before it',
  checkpoint: 'a signed checkpoint does not verify: its signature or the hashes it signs do not match',
  format: 'a record is not in the chain format and cannot be checked',
};

class KtAudit extends LightElement {
  static override properties = {
    me: { attribute: false },
    params: { attribute: false },
    events: { state: true },
    next: { state: true },
    verify: { state: true },
    verifying: { state: true },
    publicKey: { state: true },
    error: { state: true },
    status: { state: true },
  };
  declare me: Me;
  declare params: URLSearchParams;
  declare events: AuditEvent[] | null;
  declare next: string | null;
  declare verify: Verify | null;
  declare verifying: boolean;
  declare publicKey: string | null;
  declare error: unknown;
  declare status: string;
  #pages: Array<string | undefined> = [];
  #cursor: string | undefined;

  constructor() {
    super();
    this.params = new URLSearchParams();
    this.events = null;
    this.next = null;
    this.verify = null;
    this.verifying = false;
    this.publicKey = null;
    this.error = null;
    this.status = '';
  }

  override willUpdate(changed: Map<string, unknown>): void {
    if (changed.has('params')) {
      this.#pages = [];
      this.#cursor = undefined;
      void this.#load();
    }
  }

  override firstUpdated(): void {
    pageShown(this, 'Audit');
  }

  #filterQuery(): URLSearchParams {
    const q = new URLSearchParams();
    for (const key of FILTERS) {
      const value = this.params.get(key);
      if (!value) continue;
      // The date inputs give local "YYYY-MM-DDTHH:mm"; the API wants a date-time with its zone.
      q.set(key, key === 'since' || key === 'until' ? new Date(value).toISOString() : value);
    }
    return q;
  }

  async #load(): Promise<void> {
    const q = this.#filterQuery();
    q.set('limit', String(PAGE));
    if (this.#cursor) q.set('cursor', this.#cursor);
    try {
      const page = await getJson<{ events: AuditEvent[]; next: string | null }>(`/v1/audit?${q}`);
      this.events = page.events;
      this.next = page.next;
      this.error = null;
    } catch (err) {
      this.error = err;
      this.events = [];
    }
  }

  #apply(event: SubmitEvent): void {
    event.preventDefault();
    const form = new FormData(event.target as HTMLFormElement);
    const q = new URLSearchParams();
    for (const key of FILTERS) {
      const value = String(form.get(key) ?? '').trim();
      if (value) q.set(key, value);
    }
    const query = q.toString();
    location.hash = `#/audit${query ? `?${query}` : ''}`;
  }

  #page(direction: 1 | -1): void {
    if (direction === 1 && this.next) {
      this.#pages.push(this.#cursor);
      this.#cursor = this.next;
    } else if (direction === -1) this.#cursor = this.#pages.pop();
    void this.#load();
  }

  async #verify(): Promise<void> {
    this.verifying = true;
    this.verify = null;
    try {
      this.verify = await getJson<Verify>('/v1/audit/verify');
      this.error = null;
    } catch (err) {
      this.error = err;
    } finally {
      this.verifying = false;
    }
  }

  async #export(format: 'jsonl' | 'csv'): Promise<void> {
    const q = this.#filterQuery();
    q.set('format', format);
    try {
      const accept = format === 'csv' ? 'text/csv' : 'application/x-ndjson';
      this.status = `Saved ${await download(`/v1/audit/export?${q}`, accept, `keyturn-audit.${format}`)}`;
    } catch (err) {
      this.error = err;
    }
  }

  async #key(): Promise<void> {
    try {
      this.publicKey = await getText('/v1/audit/public-key', 'application/x-pem-file');
    } catch (err) {
      this.error = err;
    }
  }

  override render() {
    const p = this.params;
    return html`<h1>Audit trail</h1>
      ${problem(this.error)}
      <section aria-labelledby="verify-h">
        <h2 id="verify-h">Verify the chain</h2>
        <p>
          Checks every event's digest and link, and the signatures of the checkpoints, from the start of the stream
          to now.
        </p>
        <div class="actions">
          <button type="button" id="verify" @click=${this.#verify} ?disabled=${this.verifying}>Verify now</button>
          <button type="button" class="secondary" id="export-jsonl" @click=${() => this.#export('jsonl')}>
            Export JSONL
          </button>
          <button type="button" class="secondary" id="export-csv" @click=${() => this.#export('csv')}>
            Export CSV
          </button>
          <button type="button" class="secondary" id="public-key" @click=${this.#key}>Show public key</button>
          <span role="status" aria-live="polite">${this.verifying ? 'Verifying…' : this.status}</span>
        </div>
        ${this.#verifyResult()}
        ${
          this.publicKey
            ? html`<h3>Public key</h3>
              <p class="muted">Checks the signatures of an export with nothing else (keyturn audit verify).</p>
              <pre class="pem" tabindex="0" aria-label="Audit public key">${this.publicKey}</pre>`
            : nothing
        }
      </section>
      <section aria-labelledby="trail-h">
        <h2 id="trail-h">Events</h2>
        <form class="filters" @submit=${this.#apply} aria-label="Filter audit events">
          ${FILTERS.map(
            (key) =>
              html`<div>
                <label for="a-${key}">${key}</label>
                <input
                  id="a-${key}"
                  name=${key}
                  type=${key === 'since' || key === 'until' ? 'datetime-local' : 'text'}
                  placeholder=${key === 'action' ? 'rotation.succeeded' : ''}
                  .value=${p.get(key) ?? ''}
                />
              </div>`,
          )}
          <button type="submit">Apply filters</button>
        </form>
        ${
          this.events === null
            ? html`<p aria-live="polite">Loading…</p>`
            : html`<table class="audit">
                <caption>
                  ${this.events.length === 0 ? 'No event matches these filters' : `${this.events.length} events, oldest first`}
                </caption>
                <thead>
                  <tr>
                    <th scope="col">#</th>
                    <th scope="col">Time</th>
                    <th scope="col">Actor</th>
                    <th scope="col">Action</th>
                    <th scope="col">Outcome</th>
                    <th scope="col">Credential</th>
                    <th scope="col">Details</th>
                  </tr>
                </thead>
                <tbody>
                  ${this.events.map(
                    (e) =>
                      html`<tr data-event=${e.id}>
                        <td>${e.chain ? e.chain.seq : html`<span class="muted">pending</span>`}</td>
                        <td>${when(e.time)}</td>
                        <td>${e.actor}</td>
                        <td>${e.action}</td>
                        <td>${badge(e.outcome)}</td>
                        <td>
                          ${
                            e.credential
                              ? html`<a href="#/credentials/${encodeURIComponent(e.credential)}">${e.credential}</a>`
                              : ''
                          }
                        </td>
                        <td class="details">${e.details ? JSON.stringify(e.details) : ''}</td>
                      </tr>`,
                  )}
                </tbody>
              </table>
              <div class="pager">
                <button type="button" class="secondary" ?disabled=${this.#pages.length === 0}
                  @click=${() => this.#page(-1)}>Previous page</button>
                <button type="button" class="secondary" ?disabled=${!this.next} @click=${() => this.#page(1)}>
                  Next page
                </button>
              </div>`
        }
      </section>`;
  }

  #verifyResult() {
    const v = this.verify;
    if (!v) return nothing;
    if (v.ok) {
      return html`<div class="verify verify-ok" data-verify="ok">
        <p>${badge('verified')} <strong>The chain verifies</strong>: ${v.count} events checked in ${v.durationMs} ms.</p>
        <ul>
          <li>
            Signed through:
            ${
              v.signedThrough
                ? html`event #${v.signedThrough.seq} (checkpoint ${v.signedThrough.n}, ${when(v.signedThrough.time)}).
                  Everything up to it is covered by a signature.`
                : 'no checkpoint yet: the chain is intact but nothing is signed.'
            }
          </li>
          <li>Unsigned: ${v.unsigned} events after the last checkpoint (intact, signed at the next checkpoint).</li>
          <li>Pending: ${v.pending} events appended but not yet in the chain (the sealer adds them shortly).</li>
        </ul>
      </div>`;
    }
    const bad = v.firstBad;
    return html`<div class="verify verify-bad" data-verify="failed" role="alert">
      <p>${badge('broken')} <strong>The chain does not verify.</strong></p>
      ${
        bad
          ? html`<p>
              First bad event: <strong data-first-bad>#${bad.seq ?? '?'}</strong> (${bad.id ?? 'no id'}), kind
              <strong>${bad.kind}</strong>: ${KINDS[bad.kind] ?? 'see the reason'}.
            </p>
            <p>Reason: ${bad.reason}</p>`
          : nothing
      }
      <p>
        ${v.count} events verified before it;
        signed through ${v.signedThrough ? `event #${v.signedThrough.seq}` : 'no checkpoint'}. Everything from the bad
        event on cannot be trusted: compare with an earlier export or the archive.
      </p>
    </div>`;
  }
}

customElements.define('kt-audit', KtAudit);
