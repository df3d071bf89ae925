// The audit log: every capability's trail, newest first, with its filters. Platform admins read everything;
// an organization's admins read their organization's; everyone else reads their own actions.
import { api, query } from '../api.js';
import { html } from '../html.js';
import { go } from '../router.js';
import { Change, Loading, More, usePaged, when } from '../ui.js';

export function AuditPage({ route, who }) {
  const names = ['action', 'actor', 'resource', 'from', 'to', 'org_id'];
  const filters = Object.fromEntries(names.map((n) => [n, route.params.get(n) || '']));
  const state = usePaged(
    (cursor) =>
      api(`/v1/audit-logs${query({ ...filters, limit: 100, cursor })}`).then((r) => ({ items: r.data.entries, next: r.data.next_cursor })),
    Object.values(filters),
  );
  const set = (name) => (event) => go('/audit', { ...filters, [name]: event.target.value });
  const admin = who.roles.includes('platform-admin');
  return html`<h1>Audit log</h1>
    <div class="toolbar">
      ${names
        .filter((n) => admin || n !== 'org_id')
        .map((n) => html`<label>${n.replace('_', ' ')} <input name=${n} value=${filters[n]} onChange=${set(n)} /></label>`)}
    </div>
    <${Loading} state=${state}>
      ${state.data &&
      html`<table data-ready>
        <thead><tr><th>at</th><th>action</th><th>actor</th><th>resource</th><th>reason</th><th>change</th></tr></thead>
        <tbody>${state.items.map(
          (e) => html`<tr data-entry=${e.id}>
            <td>${when(e.at)}</td><td><code>${e.action}</code></td><td>${e.actor}</td><td>${e.resource}</td>
            <td>${e.reason || ''}</td><td><${Change} before=${e.before} after=${e.after} /></td>
          </tr>`,
        )}</tbody>
      </table>
      <${More} paged=${state} noun="entry" />`}
    <//>`;
}
