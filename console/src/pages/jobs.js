// Jobs: filters, one job with its attempts as a timeline, cancel and retry, and live updates from the
// organization's event stream (a `job.*` event patches the job it names, so a cancel shows up as it happens).
import { useEffect, useState } from 'preact/hooks';
import { api, query, stream } from '../api.js';
import { html } from '../html.js';
import { go, link } from '../router.js';
import { Badge, Json, Loading, More, ProblemBox, useLoad, usePaged, when } from '../ui.js';

const STATUSES = ['pending', 'processing', 'completed', 'failed', 'cancelled'];
const STATUS_OF = { 'job.created': 'pending', 'job.started': 'processing', 'job.completed': 'completed', 'job.failed': 'failed', 'job.cancelled': 'cancelled' };

/** The stream's state ('connecting', 'live', 'reconnecting') and each event, while the page is open. */
function useStream(onEvent) {
  const [state, setState] = useState('connecting');
  useEffect(() => stream(onEvent, setState), []);
  return state;
}

function jobIdOf(event) {
  return (event.data && (event.data.job_id || event.data.id)) || String(event.id || '').split('.')[0];
}

export function JobsPage({ route, who }) {
  const id = route.parts[1];
  // Keyed by id: another job is a new page, with its own stream filter and state.
  if (id) return html`<${JobDetail} key=${id} id=${id} />`;
  return html`<${JobList} params=${route.params} admin=${who.roles.includes('platform-admin')} />`;
}

function JobList({ params, admin }) {
  const names = ['status', 'type', 'category', 'user_id', 'org_id'];
  const filters = Object.fromEntries(names.map((n) => [n, params.get(n) || '']));
  const state = usePaged(
    (cursor) => api(`/v1/jobs${query({ ...filters, limit: 100, cursor })}`).then((r) => ({ items: r.data.items, next: r.data.next_cursor })),
    Object.values(filters),
  );
  const [live, setLive] = useState({});
  const streamState = useStream((event) => {
    const status = STATUS_OF[event.type];
    if (status) setLive((seen) => ({ ...seen, [jobIdOf(event)]: status }));
  });
  const set = (name) => (event) => go('/jobs', { ...filters, [name]: event.target.value });
  return html`<h1>Jobs <span class=${`live live-${streamState}`} data-stream=${streamState}>${streamState}</span></h1>
    <div class="toolbar">
      <label>Status <select name="status" value=${filters.status} onChange=${set('status')}>
        <option value="">any</option>${STATUSES.map((s) => html`<option value=${s}>${s}</option>`)}</select></label>
      ${['type', 'category', 'user_id']
        .concat(admin ? ['org_id'] : [])
        .map((n) => html`<label>${n.replace('_', ' ')} <input name=${n} value=${filters[n]} onChange=${set(n)} /></label>`)}
    </div>
    <${Loading} state=${state}>
      ${state.data &&
      html`<table data-ready>
        <thead><tr><th>job</th><th>type</th><th>status</th><th>user</th><th>created</th><th>attempts</th></tr></thead>
        <tbody>${state.items.map(
          (j) => html`<tr data-job=${j.id}>
            <td><a href=${link(`/jobs/${j.id}`)}>${j.id}</a></td><td>${j.type}</td>
            <td><${Badge} value=${live[j.id] || j.status} />${j.waiting && !live[j.id] ? html` <span class="muted">${j.waiting}</span>` : null}</td>
            <td>${j.user_id}</td><td>${when(j.created_at)}</td><td>${j.attempts.length}</td>
          </tr>`,
        )}</tbody>
      </table>
      <${More} paged=${state} noun="job" />`}
    <//>`;
}

/** The attempts on one time axis, from the job's creation to its end (or now). */
function Timeline({ job }) {
  const start = new Date(job.created_at).getTime();
  const ends = job.attempts.map((a) => new Date(a.ended_at || Date.now()).getTime());
  const end = Math.max(start + 1, new Date(job.finished_at || 0).getTime(), ...ends, Date.now() * (job.finished_at ? 0 : 1));
  const x = (t) => 10 + ((new Date(t).getTime() - start) / (end - start)) * 500;
  return html`<svg class="timeline" viewBox=${`0 0 520 ${job.attempts.length * 28 + 30}`} width="100%" role="img" aria-label="attempts">
    <line x1="10" x2="510" y1="10" y2="10" class="axis-line" />
    <text x="10" y="24" class="axis">${when(job.created_at)}</text>
    ${job.attempts.map((a, i) => {
      const left = x(a.started_at);
      const width = Math.max(3, x(a.ended_at || new Date().toISOString()) - left);
      return html`<g data-attempt=${a.number}>
        <rect x=${left} y=${i * 28 + 32} width=${width} height="18" class=${`attempt attempt-${a.outcome || 'running'}`}>
          <title>attempt ${a.number}: ${a.outcome || 'running'} ${a.error || ''}</title></rect>
        <text x=${Math.min(left + width + 4, 430)} y=${i * 28 + 45} class="axis">#${a.number} ${a.outcome || 'running'}</text>
      </g>`;
    })}
  </svg>`;
}

function JobDetail({ id }) {
  const state = useLoad(() => api(`/v1/jobs/${encodeURIComponent(id)}`).then((r) => r.data), [id]);
  const [status, setStatus] = useState(null);
  const [message, setMessage] = useState(null);
  const streamState = useStream((event) => {
    if (jobIdOf(event) !== id) return;
    const next = STATUS_OF[event.type];
    if (next) setStatus(next);
    if (event.type !== 'job.created') state.reload();
  });
  const act = (action) => async () => {
    try {
      const answer = (await api(`/v1/jobs/${encodeURIComponent(id)}/${action}`, { method: 'POST' })).data;
      setMessage({ ok: action === 'retry' ? html`Retried as <a href=${link(`/jobs/${answer.id}`)}>${answer.id}</a>.` : 'Cancel requested.' });
    } catch (error) {
      setMessage({ error });
    }
  };
  const job = state.data;
  const shown = status || (job && job.status);
  const finished = ['completed', 'failed', 'cancelled'].includes(shown);
  return html`<h1>Job <code>${id}</code> <span class=${`live live-${streamState}`} data-stream=${streamState}>${streamState}</span></h1>
    <${Loading} state=${state}>
      ${job &&
      html`<div data-ready>
        <dl class="facts">
          <dt>status</dt><dd data-status=${shown}><${Badge} value=${shown} />${job.waiting && !status ? ` (${job.waiting})` : ''}</dd>
          <dt>type</dt><dd>${job.type} (${job.category})</dd>
          <dt>organization · user</dt><dd>${job.org_id} · ${job.user_id}</dd>
          <dt>created · runs at</dt><dd>${when(job.created_at)} · ${when(job.run_at)}</dd>
          <dt>finished</dt><dd>${when(job.finished_at)}</dd>
          ${job.error ? html`<dt>error</dt><dd class="error-text">${job.error.code}: ${job.error.message}</dd>` : null}
          ${job.retry_of ? html`<dt>retry of</dt><dd><a href=${link(`/jobs/${job.retry_of}`)}>${job.retry_of}</a></dd>` : null}
          ${job.retried_by ? html`<dt>retried by</dt><dd><a href=${link(`/jobs/${job.retried_by}`)}>${job.retried_by}</a></dd>` : null}
        </dl>
        <div class="actions">
          <button type="button" onClick=${act('cancel')} disabled=${finished} data-action="cancel">Cancel</button>
          <button type="button" onClick=${act('retry')} disabled=${!['failed', 'cancelled'].includes(shown) || job.retried_by}
            data-action="retry">Retry</button>
        </div>
        ${message && message.ok ? html`<p class="ok" role="status">${message.ok}</p>` : null}
        ${message && message.error ? html`<${ProblemBox} error=${message.error} />` : null}
        <h3>Attempts</h3>
        ${job.attempts.length ? html`<${Timeline} job=${job} />` : html`<p class="muted">No attempt yet.</p>`}
        <table><thead><tr><th>#</th><th>started</th><th>ended</th><th>outcome</th><th>downstream</th><th>error</th></tr></thead>
          <tbody>${job.attempts.map(
            (a) => html`<tr><td>${a.number}</td><td>${when(a.started_at)}</td><td>${when(a.ended_at)}</td>
              <td>${a.outcome || 'running'}</td><td>${a.downstream_status || ''}</td><td class="error-text">${a.error || ''}</td></tr>`,
          )}</tbody></table>
        <h3>Input</h3><${Json} value=${job.input} />
        ${job.output !== undefined && job.output !== null ? html`<h3>Output</h3><${Json} value=${job.output} />` : null}
      </div>`}
    <//>`;
}
