// Webhook deliveries of a provider: filters, one delivery with its payload and attempts, replay, and the
// dead-letter queue's redrive.
import { useState } from 'preact/hooks';
import { api, query } from '../api.js';
import { html } from '../html.js';
import { go, link } from '../router.js';
import { Badge, Json, Loading, More, ProblemBox, useLoad, usePaged, when } from '../ui.js';

const STATUSES = ['pending', 'processing', 'completed', 'failed', 'dead_letter'];

export function WebhooksPage({ route }) {
  const [, provider, id] = route.parts;
  if (provider && id) return html`<${Delivery} provider=${provider} id=${id} />`;
  return html`<${Deliveries} params=${route.params} />`;
}

function Deliveries({ params }) {
  const filters = {
    provider: params.get('provider') || localStorage.getItem('keel.console.provider') || '',
    status: params.get('status') || '',
    event_type: params.get('event_type') || '',
    since: params.get('since') || '',
    until: params.get('until') || '',
  };
  const [redrive, setRedrive] = useState(null);
  const state = usePaged(async (cursor) => {
    if (!filters.provider) return { items: null, next: null };
    localStorage.setItem('keel.console.provider', filters.provider);
    const { provider, ...rest } = filters;
    const page = (await api(`/v1/webhooks/${encodeURIComponent(provider)}/deliveries${query({ ...rest, limit: 100, cursor })}`)).data;
    return { items: page.items, next: page.next_cursor };
  }, Object.values(filters));
  const set = (name) => (event) => go('/webhooks', { ...filters, [name]: event.target.value });
  const redriveAll = async () => {
    try {
      setRedrive({ done: (await api('/v1/webhooks/dead-letters/redrive', { method: 'POST', body: { limit: 1000 } })).data });
    } catch (error) {
      setRedrive({ error });
    }
  };
  return html`<h1>Webhook deliveries</h1>
    <div class="toolbar">
      <label>Provider <input name="provider" value=${filters.provider} onChange=${set('provider')} placeholder="stripe" /></label>
      <label>Status <select name="status" value=${filters.status} onChange=${set('status')}>
        <option value="">any</option>${STATUSES.map((s) => html`<option value=${s}>${s}</option>`)}</select></label>
      <label>Event type <input name="event_type" value=${filters.event_type} onChange=${set('event_type')} /></label>
      <label>Since <input name="since" value=${filters.since} onChange=${set('since')} placeholder="RFC 3339" /></label>
      <label>Until <input name="until" value=${filters.until} onChange=${set('until')} placeholder="RFC 3339" /></label>
      <button type="button" onClick=${redriveAll} data-action="redrive">Redrive dead letters</button>
    </div>
    ${redrive && redrive.done
      ? html`<p class="ok" role="status" data-redriven>Redriven ${redrive.done.redriven}; left in the dead-letter queue:
          ${redrive.done.remaining === null ? 'unknown' : redrive.done.remaining}.</p>`
      : null}
    ${redrive && redrive.error ? html`<${ProblemBox} error=${redrive.error} />` : null}
    ${!filters.provider ? html`<p class="muted" data-ready>Name a provider to list its deliveries.</p>` : null}
    <${Loading} state=${state}>
      ${state.data &&
      html`<table data-ready>
        <thead><tr><th>delivery</th><th>event</th><th>type</th><th>status</th><th>attempts</th><th>received</th><th>last error</th></tr></thead>
        <tbody>${state.items.map(
          (d) => html`<tr data-delivery=${d.delivery_id}>
            <td><a href=${link(`/webhooks/${encodeURIComponent(filters.provider)}/${d.delivery_id}`)}>${d.delivery_id}</a></td>
            <td>${d.event_id}</td><td>${d.event_type}</td><td><${Badge} value=${d.status} /></td><td>${d.attempts}</td>
            <td>${when(d.received_at)}</td><td class="error-text">${d.last_error || ''}</td>
          </tr>`,
        )}</tbody>
      </table>
      <${More} paged=${state} noun="delivery" />`}
    <//>`;
}

function Delivery({ provider, id }) {
  const path = `/v1/webhooks/${encodeURIComponent(provider)}/deliveries/${encodeURIComponent(id)}`;
  const state = useLoad(() => api(path).then((r) => r.data), [path]);
  const [result, setResult] = useState(null);
  const replay = async () => {
    try {
      await api(`${path}/replay`, { method: 'POST' });
      setResult({ ok: 'Replay queued.' });
      state.reload();
    } catch (error) {
      setResult({ error });
    }
  };
  const d = state.data;
  return html`<h1>Delivery <code>${id}</code></h1>
    <p><a href=${link(`/webhooks?provider=${encodeURIComponent(provider)}`)}>All ${provider} deliveries</a></p>
    <${Loading} state=${state}>
      ${d &&
      html`<div data-ready>
        <dl class="facts">
          <dt>status</dt><dd><${Badge} value=${d.status} /></dd>
          <dt>event</dt><dd>${d.event_id} (${d.event_type})</dd>
          <dt>received</dt><dd>${when(d.received_at)}</dd>
          <dt>attempts</dt><dd data-attempts>${d.attempts}</dd>
          <dt>last attempt</dt><dd>${when(d.started_at)} → ${when(d.completed_at)} ${d.duration_ms != null ? `(${d.duration_ms} ms)` : ''}</dd>
          <dt>last error</dt><dd class="error-text">${d.last_error || '—'}</dd>
          <dt>replays</dt><dd data-replays>${d.replays}</dd>
          <dt>payload</dt><dd>${d.payload_removed_at ? `removed at ${when(d.payload_removed_at)} (24-hour retention)` : `${d.body_size} bytes, ${d.content_type || 'no content type'}`}</dd>
        </dl>
        <button type="button" onClick=${replay} data-action="replay" disabled=${Boolean(d.payload_removed_at)}>Replay</button>
        ${result && result.ok ? html`<p class="ok" role="status">${result.ok}</p>` : null}
        ${result && result.error ? html`<${ProblemBox} error=${result.error} />` : null}
        <h3>Payload</h3>
        ${d.payload !== undefined && d.payload !== null ? html`<${Json} value=${d.payload} />` : html`<pre class="json">${d.payload_base64 || ''}</pre>`}
      </div>`}
    <//>`;
}
