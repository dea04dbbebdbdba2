// Shared pieces of the console's pages: a Lit element that renders into the light DOM (one global stylesheet, which
// the strict CSP allows as a file; uPlot's own styles apply to its charts), and small formatters.
import { html, LitElement, nothing, type TemplateResult } from 'lit';
import { ApiFailure, type Me } from './api.ts';

export class LightElement extends LitElement {
  protected override createRenderRoot(): HTMLElement {
    return this;
  }
}

export const isAdmin = (me: Me) => me.roles.includes('admin');
/** May change credentials and rotate: what the API's `manage` access allows. */
export const canManage = (me: Me) => me.roles.some((r) => r === 'admin' || r === 'operator');
/** Sees every credential's settings: the API's `view` access. */
export const canViewAll = (me: Me) =>
  me.roles.some((r) => r === 'admin' || r === 'operator' || r === 'auditor');
/** Compliance and the audit trail: the API's `audit` access. */
export const canAudit = (me: Me) => me.roles.some((r) => r === 'admin' || r === 'auditor');
/** Secrets and leases: admin, or a reader for the credentials bound to it (the API checks the binding). */
export const mayUseSecrets = (me: Me) => me.roles.some((r) => r === 'admin' || r === 'reader');

export function when(value: string | null | undefined): string {
  if (!value) return '—';
  const d = new Date(value);
  return Number.isNaN(d.getTime())
    ? value
    : d
        .toISOString()
        .replace('T', ' ')
        .replace(/\.\d+Z$/, ' UTC');
}

export function ago(value: string | null | undefined, now = Date.now()): string {
  if (!value) return '';
  const ms = now - Date.parse(value);
  const future = ms < 0;
  const abs = Math.abs(ms);
  const text =
    abs < 90_000
      ? `${Math.round(abs / 1000)} s`
      : abs < 5_400_000
        ? `${Math.round(abs / 60_000)} min`
        : abs < 129_600_000
          ? `${Math.round(abs / 3_600_000)} h`
          : `${Math.round(abs / 86_400_000)} d`;
  return future ? `in ${text}` : `${text} ago`;
}

export function labelsText(labels: Record<string, string>): string {
  return Object.entries(labels)
    .map(([k, v]) => `${k}=${v}`)
    .join(', ');
}

/** A status as a badge: text always says it (colour is never the only sign). */
export function badge(status: string): TemplateResult {
  return html`<span class="badge badge-${status.replace(/[^a-z_]/g, '')}">${status}</span>`;
}

/** An error box for a failed request: the API's message says what failed and what to do. */
export function problem(err: unknown): TemplateResult | typeof nothing {
  if (!err) return nothing;
  const message = err instanceof Error ? err.message : String(err);
  const status = err instanceof ApiFailure ? ` (${err.status} ${err.code})` : '';
  return html`<p class="error" role="alert">${message}${status}</p>`;
}

/** Sets the document's title and moves focus to the page's heading, so that a screen reader announces the page. */
export function pageShown(element: HTMLElement, title: string): void {
  document.title = `${title} · Keyturn console`;
  const heading = element.querySelector('h1');
  if (heading) {
    heading.tabIndex = -1;
    heading.focus({ preventScroll: true });
  }
}
