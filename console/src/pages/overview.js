// The overview: charts of the metrics that matter, from keel-local's /metrics (Prometheus text, every function's
// since the host started). A deployed stack serves no /metrics: its numbers are CloudWatch's (the template's
// dashboard), and the page says so.
import { api } from '../api.js';
import { html } from '../html.js';
import { Loading, useLoad } from '../ui.js';

/** Prometheus text exposition: [{ name, labels, value }]. */
export function parseMetrics(text) {
  const samples = [];
  for (const line of text.split('\n')) {
    if (!line || line.startsWith('#')) continue;
    const match = line.match(/^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)/);
    if (!match) continue;
    const labels = {};
    for (const pair of (match[2] || '').matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g)) labels[pair[1]] = pair[2];
    samples.push({ name: match[1], labels, value: Number(match[3]) });
  }
  return samples;
}

/** Sums `name` by the label `by`, split by the label `split`: { [by]: { [split]: sum } }. */
function group(samples, name, by, split) {
  const groups = {};
  for (const s of samples.filter((s) => s.name === name)) {
    const key = s.labels[by] || '—';
    const part = typeof split === 'function' ? split(s) : s.labels[split] || '—';
    groups[key] = groups[key] || {};
    groups[key][part] = (groups[key][part] || 0) + s.value;
  }
  return groups;
}

const COLORS = ['#1565c0', '#6a1b9a', '#00838f', '#5d4037', '#546e7a', '#ad1457'];
/** Good outcomes green, retried ones orange, lost ones red; anything else takes the next colour of COLORS. */
const MEANING = [
  [/^(2xx|forwarded|succeeded|completed|closed|accepted)$/, '#2f7d32'],
  [/^(duplicate|mean)$/, '#1565c0'],
  [/^(3xx|4xx|retriable|released|failed attempt|half_open|cancelled)$/, '#ef6c00'],
  [/^(5xx|failed|lost|dead-lettered|open)$|^rejected/, '#c62828'],
];

function colour(name, i) {
  const meant = MEANING.find(([pattern]) => pattern.test(name));
  return meant ? meant[1] : COLORS[i % COLORS.length];
}

/** A horizontal stacked bar per row, one colour per series, with a legend. */
function Bars({ title, groups, unit = '', id }) {
  const series = [...new Set(Object.values(groups).flatMap((g) => Object.keys(g)))].sort();
  const rows = Object.entries(groups).sort(([a], [b]) => a.localeCompare(b));
  const max = Math.max(1, ...rows.map(([, g]) => Object.values(g).reduce((a, b) => a + b, 0)));
  return html`<section class="chart" data-chart=${id}>
    <h3>${title}</h3>
    ${rows.length === 0
      ? html`<p class="muted">Nothing recorded yet.</p>`
      : html`<svg role="img" aria-label=${title} viewBox=${`0 0 520 ${rows.length * 26 + 4}`} width="100%">
          ${rows.map(([label, parts], row) => {
            let x = 160;
            return html`<g>
              <text x="0" y=${row * 26 + 17} class="axis">${label}</text>
              ${series.map((name, i) => {
                const width = ((parts[name] || 0) / max) * 300;
                const bar = html`<rect x=${x} y=${row * 26 + 4} width=${width} height="18" fill=${colour(name, i)}>
                  <title>${label} ${name}: ${parts[name] || 0}${unit}</title></rect>`;
                x += width;
                return bar;
              })}
              <text x=${x + 6} y=${row * 26 + 17} class="axis">
                ${Object.values(parts).reduce((a, b) => a + b, 0).toLocaleString()}${unit}</text>
            </g>`;
          })}
        </svg>
        <p class="legend">${series.map(
          (name, i) => html`<span><svg width="10" height="10" aria-hidden="true"><rect width="10" height="10" fill=${colour(name, i)} /></svg> ${name}</span>`,
        )}</p>`}
  </section>`;
}

export function OverviewPage() {
  const state = useLoad(async () => {
    const [metrics, breakers] = await Promise.all([
      fetch('/metrics').then((r) => (r.ok ? r.text() : null)),
      api('/v1/admin/jobs/breakers').then((r) => r.data.items),
    ]);
    return { samples: metrics === null ? null : parseMetrics(metrics), breakers };
  }, []);
  return html`<h1>Overview</h1>
    <${Loading} state=${state}>
      ${state.data &&
      html`<div class="charts" data-ready>
        ${state.data.samples === null
          ? html`<p class="muted">This stack serves no <code>/metrics</code>: on AWS the same numbers are in
              CloudWatch (namespace <code>Keel</code>, and the template's dashboard).</p>`
          : html`
              <${Bars} id="requests" title="Requests by function and status"
                groups=${group(state.data.samples, 'keel_requests_total', 'function', 'status')} />
              <${Bars} id="webhooks" title="Webhooks by provider: received and forwarded"
                groups=${merge(
                  group(state.data.samples, 'keel_webhooks_accepted_total', 'provider', () => 'accepted'),
                  group(state.data.samples, 'keel_webhooks_duplicate_total', 'provider', () => 'duplicate'),
                  group(state.data.samples, 'keel_webhooks_rejected_total', 'provider', (s) => `rejected ${s.labels.reason || ''}`.trim()),
                  group(state.data.samples, 'keel_deliveries_forwarded_total', 'provider', () => 'forwarded'),
                  group(state.data.samples, 'keel_deliveries_failed_total', 'provider', () => 'failed attempt'),
                  group(state.data.samples, 'keel_deliveries_dead_lettered_total', 'provider', () => 'dead-lettered'),
                )} />
              <${Bars} id="queue-age" title="Webhook age when forwarded (mean, ms)" unit=" ms"
                groups=${meanAge(state.data.samples)} />
              <${Bars} id="jobs" title="Job attempts by type and outcome"
                groups=${group(state.data.samples, 'keel_job_attempts_total', 'type', 'outcome')} />
            `}
        <${Bars} id="breakers" title="Circuit breakers by state"
          groups=${state.data.breakers.reduce((g, b) => ({ ...g, [b.target]: { [b.state]: 1 } }), {})} />
      </div>`}
    <//>`;
}

function merge(...groups) {
  const out = {};
  for (const g of groups) for (const [k, parts] of Object.entries(g)) out[k] = { ...(out[k] || {}), ...parts };
  return out;
}

function meanAge(samples) {
  const sums = group(samples, 'keel_delivery_age_at_forward_milliseconds_sum', 'provider', () => 'sum');
  const counts = group(samples, 'keel_delivery_age_at_forward_milliseconds_count', 'provider', () => 'count');
  const out = {};
  for (const [provider, { sum }] of Object.entries(sums)) {
    const count = (counts[provider] || {}).count || 0;
    if (count) out[provider] = { mean: Math.round(sum / count) };
  }
  return out;
}
