// Small shared pieces: loading an answer, showing a problem, tables, dates, before/after.
import { useEffect, useState } from 'preact/hooks';
import { html } from './html.js';

/** Runs `load` when `deps` change; { data, error, loading, reload }. */
export function useLoad(load, deps) {
  const [state, setState] = useState({ data: null, error: null, loading: true });
  const [round, setRound] = useState(0);
  useEffect(() => {
    let live = true;
    setState((s) => ({ ...s, loading: true }));
    load().then(
      (data) => live && setState({ data, error: null, loading: false }),
      (error) => live && setState({ data: null, error, loading: false }),
    );
    return () => {
      live = false;
    };
  }, [...deps, round]);
  return { ...state, reload: () => setRound((n) => n + 1) };
}

/**
 * A list the API pages with `next_cursor`: `load(cursor)` answers { items, next }. The first page loads when `deps`
 * change; `more()` appends the next. A short or empty page with a cursor is not the end.
 */
export function usePaged(load, deps) {
  const [state, setState] = useState({ items: null, next: null, error: null, loading: true });
  useEffect(() => {
    let live = true;
    setState({ items: null, next: null, error: null, loading: true });
    load(null).then(
      (page) => live && setState({ items: page.items, next: page.next, error: null, loading: false }),
      (error) => live && setState({ items: null, next: null, error, loading: false }),
    );
    return () => {
      live = false;
    };
  }, deps);
  const more = async () => {
    setState((s) => ({ ...s, loading: true }));
    try {
      const page = await load(state.next);
      setState((s) => ({ items: [...s.items, ...page.items], next: page.next, error: null, loading: false }));
    } catch (error) {
      setState((s) => ({ ...s, error, loading: false }));
    }
  };
  return { ...state, data: state.items, more };
}

/** The end of a paged list: a "More" button while there is a cursor, else the count (or that nothing matched). */
export function More({ paged, noun }) {
  if (!paged.items) return null;
  if (paged.next) {
    return html`<p><button type="button" data-action="more" disabled=${paged.loading} onClick=${paged.more}>More</button>
      <span class="muted"> ${paged.items.length} shown; there may be more than this page found</span></p>`;
  }
  return html`<p class="muted">${paged.items.length === 0 ? `No ${noun} matches.` : `${paged.items.length} shown.`}</p>`;
}

export function ProblemBox({ error }) {
  if (!error) return null;
  const code = error.code ? html`<code>${error.code}</code> ` : '';
  return html`<div class="problem" role="alert">${code}${error.message}</div>`;
}

export function Loading({ state, children }) {
  if (state.error) return html`<${ProblemBox} error=${state.error} />`;
  if (state.loading && !state.data) return html`<p class="muted">Loading…</p>`;
  return children;
}

export function when(value) {
  if (!value) return '—';
  const date = new Date(value);
  return Number.isNaN(date.getTime()) ? String(value) : date.toISOString().replace('T', ' ').replace(/\.\d+Z$/, 'Z');
}

export function Badge({ value }) {
  return html`<span class=${`badge badge-${String(value).replace(/[^a-z_-]/gi, '')}`}>${String(value)}</span>`;
}

export function Json({ value }) {
  return html`<pre class="json">${JSON.stringify(value, null, 2)}</pre>`;
}

/** The top-level fields an audit entry's change touched, each with its value before and after. */
export function changes(before, after) {
  const keys = new Set([...Object.keys(before || {}), ...Object.keys(after || {})]);
  const changed = [];
  for (const key of keys) {
    const was = before ? before[key] : undefined;
    const now = after ? after[key] : undefined;
    if (JSON.stringify(was) !== JSON.stringify(now)) changed.push({ key, was, now });
  }
  return changed;
}

export function Change({ before, after }) {
  if (!before && !after) return html`<span class="muted">no document recorded</span>`;
  const rows = changes(before, after);
  if (rows.length === 0) return html`<span class="muted">no field changed</span>`;
  return html`<table class="change">
    <thead><tr><th>field</th><th>before</th><th>after</th></tr></thead>
    <tbody>
      ${rows.map(
        (row) => html`<tr data-field=${row.key}>
          <td><code>${row.key}</code></td>
          <td class="before"><code>${row.was === undefined ? '—' : JSON.stringify(row.was)}</code></td>
          <td class="after"><code>${row.now === undefined ? '—' : JSON.stringify(row.now)}</code></td>
        </tr>`,
      )}
    </tbody>
  </table>`;
}

export function Field({ label, name, errors, children, hint }) {
  const mine = (errors || []).filter((e) => fieldOf(e.pointer) === name);
  return html`<label class=${`field${mine.length ? ' invalid' : ''}`} data-field=${name}>
    <span class="label">${label}</span>
    ${children}
    ${hint ? html`<span class="hint">${hint}</span>` : null}
    ${mine.map((e) => html`<span class="error" data-pointer=${e.pointer}>${e.pointer}: ${e.message}</span>`)}
  </label>`;
}

/** The form field a JSON pointer lands in: its first segment (`/rules/0/constraints` is `rules`). */
export function fieldOf(pointer) {
  return String(pointer || '').split('/').filter(Boolean)[0] || '';
}
