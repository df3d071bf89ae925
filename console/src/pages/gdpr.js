// GDPR: for platform admins, the requests (recent ones from the audit log, one by id, a new export or erasure with
// its dry run), the data map and the scheduled cleanups; for everyone, their own data export.
import { useState } from 'preact/hooks';
import { api } from '../api.js';
import { html } from '../html.js';
import { Badge, Json, Loading, ProblemBox, useLoad, when } from '../ui.js';

function retention(r) {
  if (!r) return '';
  if (r.kind === 'expires' || r.seconds) return `expires after ${Math.round(r.seconds / 3600)} h`;
  if (r.kind === 'cleanup' || r.days) return `cleaned after ${r.days} days`;
  return 'while in use';
}

function describe(value) {
  if (value === null || value === undefined) return '';
  if (typeof value === 'string') return value;
  return value.kind || JSON.stringify(value);
}

export function GdprPage() {
  const map = useLoad(() => api('/v1/admin/gdpr/data-map').then((r) => r.data.entries), []);
  const cleanups = useLoad(() => api('/v1/admin/cleanups').then((r) => r.data.cleanups), []);
  const recent = useLoad(async () => {
    const [exports, erasures] = await Promise.all(
      ['gdpr.export.request', 'gdpr.erasure.request'].map((action) =>
        api(`/v1/audit-logs?action=${action}&limit=20`).then((r) => r.data.entries),
      ),
    );
    return [...exports, ...erasures].sort((a, b) => String(b.at).localeCompare(String(a.at)));
  }, []);
  return html`<h1>GDPR</h1>
    <${NewRequest} onDone=${recent.reload} />
    <${Lookup} />
    <h2>Recent requests</h2>
    <${Loading} state=${recent}>
      ${recent.data &&
      html`<table data-requests>
        <thead><tr><th>at</th><th>request</th><th>by</th><th>resource</th><th>reason</th></tr></thead>
        <tbody>${recent.data.map(
          (e) => html`<tr><td>${when(e.at)}</td><td><code>${e.action}</code></td><td>${e.actor}</td><td>${e.resource}</td><td>${e.reason || ''}</td></tr>`,
        )}</tbody></table>
      ${recent.data.length === 0 ? html`<p class="muted">No request yet.</p>` : null}`}
    <//>
    <h2>Scheduled cleanups</h2>
    <${Loading} state=${cleanups}>
      ${cleanups.data &&
      html`<table data-cleanups>
        <thead><tr><th>cleanup</th><th>latest run</th><th>removed</th><th>complete</th><th>error</th></tr></thead>
        <tbody>${cleanups.data.map((c) => {
          const run = (c.runs || [])[0];
          return html`<tr><td><code>${c.name}</code></td><td>${run ? when(run.finished_at || run.started_at) : 'never ran'}</td>
            <td>${run ? run.removed : ''}</td><td>${run ? String(run.complete) : ''}</td><td class="error-text">${(run && run.error) || ''}</td></tr>`;
        })}</tbody></table>`}
    <//>
    <h2>Data map</h2>
    <${Loading} state=${map}>
      ${map.data &&
      html`<table data-ready data-map>
        <thead><tr><th>entry</th><th>table</th><th>key</th><th>personal data</th><th>purpose</th><th>retention</th><th>export</th><th>erasure</th></tr></thead>
        <tbody>${map.data.map(
          (e) => html`<tr data-entry=${e.name}>
            <td><code>${e.name}</code><div class="muted">${e.description}</div></td><td><code>${e.table}</code></td>
            <td><code>${e.pk}</code> <code>${e.sk}</code></td><td>${(e.personal_data || []).join(', ')}</td><td>${e.purpose}</td>
            <td>${retention(e.retention)}</td><td>${describe(e.export)}</td><td>${describe(e.erasure)}</td>
          </tr>`,
        )}</tbody></table>`}
    <//>`;
}

function NewRequest({ onDone }) {
  const [form, setForm] = useState({ kind: 'export', user_id: '', reason: '', confirm: '' });
  const [answer, setAnswer] = useState(null);
  const [problem, setProblem] = useState(null);
  const set = (name) => (event) => setForm({ ...form, [name]: event.target.value });
  const send = (dryRun) => async (event) => {
    event.preventDefault();
    const body = { user_id: form.user_id, reason: form.reason };
    let path = '/v1/admin/gdpr/exports';
    if (form.kind === 'erasure') {
      path = dryRun ? '/v1/admin/gdpr/erasures?dry_run=true' : '/v1/admin/gdpr/erasures';
      if (!dryRun) body.confirm = form.confirm;
    }
    try {
      setAnswer((await api(path, { method: 'POST', body })).data);
      setProblem(null);
      onDone();
    } catch (error) {
      setProblem(error);
    }
  };
  return html`<form class="inline-form" onSubmit=${send(false)} data-new-request>
    <h2>New request</h2>
    <select name="kind" value=${form.kind} onChange=${set('kind')}><option value="export">export (access)</option><option value="erasure">erasure</option></select>
    <input name="user_id" placeholder="user id" value=${form.user_id} onInput=${set('user_id')} required />
    <input name="reason" placeholder="reason (the ticket)" value=${form.reason} onInput=${set('reason')} required />
    ${form.kind === 'erasure' ? html`<input name="confirm" placeholder="the user id again, to confirm" value=${form.confirm} onInput=${set('confirm')} />
      <button type="button" onClick=${send(true)} data-action="dry-run">Dry run</button>` : null}
    <button type="submit">${form.kind === 'erasure' ? 'Erase' : 'Export'}</button>
    <${ProblemBox} error=${problem} />
    ${answer ? html`<${Json} value=${answer} />` : null}
  </form>`;
}

function Lookup() {
  const [form, setForm] = useState({ kind: 'exports', id: '' });
  const [found, setFound] = useState(null);
  const [problem, setProblem] = useState(null);
  const submit = async (event) => {
    event.preventDefault();
    try {
      setFound((await api(`/v1/admin/gdpr/${form.kind}/${encodeURIComponent(form.id)}`)).data);
      setProblem(null);
    } catch (error) {
      setProblem(error);
    }
  };
  return html`<form class="inline-form" onSubmit=${submit}>
    <h2>Look up a request</h2>
    <select name="lookup-kind" value=${form.kind} onChange=${(e) => setForm({ ...form, kind: e.target.value })}>
      <option value="exports">export</option><option value="erasures">erasure</option></select>
    <input name="id" placeholder="request id" value=${form.id} onInput=${(e) => setForm({ ...form, id: e.target.value })} required />
    <button type="submit">Show</button>
    <${ProblemBox} error=${problem} />
    ${found ? html`<div><p>Status <${Badge} value=${found.status} />${found.download ? html` · <a href=${found.download.url}>download (15-minute link)</a>` : null}</p><${Json} value=${found} /></div>` : null}
  </form>`;
}

export function MyDataPage() {
  const [latest, setLatest] = useState(null);
  const [problem, setProblem] = useState(null);
  const start = async () => {
    try {
      setLatest((await api('/v1/user/data-exports', { method: 'POST' })).data);
      setProblem(null);
    } catch (error) {
      setProblem(error);
    }
  };
  const refresh = async () => {
    try {
      setLatest((await api(`/v1/user/data-exports/${encodeURIComponent(latest.id)}`)).data);
    } catch (error) {
      setProblem(error);
    }
  };
  return html`<h1>My data</h1>
    <p data-ready>An export of everything Keel holds about you: one JSON Lines file per kind of item, in a zip.</p>
    <button type="button" onClick=${start} data-action="export">Export my data</button>
    ${latest ? html`<button type="button" onClick=${refresh}>Refresh</button>` : null}
    <${ProblemBox} error=${problem} />
    ${latest
      ? html`<p>Export <code>${latest.id}</code>: <${Badge} value=${latest.status} />
          ${latest.download ? html` · <a href=${latest.download.url} data-download>download</a>` : null}</p>`
      : null}`;
}
