// Credentials: the list, filtered by label, status and overdue (the API's own filters), a page at a time. The
// filters are in the #fragment, so a filtered list can be bookmarked; they are never secret.
import { html, nothing } from 'lit';
import { type Credential, getJson, type Me } from '../api.ts';
import { ago, badge, LightElement, labelsText, pageShown, problem, when } from '../base.ts';

const PAGE = 25;

class KtCredentials extends LightElement {
  static override properties = {
    me: { attribute: false },
    params: { attribute: false },
    rows: { state: true },
    next: { state: true },
    error: { state: true },
    loading: { state: true },
  };
  declare me: Me;
  declare params: URLSearchParams;
  declare rows: Credential[] | null;
  declare next: string | null;
  declare error: unknown;
  declare loading: boolean;
  /** Cursors of the pages before this one (the first page has none). */
  #previous: Array<string | undefined> = [];
  #cursor: string | undefined;

  constructor() {
    super();
    this.params = new URLSearchParams();
    this.rows = null;
    this.next = null;
    this.error = null;
    this.loading = false;
  }

  override willUpdate(changed: Map<string, unknown>): void {
    if (changed.has('params')) {
      this.#previous = [];
      this.#cursor = undefined;
      void this.#load();
    }
  }

  override firstUpdated(): void {
    pageShown(this, 'Credentials');
  }

  #query(): URLSearchParams {
    const q = new URLSearchParams({ limit: String(PAGE) });
    for (const key of ['label', 'status', 'overdue']) {
      const value = this.params.get(key);
      if (value) q.set(key, value);
    }
    if (this.#cursor) q.set('cursor', this.#cursor);
    return q;
  }

  async #load(): Promise<void> {
    this.loading = true;
    try {
      const page = await getJson<{ credentials: Credential[]; next: string | null }>(
        `/v1/credentials?${this.#query()}`,
      );
      this.rows = page.credentials;
      this.next = page.next;
      this.error = null;
    } catch (err) {
      this.error = err;
      this.rows = [];
    } finally {
      this.loading = false;
    }
  }

  #apply(event: SubmitEvent): void {
    event.preventDefault();
    const form = new FormData(event.target as HTMLFormElement);
    const q = new URLSearchParams();
    for (const key of ['label', 'status', 'overdue']) {
      const value = String(form.get(key) ?? '').trim();
      if (value) q.set(key, value);
    }
    const query = q.toString();
    location.hash = `#/credentials${query ? `?${query}` : ''}`;
  }

  #page(direction: 1 | -1): void {
    if (direction === 1 && this.next) {
      this.#previous.push(this.#cursor);
      this.#cursor = this.next;
    } else if (direction === -1) {
      this.#cursor = this.#previous.pop();
    }
    void this.#load();
  }

  override render() {
    const p = this.params;
    return html`<h1>Credentials</h1>
      <form class="filters" @submit=${this.#apply} aria-label="Filter credentials">
        <div>
          <label for="f-label">Label</label>
          <input id="f-label" name="label" placeholder="team=payments" .value=${p.get('label') ?? ''} />
        </div>
        <div>
          <label for="f-status">Status</label>
          <select id="f-status" name="status">
            ${['', 'active', 'rotating', 'failed', 'pending'].map(
              (s) =>
                html`<option value=${s} ?selected=${(p.get('status') ?? '') === s}>${s || 'any'}</option>`,
            )}
          </select>
        </div>
        <div>
          <label for="f-overdue">Overdue</label>
          <select id="f-overdue" name="overdue">
            ${[
              ['', 'any'],
              ['true', 'overdue'],
              ['false', 'within policy'],
            ].map(
              ([v, t]) =>
                html`<option value=${v ?? ''} ?selected=${(p.get('overdue') ?? '') === v}>${t}</option>`,
            )}
          </select>
        </div>
        <button type="submit">Apply filters</button>
      </form>
      ${problem(this.error)}
      ${
        this.rows === null
          ? html`<p aria-live="polite">Loading…</p>`
          : html`<table class="credentials">
              <caption>
                ${this.rows.length === 0 ? 'No credential matches these filters' : `${this.rows.length} credentials on this page`}
              </caption>
              <thead>
                <tr>
                  <th scope="col">Credential</th>
                  <th scope="col">Status</th>
                  <th scope="col">Connection</th>
                  <th scope="col">Rotated</th>
                  <th scope="col">Next rotation</th>
                  <th scope="col">Labels</th>
                </tr>
              </thead>
              <tbody>
                ${this.rows.map(
                  (c) =>
                    html`<tr data-credential=${c.id}>
                      <td><a href="#/credentials/${encodeURIComponent(c.id)}">${c.id}</a></td>
                      <td>
                        ${badge(c.status)} ${c.overdue ? badge('overdue') : nothing}
                        ${c.paused ? badge('paused') : nothing}
                      </td>
                      <td>${c.connection}</td>
                      <td>${c.rotatedAt ? ago(c.rotatedAt) : 'never'}</td>
                      <td>${when(c.nextRotationAt)}</td>
                      <td>${labelsText(c.labels)}</td>
                    </tr>`,
                )}
              </tbody>
            </table>
            <div class="pager">
              <button type="button" class="secondary" ?disabled=${this.#previous.length === 0 || this.loading}
                @click=${() => this.#page(-1)}>Previous page</button>
              <button type="button" class="secondary" ?disabled=${!this.next || this.loading}
                @click=${() => this.#page(1)}>Next page</button>
            </div>`
      }`;
  }
}

customElements.define('kt-credentials', KtCredentials);
