// One credential: its settings, the current version's age against its policy, its rotation history as a timeline
// (each rotation's steps, attempts and scrubbed error), "rotate now" with live progress from /v1/events for those
// who may rotate, its leases and a reveal of its secret for those who may read it. The secret is fetched only on
// the click, shown until hidden or the page is left, and kept nowhere else: not in the URL, not in storage, not in
// any log (the read itself is an audit event on the server).
import { html, nothing } from 'lit';
import {
  ApiFailure,
  type Credential,
  getJson,
  type Lease,
  type Me,
  openEvents,
  post,
  type Rotation,
} from '../api.ts';
import {
  ago,
  badge,
  canManage,
  LightElement,
  labelsText,
  mayUseSecrets,
  pageShown,
  problem,
  when,
} from '../base.ts';

const DAY_MS = 86_400_000;
const HISTORY_PAGE = 10;

interface LiveStep {
  step: string;
  outcome: string;
  attempt: number | null;
  time: string;
}

interface Live {
  rotationId: string | null;
  steps: LiveStep[];
  outcome: 'running' | 'succeeded' | 'failed';
  message: string;
}

class KtCredential extends LightElement {
  static override properties = {
    me: { attribute: false },
    credentialId: { attribute: false },
    credential: { state: true },
    rotations: { state: true },
    moreBefore: { state: true },
    leases: { state: true },
    secret: { state: true },
    live: { state: true },
    error: { state: true },
    actionError: { state: true },
    leaseError: { state: true },
  };
  declare me: Me;
  declare credentialId: string;
  declare credential: Credential | null;
  declare rotations: Rotation[];
  declare moreBefore: number | null;
  declare leases: Lease[] | null;
  declare secret: Record<string, unknown> | null;
  declare live: Live | null;
  declare error: unknown;
  declare actionError: unknown;
  declare leaseError: unknown;
  #stream: AbortController | undefined;

  constructor() {
    super();
    this.credential = null;
    this.rotations = [];
    this.moreBefore = null;
    this.leases = null;
    this.secret = null;
    this.live = null;
    this.error = null;
    this.actionError = null;
    this.leaseError = null;
  }

  override willUpdate(changed: Map<string, unknown>): void {
    if (changed.has('credentialId')) {
      this.secret = null;
      this.live = null;
      void this.#load();
    }
  }

  override disconnectedCallback(): void {
    super.disconnectedCallback();
    this.#stream?.abort();
    // Leaving the page forgets the secret.
    this.secret = null;
  }

  override firstUpdated(): void {
    pageShown(this, this.credentialId);
  }

  get #path(): string {
    return `/v1/credentials/${encodeURIComponent(this.credentialId)}`;
  }

  async #load(): Promise<void> {
    try {
      this.credential = await getJson<Credential>(this.#path);
      this.error = null;
    } catch (err) {
      this.error = err;
      return;
    }
    await this.#loadHistory();
    if (mayUseSecrets(this.me)) void this.#loadLeases();
  }

  async #loadHistory(before?: number): Promise<void> {
    try {
      const page = await getJson<{ rotations: Rotation[]; next: number | null }>(
        `${this.#path}/rotations?limit=${HISTORY_PAGE}${before ? `&before=${before}` : ''}`,
      );
      this.rotations = before ? [...this.rotations, ...page.rotations] : page.rotations;
      this.moreBefore = page.next;
    } catch (err) {
      this.error = err;
    }
  }

  async #loadLeases(): Promise<void> {
    try {
      this.leases = (await getJson<{ leases: Lease[] }>(`${this.#path}/leases?limit=50`)).leases;
      this.leaseError = null;
    } catch (err) {
      this.leaseError = err;
    }
  }

  /**
   * Opens the event stream (steps included) before asking for the rotation, so that no step can land before the page
   * listens; then follows the steps of the rotation the API started until its `rotation` event says how it ended.
   */
  async #rotate(): Promise<void> {
    this.actionError = null;
    this.#stream?.abort();
    const controller = new AbortController();
    this.#stream = controller;
    const live: Live = {
      rotationId: null,
      steps: [],
      outcome: 'running',
      message: 'Requesting the rotation…',
    };
    this.live = live;
    const early: Array<{ event: string; data: Record<string, unknown> }> = [];
    const handle = (event: string, data: Record<string, unknown>) => {
      if (!live.rotationId) {
        early.push({ event, data });
        return;
      }
      if (data.rotation !== live.rotationId) return;
      if (event === 'step') {
        live.steps = [
          ...live.steps,
          {
            step: String(data.step),
            outcome: String(data.outcome),
            attempt: typeof data.attempt === 'number' ? data.attempt : null,
            time: String(data.time),
          },
        ];
        live.message = `Step ${String(data.step)} ${String(data.outcome)}`;
      } else if (event === 'rotation') {
        live.outcome = data.outcome === 'succeeded' ? 'succeeded' : 'failed';
        live.message =
          live.outcome === 'succeeded'
            ? `Rotation succeeded: version ${String(data.version)}`
            : 'Rotation failed: its steps and scrubbed error are in the history below';
        controller.abort();
        void this.#load();
      }
      this.live = { ...live };
    };
    try {
      const credential = encodeURIComponent(this.credentialId);
      const { done } = await openEvents(
        `credential=${credential}&steps=true`,
        (m) => {
          try {
            handle(m.event, JSON.parse(m.data) as Record<string, unknown>);
          } catch {
            // not JSON: not an event of ours
          }
        },
        controller.signal,
      );
      done.catch((err) => {
        if (live.outcome === 'running') {
          this.actionError = err;
        }
      });
      const res = await post<{ rotationId: string; status: string; created: boolean }>(
        `${this.#path}/rotate`,
      );
      live.rotationId = res.body.rotationId;
      live.message = res.body.created
        ? `Rotation ${res.body.rotationId} started`
        : `A rotation was already running (${res.body.rotationId}): following it`;
      for (const e of early.splice(0)) handle(e.event, e.data);
      this.live = { ...live };
      void this.#loadHistory();
    } catch (err) {
      controller.abort();
      live.outcome = 'failed';
      live.message = 'The rotation could not be requested';
      this.live = { ...live };
      this.actionError = err;
    }
  }

  async #reveal(): Promise<void> {
    this.actionError = null;
    try {
      const res = await fetchSecret(`${this.#path}/secret`);
      if ('approvalId' in res) {
        this.actionError = new Error(
          `This credential needs approval before its secret is read (approval ${String(res.approvalId)}): once approved, reveal again`,
        );
        return;
      }
      this.secret = res;
    } catch (err) {
      this.actionError = err;
    }
  }

  override render() {
    const c = this.credential;
    return html`<p class="crumbs"><a href="#/credentials">Credentials</a> / ${this.credentialId}</p>
      <h1>${this.credentialId}</h1>
      ${problem(this.error)}
      ${
        c
          ? html`${this.#actions(c)} ${problem(this.actionError)} ${this.#liveProgress()} ${this.#secret()}
            <div class="two">
              ${this.#settings(c)} ${this.#age(c)}
            </div>
            ${this.#history()} ${mayUseSecrets(this.me) ? this.#leases() : nothing}`
          : nothing
      }`;
  }

  #actions(c: Credential) {
    const manage = canManage(this.me);
    const secrets = mayUseSecrets(this.me);
    if (!manage && !secrets) return nothing;
    return html`<div class="actions">
      ${
        manage
          ? html`<button type="button" id="rotate" @click=${this.#rotate}
            ?disabled=${this.live?.outcome === 'running'}>
            ${c.status === 'failed' ? 'Retry: rotate now' : 'Rotate now'}
          </button>`
          : nothing
      }
      ${
        secrets
          ? html`<button type="button" id="reveal" class="secondary" @click=${this.#reveal}>
            Reveal secret (audited read)
          </button>`
          : nothing
      }
    </div>`;
  }

  #liveProgress() {
    const live = this.live;
    if (!live) return nothing;
    return html`<section class="live" aria-labelledby="live-h">
      <h2 id="live-h">Rotation in progress</h2>
      <p class="live-status" role="status" aria-live="polite" data-outcome=${live.outcome}>
        ${badge(live.outcome)} ${live.message}
      </p>
      <ol class="live-steps">
        ${live.steps.map(
          (s) =>
            html`<li data-step=${s.step}>
              ${badge(s.outcome)} <strong>${s.step}</strong>
              ${s.attempt ? html`<span class="muted">attempt ${s.attempt}</span>` : nothing}
              <span class="muted">${when(s.time)}</span>
            </li>`,
        )}
      </ol>
    </section>`;
  }

  #secret() {
    const s = this.secret;
    if (!s) return nothing;
    // Only the fields a person connects with; the object is dropped on Hide and on leaving the page.
    const shown = Object.entries(s).filter(([k]) =>
      ['username', 'password', 'accessKeyId', 'secretAccessKey', 'version'].includes(k),
    );
    return html`<section class="secret" aria-labelledby="secret-h">
      <h2 id="secret-h">Secret</h2>
      <p class="muted">This read is in the audit trail under your name.</p>
      <dl>
        ${shown.map(([k, v]) => html`<dt>${k}</dt><dd><code class="secret-value">${String(v)}</code></dd>`)}
      </dl>
      <button type="button" class="secondary" @click=${() => {
        this.secret = null;
      }}>Hide secret</button>
    </section>`;
  }

  #settings(c: Credential) {
    const rows: Array<[string, string]> = [
      ['Status', c.status],
      ['Connection', c.connection],
      ['Username', c.activeUsername ?? c.username],
      ['Strategy', c.strategy],
      [
        'Schedule',
        c.schedule
          ? Object.entries(c.schedule)
              .map(([k, v]) => `${k} ${v}`)
              .join(', ')
          : '—',
      ],
      ['Store', c.store.type],
      ['Max age', c.maxAgeDays === null ? 'not set' : `${c.maxAgeDays} days`],
      ['Grace period', c.gracePeriod ?? '—'],
      ['Notify before', c.notifyBefore ?? '—'],
      ['Labels', labelsText(c.labels) || '—'],
      ['Paused', c.paused ? `since ${when(c.pausedSince)}` : 'no'],
      ['Version', c.version ?? '—'],
      ['Rotated', c.rotatedAt ? `${when(c.rotatedAt)} (${ago(c.rotatedAt)})` : 'never'],
      ['Next rotation', c.nextRotationAt ? `${when(c.nextRotationAt)} (${ago(c.nextRotationAt)})` : '—'],
      ['Consecutive failures', String(c.consecutiveFailures)],
    ];
    return html`<section aria-labelledby="settings-h">
      <h2 id="settings-h">Settings</h2>
      <dl class="settings">${rows.map(([k, v]) => html`<dt>${k}</dt><dd>${v}</dd>`)}</dl>
    </section>`;
  }

  #age(c: Credential) {
    const since = Date.parse(c.rotatedAt ?? c.createdAt);
    const ageDays = Math.max(0, (Date.now() - since) / DAY_MS);
    const shown = ageDays.toFixed(1);
    return html`<section aria-labelledby="age-h">
      <h2 id="age-h">Age against policy</h2>
      ${
        c.maxAgeDays === null
          ? html`<p>
            The current version is ${shown} days old. No <code>maxAgeDays</code> is set: it is judged by its schedule
            (next rotation ${when(c.nextRotationAt)}).
          </p>`
          : html`<p>
              The current version is <strong data-age>${shown}</strong> days old, against a maximum of
              ${c.maxAgeDays} days${c.overdue ? ': it is overdue' : ''}.
            </p>
            <meter
              id="age-meter"
              aria-label="Age of the current version against maxAgeDays"
              min="0"
              max=${c.maxAgeDays}
              low=${c.maxAgeDays * 0.75}
              high=${c.maxAgeDays * 0.9}
              optimum="0"
              .value=${Math.min(ageDays, c.maxAgeDays)}
            >${shown} of ${c.maxAgeDays} days</meter>`
      }
      ${c.overdue ? html`<p>${badge('overdue')} Rotate it, or check why its scheduled rotation has not run.</p>` : nothing}
    </section>`;
  }

  #history() {
    return html`<section aria-labelledby="history-h">
      <h2 id="history-h">Rotation history</h2>
      ${this.rotations.length === 0 ? html`<p>No rotation yet.</p>` : nothing}
      <ol class="timeline">
        ${this.rotations.map(
          (r) =>
            html`<li class="rotation" data-rotation=${r.id}>
              <p class="rotation-head">
                ${badge(r.status)} <strong>${when(r.createdAt)}</strong>
                <span class="muted">${r.trigger} by ${r.actor}; ${r.attempts} of ${r.maxAttempts} attempts</span>
              </p>
              ${
                r.error
                  ? html`<p class="error-text">
                    Failed at <strong>${r.error.step}</strong>${r.error.code ? ` (${r.error.code})` : ''}:
                    ${r.error.message}
                  </p>`
                  : nothing
              }
              <details ?open=${r.status !== 'succeeded'}>
                <summary>Steps of rotation ${r.id.slice(0, 8)}</summary>
                <table class="steps">
                  <thead>
                    <tr>
                      <th scope="col">Step</th>
                      <th scope="col">Outcome</th>
                      <th scope="col">Attempt</th>
                      <th scope="col">At</th>
                      <th scope="col">Note</th>
                    </tr>
                  </thead>
                  <tbody>
                    ${r.steps.map(
                      (s) =>
                        html`<tr>
                          <td>${s.step}</td>
                          <td>${badge(s.outcome)}</td>
                          <td>${s.attempt}</td>
                          <td>${when(s.at)}</td>
                          <td>${s.note ?? ''}</td>
                        </tr>`,
                    )}
                  </tbody>
                </table>
                ${
                  r.rollback
                    ? html`<p>Rollback ${r.rollback.outcome}: ${r.rollback.note} (${when(r.rollback.at)})</p>`
                    : nothing
                }
                <p class="muted">Rotation id ${r.id}; finished ${when(r.finishedAt)}</p>
              </details>
            </li>`,
        )}
      </ol>
      ${
        this.moreBefore
          ? html`<button type="button" class="secondary" @click=${() => this.#loadHistory(this.moreBefore ?? undefined)}>
            Older rotations
          </button>`
          : nothing
      }
    </section>`;
  }

  #leases() {
    return html`<section aria-labelledby="leases-h">
      <h2 id="leases-h">Leases</h2>
      ${
        this.leaseError instanceof ApiFailure && this.leaseError.status === 403
          ? html`<p>Your roles do not let you see this credential's leases.</p>`
          : problem(this.leaseError)
      }
      ${this.leases && this.leases.length === 0 ? html`<p>No lease.</p>` : nothing}
      ${
        this.leases && this.leases.length > 0
          ? html`<table class="leases">
            <thead>
              <tr>
                <th scope="col">Lease</th>
                <th scope="col">User</th>
                <th scope="col">Status</th>
                <th scope="col">By</th>
                <th scope="col">Expires</th>
                <th scope="col">Renewals</th>
              </tr>
            </thead>
            <tbody>
              ${this.leases.map(
                (l) =>
                  html`<tr>
                    <td><code>${l.id.slice(0, 8)}</code></td>
                    <td>${l.username}</td>
                    <td>${badge(l.status)}</td>
                    <td>${l.createdBy}</td>
                    <td>${when(l.expiresAt)}</td>
                    <td>${l.renewals}</td>
                  </tr>`,
              )}
            </tbody>
          </table>`
          : nothing
      }
    </section>`;
  }
}

/** The secret read: 200 is the secret, 202 an approval that dual control asks for first. */
function fetchSecret(path: string): Promise<Record<string, unknown>> {
  return getJson<Record<string, unknown>>(path);
}

customElements.define('kt-credential', KtCredential);
