// The Keyturn console (issue 19): one page at /ui, its views picked by the #fragment (#/overview,
// #/credentials?status=failed, #/credentials/<id>, #/compliance, #/audit). Sign-in is a bearer token pasted into the
// page (kept in sessionStorage), or a client certificate the API accepts; GET /v1/me says who that is, and the
// navigation offers what its roles allow. The API still decides every request.
import 'uplot/dist/uPlot.min.css';
import './console.css';
import { html, nothing } from 'lit';
import { ApiFailure, getJson, type Me, onUnauthorized, setToken, token } from './api.ts';
import { canAudit, LightElement, problem } from './base.ts';
import './chart.ts';
import './pages/audit.ts';
import './pages/compliance.ts';
import './pages/credential.ts';
import './pages/credentials.ts';
import './pages/overview.ts';

interface Route {
  page: 'overview' | 'credentials' | 'credential' | 'compliance' | 'audit';
  id?: string;
  params: URLSearchParams;
}

export function parseRoute(hash: string): Route {
  const [path = '', query = ''] = hash.replace(/^#\/?/, '').split('?');
  const params = new URLSearchParams(query);
  const parts = path.split('/').filter(Boolean).map(decodeURIComponent);
  if (parts[0] === 'credentials' && parts[1]) return { page: 'credential', id: parts[1], params };
  if (parts[0] === 'credentials') return { page: 'credentials', params };
  if (parts[0] === 'compliance') return { page: 'compliance', params };
  if (parts[0] === 'audit') return { page: 'audit', params };
  return { page: 'overview', params };
}

class KtApp extends LightElement {
  static override properties = {
    me: { state: true },
    route: { state: true },
    checking: { state: true },
    error: { state: true },
  };
  declare me: Me | null;
  declare route: Route;
  declare checking: boolean;
  declare error: unknown;

  constructor() {
    super();
    this.me = null;
    this.route = parseRoute(location.hash);
    this.checking = true;
    this.error = null;
    addEventListener('hashchange', () => {
      this.route = parseRoute(location.hash);
    });
    onUnauthorized(() => {
      if (this.me) {
        this.error = new Error(
          'The API no longer accepts this session (token expired or revoked): sign in again',
        );
        this.me = null;
        setToken(null);
      }
    });
    // Ask who this is when there is a token, or over HTTPS, where a client certificate may sign the browser in. Over
    // plain HTTP without a token the answer can only be 401: asking would put a failed login in the audit trail for
    // every visit to the sign-in page.
    if (token() || location.protocol === 'https:') void this.#who();
    else this.checking = false;
  }

  /** Who the API takes this browser for: the token of this session, else a client certificate, else nobody. */
  async #who(): Promise<void> {
    this.checking = true;
    try {
      this.me = await getJson<Me>('/v1/me');
      this.error = null;
    } catch (err) {
      this.me = null;
      // No token and no certificate: the sign-in form, without an error.
      if (!(err instanceof ApiFailure && err.status === 401 && !token())) this.error = err;
      if (err instanceof ApiFailure && err.status === 401) setToken(null);
    } finally {
      this.checking = false;
    }
  }

  async #signIn(event: SubmitEvent): Promise<void> {
    event.preventDefault();
    const input = this.querySelector<HTMLInputElement>('#token');
    const value = input?.value.trim() ?? '';
    if (input) input.value = '';
    if (!value) {
      this.error = new Error('Paste a bearer token first');
      return;
    }
    setToken(value);
    await this.#who();
  }

  #signOut(): void {
    setToken(null);
    this.me = null;
    this.error = null;
    location.hash = '#/overview';
  }

  #nav(me: Me) {
    const current = this.route.page === 'credential' ? 'credentials' : this.route.page;
    const items: Array<[string, string]> = [
      ['overview', 'Overview'],
      ['credentials', 'Credentials'],
      ...(canAudit(me)
        ? ([
            ['compliance', 'Compliance'],
            ['audit', 'Audit'],
          ] as Array<[string, string]>)
        : []),
    ];
    return html`<nav aria-label="Console">
      <ul>
        ${items.map(
          ([page, label]) =>
            html`<li>
              <a href="#/${page}" aria-current=${current === page ? 'page' : 'false'}>${label}</a>
            </li>`,
        )}
      </ul>
    </nav>`;
  }

  #page(me: Me) {
    const r = this.route;
    switch (r.page) {
      case 'credentials':
        return html`<kt-credentials .me=${me} .params=${r.params}></kt-credentials>`;
      case 'credential':
        return html`<kt-credential .me=${me} .credentialId=${r.id ?? ''}></kt-credential>`;
      case 'compliance':
        return html`<kt-compliance .me=${me}></kt-compliance>`;
      case 'audit':
        return html`<kt-audit .me=${me} .params=${r.params}></kt-audit>`;
      default:
        return html`<kt-overview .me=${me}></kt-overview>`;
    }
  }

  override render() {
    const me = this.me;
    return html`<a class="skip" href="#main" @click=${this.#skip}>Skip to content</a>
      <header class="top">
        <p class="brand"><span aria-hidden="true">⟳</span> Keyturn console</p>
        ${me ? this.#nav(me) : nothing}
        ${
          me
            ? html`<p class="who">
              Signed in as <strong>${me.name}</strong> (${me.roles.join(', ')})
              <button type="button" class="secondary" @click=${this.#signOut}>Sign out</button>
            </p>`
            : nothing
        }
      </header>
      <main id="main">
        ${
          this.checking
            ? html`<p aria-live="polite">Checking who you are…</p>`
            : me
              ? this.#page(me)
              : this.#login()
        }
      </main>`;
  }

  #skip(event: Event): void {
    // The fragment is the router's: move focus without changing it.
    event.preventDefault();
    this.querySelector<HTMLElement>('main h1')?.focus();
  }

  #login() {
    return html`<section class="login">
      <h1>Sign in</h1>
      <p>
        Paste a Keyturn bearer token (a static token or a JWT from a configured issuer). It is kept in this tab's
        session storage only, and sent to this Keyturn's API and nowhere else. With a client certificate Keyturn
        knows, you are signed in without one.
      </p>
      ${problem(this.error)}
      <form @submit=${this.#signIn}>
        <label for="token">Bearer token</label>
        <input id="token" name="token" type="password" autocomplete="off" spellcheck="false" required />
        <button type="submit">Sign in</button>
      </form>
    </section>`;
  }
}

customElements.define('kt-app', KtApp);
