// Feature flags: the list (stale and type filters), one flag's edit form (the API's 422 pointers shown on their
// fields), its overrides, an evaluation explained, and its audit trail with each change before and after.
import { useState } from 'preact/hooks';
import { api, query } from '../api.js';
import { html } from '../html.js';
import { go, link } from '../router.js';
import { Badge, Change, Field, Loading, More, ProblemBox, fieldOf, useLoad, usePaged, when } from '../ui.js';

const TYPES = ['release', 'experiment', 'operational', 'kill-switch', 'permission'];
const VALUE_TYPES = ['boolean', 'string', 'number', 'object'];

export function FlagsPage({ route }) {
  const key = route.parts[1];
  if (key === 'new') return html`<${FlagForm} flag=${null} />`;
  if (key) return html`<${FlagDetail} flagKey=${key} tab=${route.params.get('tab') || 'edit'} />`;
  return html`<${FlagList} params=${route.params} />`;
}

function FlagList({ params }) {
  const filters = { type: params.get('type') || '', stale: params.get('stale') || '', prefix: params.get('prefix') || '' };
  const state = usePaged(
    (cursor) =>
      api(`/v1/admin/flags${query({ ...filters, limit: 100, cursor })}`).then((r) => ({ items: r.data.items, next: r.data.next_cursor })),
    [filters.type, filters.stale, filters.prefix],
  );
  const set = (name) => (event) => go('/flags', { ...filters, [name]: event.target.value });
  return html`<h1>Feature flags</h1>
    <div class="toolbar">
      <label>Type <select name="type" value=${filters.type} onChange=${set('type')}>
        <option value="">any</option>${TYPES.map((t) => html`<option value=${t}>${t}</option>`)}
      </select></label>
      <label>Stale <select name="stale" value=${filters.stale} onChange=${set('stale')}>
        <option value="">any</option><option value="true">stale</option><option value="false">not stale</option>
      </select></label>
      <label>Key prefix <input name="prefix" value=${filters.prefix} onChange=${set('prefix')} /></label>
      <a class="button" href=${link('/flags/new')}>New flag</a>
    </div>
    <${Loading} state=${state}>
      ${state.data &&
      html`<table data-ready>
        <thead><tr><th>key</th><th>type</th><th>value type</th><th>kill switch</th><th>stale</th><th>last evaluated</th><th>version</th></tr></thead>
        <tbody>
          ${state.items.map(
            (f) => html`<tr data-flag=${f.key}>
              <td><a href=${link(`/flags/${encodeURIComponent(f.key)}`)}>${f.key}</a></td>
              <td>${f.lifecycle && f.lifecycle.type}</td>
              <td>${f.value_type || 'boolean'}</td>
              <td><${Badge} value=${f.enabled ? 'on' : 'killed'} /></td>
              <td>${f.stale ? html`<${Badge} value=${`stale: ${f.stale_reason}`} />` : 'no'}</td>
              <td>${when(f.last_evaluated_at)}</td>
              <td>${f.version}</td>
            </tr>`,
          )}
        </tbody>
      </table>
      <${More} paged=${state} noun="flag" />`}
    <//>`;
}

function FlagDetail({ flagKey, tab }) {
  const state = useLoad(() => api(`/v1/admin/flags/${encodeURIComponent(flagKey)}`).then((r) => r.data), [flagKey]);
  const tabs = ['edit', 'overrides', 'explain', 'audit'];
  return html`<h1>Flag <code>${flagKey}</code></h1>
    <div class="tabs">
      ${tabs.map(
        (t) => html`<a href=${link(`/flags/${encodeURIComponent(flagKey)}?tab=${t}`)} class=${t === tab ? 'active' : ''}
          data-tab=${t}>${t}</a>`,
      )}
    </div>
    <${Loading} state=${state}>
      ${state.data && tab === 'edit' && html`<${FlagForm} flag=${state.data} onSaved=${state.reload} />`}
      ${state.data && tab === 'overrides' && html`<${Overrides} flag=${state.data} onSaved=${state.reload} />`}
      ${state.data && tab === 'explain' && html`<${Explain} flag=${state.data} />`}
      ${tab === 'audit' && html`<${FlagAudit} flagKey=${flagKey} />`}
    <//>`;
}

const list = (text) => text.split(',').map((s) => s.trim()).filter(Boolean);
const json = (text, fallback) => (text.trim() === '' ? fallback : JSON.parse(text));

/** The form's text for each field of a flag. */
function formOf(flag) {
  const f = flag || {};
  const lifecycle = f.lifecycle || {};
  return {
    key: f.key || '',
    description: f.description || '',
    enabled: f.enabled !== false,
    default_value: Boolean(f.default_value),
    value_type: f.value_type || 'boolean',
    environments: (f.environments || []).join(', '),
    allow_orgs: (f.allow_orgs || []).join(', '),
    block_orgs: (f.block_orgs || []).join(', '),
    target_users: (f.target_users || []).join(', '),
    type: lifecycle.type || 'release',
    permanent: Boolean(lifecycle.permanent),
    stale_after: lifecycle.stale_after || '',
    rules: JSON.stringify(f.rules || [], null, 2),
    variants: JSON.stringify(f.variants || [], null, 2),
    default_variant: f.default_variant ? JSON.stringify(f.default_variant, null, 2) : '',
    prerequisites: JSON.stringify(f.prerequisites || [], null, 2),
  };
}

function FlagForm({ flag, onSaved }) {
  const [form, setForm] = useState(formOf(flag));
  const [problem, setProblem] = useState(null);
  const [saved, setSaved] = useState('');
  const set = (name) => (event) => {
    const target = event.target;
    setForm({ ...form, [name]: target.type === 'checkbox' ? target.checked : target.value });
  };
  const submit = async (event) => {
    event.preventDefault();
    setSaved('');
    let body;
    try {
      body = {
        ...(flag || {}),
        key: form.key.trim(),
        description: form.description,
        enabled: form.enabled,
        default_value: form.default_value,
        value_type: form.value_type,
        environments: list(form.environments),
        allow_orgs: list(form.allow_orgs),
        block_orgs: list(form.block_orgs),
        target_users: list(form.target_users),
        lifecycle: { type: form.type, permanent: form.permanent, stale_after: form.stale_after || null },
        rules: json(form.rules, []),
        variants: json(form.variants, []),
        default_variant: json(form.default_variant, null),
        prerequisites: json(form.prerequisites, []),
      };
    } catch (error) {
      setProblem({ message: `A JSON field does not parse: ${error.message}`, errors: [] });
      return;
    }
    if (body.default_variant === null) delete body.default_variant;
    for (const field of ['version', 'updated_by', 'updated_at', 'created_at', 'warnings']) delete body[field];
    try {
      if (flag) {
        await api(`/v1/admin/flags/${encodeURIComponent(flag.key)}`, {
          method: 'PUT',
          body,
          headers: { 'if-match': `"${flag.version}"` },
        });
      } else {
        await api('/v1/admin/flags', { method: 'POST', body });
      }
      setProblem(null);
      setSaved('Saved.');
      if (flag) onSaved();
      else go(`/flags/${encodeURIComponent(body.key)}`);
    } catch (error) {
      setProblem(error);
    }
  };
  const errors = (problem && problem.errors) || [];
  const fields = new Set(['key', 'description', 'enabled', 'default_value', 'value_type', 'environments', 'allow_orgs',
    'block_orgs', 'target_users', 'lifecycle', 'rules', 'variants', 'default_variant', 'prerequisites']);
  const elsewhere = errors.filter((e) => !fields.has(fieldOf(e.pointer)));
  const text = (name, label, hint) => html`<${Field} label=${label} name=${name} errors=${errors} hint=${hint}>
    <input name=${name} value=${form[name]} onInput=${set(name)} /></${Field}>`;
  const area = (name, label, hint) => html`<${Field} label=${label} name=${name} errors=${errors} hint=${hint}>
    <textarea name=${name} rows="5" value=${form[name]} onInput=${set(name)}></textarea></${Field}>`;
  return html`<form class="flag-form" onSubmit=${submit} data-ready>
    ${flag ? null : html`<h1>New flag</h1>`}
    ${flag ? null : text('key', 'Key')}
    ${text('description', 'Description')}
    <${Field} label="Kill switch" name="enabled" errors=${errors} hint="Off: every evaluation answers off (killed).">
      <input type="checkbox" name="enabled" checked=${form.enabled} onChange=${set('enabled')} /> on</${Field}>
    <${Field} label="Default value" name="default_value" errors=${errors} hint="Whether it is on when nothing decides.">
      <input type="checkbox" name="default_value" checked=${form.default_value} onChange=${set('default_value')} /> on</${Field}>
    <${Field} label="Value type" name="value_type" errors=${errors}>
      <select name="value_type" value=${form.value_type} onChange=${set('value_type')}>
        ${VALUE_TYPES.map((t) => html`<option value=${t}>${t}</option>`)}</select></${Field}>
    ${text('environments', 'Environments', 'Comma-separated; empty: every environment.')}
    ${text('allow_orgs', 'Allowed organizations', 'Comma-separated.')}
    ${text('block_orgs', 'Blocked organizations', 'Comma-separated.')}
    ${text('target_users', 'Target users', 'Comma-separated user ids.')}
    <${Field} label="Lifecycle" name="lifecycle" errors=${errors}>
      <select name="type" value=${form.type} onChange=${set('type')}>${TYPES.map((t) => html`<option value=${t}>${t}</option>`)}</select>
      <label class="inline"><input type="checkbox" name="permanent" checked=${form.permanent} onChange=${set('permanent')} /> permanent</label>
      <input name="stale_after" placeholder="stale after (RFC 3339)" value=${form.stale_after} onInput=${set('stale_after')} />
    </${Field}>
    ${area('rules', 'Rules (JSON)', 'Ordered; each: constraints, segments, rollout, variants, starts_at, ends_at, disabled.')}
    ${area('variants', 'Variants (JSON)')}
    ${area('default_variant', 'Default variant (JSON)', 'Needed by string, number and object flags: {"name", "payload"}.')}
    ${area('prerequisites', 'Prerequisites (JSON)')}
    ${flag && flag.warnings && flag.warnings.length
      ? html`<div class="warnings"><h3>Import warnings</h3>${flag.warnings.map((w) => html`<p><code>${w.pointer}</code> ${w.message}</p>`)}</div>`
      : null}
    ${problem ? html`<${ProblemBox} error=${problem} />` : null}
    ${elsewhere.map((e) => html`<p class="error" data-pointer=${e.pointer}>${e.pointer}: ${e.message}</p>`)}
    ${saved ? html`<p class="ok" role="status">${saved}</p>` : null}
    <button type="submit">${flag ? `Save (replaces version ${flag.version})` : 'Create'}</button>
  </form>`;
}

function Overrides({ flag, onSaved }) {
  const [form, setForm] = useState({ org: '', action: 'forced_on', variant: '', reason: '', expires_at: '' });
  const [problem, setProblem] = useState(null);
  const set = (name) => (event) => setForm({ ...form, [name]: event.target.value });
  const submit = async (event) => {
    event.preventDefault();
    const action = form.action === 'variant' ? { type: 'variant', variant: form.variant } : { type: form.action };
    const body = { action, reason: form.reason, ...(form.expires_at ? { expires_at: form.expires_at } : {}) };
    try {
      await api(`/v1/admin/flags/${encodeURIComponent(flag.key)}/overrides/${encodeURIComponent(form.org)}`, { method: 'PUT', body });
      setProblem(null);
      onSaved();
    } catch (error) {
      setProblem(error);
    }
  };
  const clear = async (org) => {
    try {
      await api(`/v1/admin/flags/${encodeURIComponent(flag.key)}/overrides/${encodeURIComponent(org)}`, { method: 'DELETE' });
      onSaved();
    } catch (error) {
      setProblem(error);
    }
  };
  const errors = (problem && problem.errors) || [];
  return html`<div data-ready>
    <table>
      <thead><tr><th>organization</th><th>action</th><th>reason</th><th>starts</th><th>expires</th><th>by</th><th></th></tr></thead>
      <tbody>
        ${(flag.overrides || []).map(
          (o) => html`<tr data-override=${o.org_id}>
            <td>${o.org_id}</td><td>${o.action.type}${o.action.variant ? ` ${o.action.variant}` : ''}</td><td>${o.reason}</td>
            <td>${when(o.starts_at)}</td><td>${when(o.expires_at)}</td><td>${o.created_by}</td>
            <td><button type="button" onClick=${() => clear(o.org_id)}>Clear</button></td>
          </tr>`,
        )}
      </tbody>
    </table>
    ${(flag.overrides || []).length === 0 ? html`<p class="muted">No override.</p>` : null}
    <form class="inline-form" onSubmit=${submit}>
      <h3>Set an override</h3>
      <input name="org" placeholder="organization id" value=${form.org} onInput=${set('org')} required />
      <select name="action" value=${form.action} onChange=${set('action')}>
        <option value="forced_on">forced on</option><option value="forced_off">forced off</option><option value="variant">variant</option>
      </select>
      ${form.action === 'variant' ? html`<input name="variant" placeholder="variant name" value=${form.variant} onInput=${set('variant')} />` : null}
      <${Field} label="Reason" name="reason" errors=${errors}><input name="reason" value=${form.reason} onInput=${set('reason')} /></${Field}>
      <${Field} label="Expires at" name="expires_at" errors=${errors}>
        <input name="expires_at" placeholder="RFC 3339" value=${form.expires_at} onInput=${set('expires_at')} /></${Field}>
      <button type="submit">Set</button>
      <${ProblemBox} error=${problem} />
    </form>
  </div>`;
}

function Explain({ flag }) {
  const [form, setForm] = useState({ organization_id: '', user_id: '', environment: '' });
  const [answer, setAnswer] = useState(null);
  const [problem, setProblem] = useState(null);
  const set = (name) => (event) => setForm({ ...form, [name]: event.target.value });
  const submit = async (event) => {
    event.preventDefault();
    const body = Object.fromEntries(Object.entries(form).filter(([, v]) => v !== ''));
    try {
      setAnswer((await api(`/v1/admin/flags/${encodeURIComponent(flag.key)}/explain`, { method: 'POST', body })).data);
      setProblem(null);
    } catch (error) {
      setProblem(error);
    }
  };
  return html`<form class="inline-form" onSubmit=${submit} data-ready>
      <input name="organization_id" placeholder="organization" value=${form.organization_id} onInput=${set('organization_id')} />
      <input name="user_id" placeholder="user" value=${form.user_id} onInput=${set('user_id')} />
      <input name="environment" placeholder="environment" value=${form.environment} onInput=${set('environment')} />
      <button type="submit">Explain</button>
    </form>
    <${ProblemBox} error=${problem} />
    ${answer &&
    html`<div class="explained" data-explained>
      <p>Value <code>${JSON.stringify(answer.evaluation.value)}</code>, variant <code>${answer.evaluation.variant}</code>,
        reason <${Badge} value=${answer.evaluation.reason} /> at ${when(answer.at)}</p>
      <table><thead><tr><th>stage</th><th></th><th>detail</th></tr></thead>
        <tbody>${answer.steps.map(
          (s) => html`<tr class=${s.decided ? 'decided' : ''}><td>${s.stage}</td><td>${s.decided ? 'decided' : 'passed'}</td><td>${s.detail}</td></tr>`,
        )}</tbody></table>
    </div>`}`;
}

function FlagAudit({ flagKey }) {
  const state = usePaged(
    (cursor) =>
      api(`/v1/admin/flags/${encodeURIComponent(flagKey)}/audit${query({ limit: 50, cursor })}`).then((r) => ({
        items: r.data.items,
        next: r.data.next_cursor,
      })),
    [flagKey],
  );
  return html`<${Loading} state=${state}>
    ${state.items &&
    html`<ol class="audit" data-ready>
      ${state.items.map(
        (e) => html`<li data-audit=${e.id}>
          <p><strong>${e.action}</strong> by <code>${e.actor}</code> at ${when(e.at)}</p>
          <${Change} before=${e.before} after=${e.after} />
        </li>`,
      )}
    </ol>
    <${More} paged=${state} noun="entry" />`}
  <//>`;
}

