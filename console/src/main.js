// The console's shell: sign-in, the navigation the caller's role allows, and the page of the current route. Pages
// for platform admins are neither linked nor rendered for anyone else (the API would refuse them with 403 anyway).
import { render } from 'preact';
import { useState } from 'preact/hooks';
import { claims, isAdmin, loadConfig, oidc, setToken } from './api.js';
import { completeSignIn, signIn } from './oidc.js';
import { html } from './html.js';
import { go, link, useRoute } from './router.js';
import { AuditPage } from './pages/audit.js';
import { FlagsPage } from './pages/flags.js';
import { GdprPage, MyDataPage } from './pages/gdpr.js';
import { JobsPage } from './pages/jobs.js';
import { OverviewPage } from './pages/overview.js';
import { WebhooksPage } from './pages/webhooks.js';
import './style.css';

const PAGES = [
  { path: 'overview', title: 'Overview', admin: true, page: OverviewPage },
  { path: 'flags', title: 'Feature flags', admin: true, page: FlagsPage },
  { path: 'webhooks', title: 'Webhooks', admin: true, page: WebhooksPage },
  { path: 'jobs', title: 'Jobs', admin: false, page: JobsPage },
  { path: 'audit', title: 'Audit log', admin: false, page: AuditPage },
  { path: 'gdpr', title: 'GDPR', admin: true, page: GdprPage },
  { path: 'my-data', title: 'My data', admin: false, page: MyDataPage },
];

function SignIn({ failure }) {
  const [value, setValue] = useState('');
  const [error, setError] = useState(failure || '');
  const issuer = oidc();
  const viaIssuer = async () => {
    try {
      await signIn(issuer);
    } catch (e) {
      setError(e.message);
    }
  };
  const submit = (event) => {
    event.preventDefault();
    setToken(value.trim());
    const who = claims();
    if (!who) {
      setToken('');
      setError('That is not a JWT.');
      return;
    }
    go(isAdmin(who) ? '/overview' : '/jobs');
  };
  return html`<main class="signin">
    <h1>Keel console</h1>
    ${issuer
      ? html`<button type="button" data-action="oidc" onClick=${viaIssuer}>Sign in with ${new URL(issuer.issuer).host}</button>
          <p class="muted">Or paste a bearer token:</p>`
      : null}
    <form onSubmit=${submit}>
      <label class="field">
        <span class="label">Bearer token</span>
        <textarea name="token" rows="5" value=${value} onInput=${(e) => setValue(e.target.value)}
          placeholder="eyJ…"></textarea>
        <span class="hint">On keel-local: <code>keel-local token --org ORG --user USER --roles platform-admin</code>.
          The console keeps it in this tab's session storage only.</span>
      </label>
      ${error ? html`<div class="problem" role="alert">${error}</div>` : null}
      <button type="submit">Sign in</button>
    </form>
  </main>`;
}

function App({ failure }) {
  const route = useRoute();
  const who = claims();
  if (!who || (who.exp && who.exp * 1000 < Date.now())) return html`<${SignIn} failure=${failure} />`;
  const admin = isAdmin(who);
  const name = route.parts[0] || (admin ? 'overview' : 'jobs');
  const entry = PAGES.find((p) => p.path === name);
  const allowed = PAGES.filter((p) => admin || !p.admin);
  let body;
  if (!entry) body = html`<p>No such page.</p>`;
  else if (entry.admin && !admin)
    body = html`<div class="problem" role="alert" data-denied>This page needs the <code>platform-admin</code> role.</div>`;
  else body = html`<${entry.page} route=${route} who=${who} />`;
  const signOut = () => {
    setToken('');
    go('/');
    location.reload();
  };
  return html`<div class="shell">
    <nav>
      <strong class="brand">Keel</strong>
      ${allowed.map(
        (p) => html`<a href=${link(`/${p.path}`)} class=${p.path === name ? 'active' : ''} data-nav=${p.path}>${p.title}</a>`,
      )}
      <span class="who" data-who>${who.user} · ${who.org} · ${who.roles.join(', ')}</span>
      <button class="link" onClick=${signOut}>Sign out</button>
    </nav>
    <main data-page=${name} data-route=${location.hash || '#/'}>${body}</main>
  </div>`;
}

/** Loads the configuration, finishes a sign-in through the issuer if this is its return, then shows the console. */
async function start() {
  await loadConfig().catch(() => {});
  let failure = '';
  if (oidc()) {
    try {
      const token = await completeSignIn(oidc());
      if (token) setToken(token);
    } catch (error) {
      failure = error.message;
    }
  }
  render(html`<${App} failure=${failure} />`, document.getElementById('app'));
}

start();
