// Access keys: the keys clients use to call the gateway. Create one (the full key is shown
// once) with an optional policy (models, request and token limits, a budget, an expiry),
// edit its label and policy, enable/disable, delete; changes take effect at once. Each row
// shows the key's limits and its use of each now, as bars; the list refreshes itself every
// 15 s while the tab is visible.
import { get, post, del, api } from './api.js';
import { h, clear, icon, button, toast, openModal, confirmDialog, fmtAgo, fmtTime, fmtNum, fmtCompact, emptyState, pick, copyText } from './dom.js';

const REFRESH_MS = 15000;

const PERIODS = [['daily', 'per day'], ['weekly', 'per week'], ['monthly', 'per month']];

/** LIMITS are the limits of a policy in the order rows show them, with their unit. */
const LIMITS = [
  { name: 'rpm', unit: 'rpm', what: 'Requests in the last minute' },
  { name: 'tpm', unit: 'tpm', what: 'Tokens in the last minute' },
  { name: 'rpd', unit: 'rpd', what: 'Requests today' },
  { name: 'concurrency', unit: 'in flight', what: 'Requests in flight' },
  { name: 'token_budget', unit: 'tokens', what: 'Tokens of the budget' },
];

const BUDGET_UNIT = { daily: 'tokens today', weekly: 'tokens this week', monthly: 'tokens this month' };

/** POLICY_FIELDS are the API's policy fields, in the order the editor shows them. */
const POLICY_FIELDS = ['models', 'rpm', 'rpd', 'tpm', 'token_budget', 'concurrency', 'expires_at', 'shared'];

function enabledOf(k) {
  const e = pick(k, 'enabled');
  if (typeof e === 'boolean') return e;
  const st = pick(k, 'status');
  return st ? st !== 'disabled' : true;
}

/** countOf reads what a limit field holds for the API: a number, a count such as "200k" as text, or null. */
function countOf(text) {
  const t = text.trim();
  if (t === '') return null;
  return /^\d+$/.test(t) ? Number(t) : t;
}

/** localInput turns an API time into the value of a datetime-local input, in this browser's zone. */
function localInput(t) {
  const d = t ? new Date(t) : null;
  if (!d || Number.isNaN(d.getTime())) return '';
  return new Date(d.getTime() - d.getTimezoneOffset() * 60000).toISOString().slice(0, 16);
}

/**
 * policyEditor builds the fields of an access key's policy (and of its label when withLabel),
 * filled from k (an access key of the API, or null for a new one). Element ids start with
 * prefix: prefix-rpm, prefix-err-rpm… It returns {el, body(), showErrors(fields), clearErrors(), count()}.
 */
function policyEditor(prefix, k, { withLabel = false } = {}) {
  const errs = {};
  const inputs = [];
  const field = (name, label, control, help, cls, forID) => {
    errs[name] = h('p', { class: 'field-error', id: `${prefix}-err-${name}`, hidden: true });
    return h('div', { class: ['field', cls] },
      h('label', { class: 'field-label', for: forID || control.id || `${prefix}-${name}` }, label),
      control, help ? h('p', { class: 'field-help' }, help) : null, errs[name]);
  };
  const text = (name, value, attrs) => {
    const i = h('input', Object.assign({ class: 'input', id: `${prefix}-${name}`, name, value: value === undefined || value === null ? '' : String(value),
      spellcheck: 'false', autocomplete: 'off' }, attrs || {}));
    inputs.push(i);
    return i;
  };
  const v = k || {};
  const label = withLabel ? text('label', v.label || '', { maxlength: '100', placeholder: 'e.g. "mobile app" or a teammate' }) : null;
  const models = text('models', (v.models || []).join(' '), { placeholder: 'every model' });
  const counts = {};
  for (const name of ['rpm', 'rpd', 'tpm', 'concurrency']) counts[name] = text(name, v[name] || '', { placeholder: 'no limit', inputmode: 'numeric' });
  const budget = text('token-budget', v.token_budget ? v.token_budget.limit : '', { placeholder: 'no budget', 'aria-label': 'Token budget' });
  const period = h('select', { class: 'input', id: `${prefix}-token-budget-period`, 'aria-label': 'Budget period' },
    PERIODS.map(([p, l]) => h('option', { value: p, selected: (v.token_budget ? v.token_budget.period : 'daily') === p }, l)));
  const expires = text('expires-at', localInput(v.expires_at), { type: 'datetime-local' });
  const shared = h('input', { type: 'checkbox', id: `${prefix}-shared`, checked: !!v.shared });
  inputs.push(period, shared);

  const el = h('div', { class: 'policy-grid' },
    withLabel ? field('label', 'Label', label, null, 'span-all') : null,
    field('models', 'Models', models, 'Globs such as gemini-2.5-flash* gemini-2.0-*, separated by spaces or commas. Empty: every model.', 'span-all'),
    field('rpm', 'Requests per minute', counts.rpm),
    field('rpd', 'Requests per day', counts.rpd),
    field('tpm', 'Tokens per minute', counts.tpm, 'Counts such as 200k are fine.'),
    field('concurrency', 'In flight at once', counts.concurrency, 'Streams count until they end.'),
    field('token_budget', 'Token budget', h('div', { class: 'budget-row' }, budget, period),
      'A hard stop once used up, e.g. 10M per day.', 'span-2', budget.id),
    field('expires_at', 'Expires at', expires, "In this browser's time zone. Empty: never."),
    field('shared', 'Shared resources', h('label', { class: 'check-row', for: `${prefix}-shared` }, shared,
      h('span', null, 'May use files, caches and batches not made through the gateway')), null, 'span-2'));

  function clearErrors() {
    for (const e of Object.values(errs)) { e.hidden = true; e.textContent = ''; }
    for (const i of inputs) i.classList.remove('invalid');
  }
  for (const i of inputs) i.addEventListener('input', () => { i.classList.remove('invalid'); });

  return {
    el,
    label,
    /** body is the policy (and label) as the API takes it; empty fields are null (no limit). */
    body() {
      const out = {};
      if (label) out.label = label.value.trim();
      const globs = models.value.split(/[\s,]+/).filter(Boolean);
      out.models = globs.length ? globs : null;
      for (const [name, i] of Object.entries(counts)) out[name] = countOf(i.value);
      const limit = countOf(budget.value);
      out.token_budget = limit === null ? null : { limit, period: period.value };
      let exp = null;
      if (expires.value) {
        const d = new Date(expires.value);
        exp = Number.isNaN(d.getTime()) ? expires.value : d.toISOString().replace(/\.\d{3}Z$/, 'Z');
      }
      out.expires_at = exp;
      out.shared = shared.checked;
      return out;
    },
    /** showErrors shows each field's reason next to it and returns those of fields it does not have. */
    showErrors(fields) {
      clearErrors();
      const rest = {};
      for (const [name, why] of Object.entries(fields)) {
        const e = errs[name];
        if (!e) { rest[name] = why; continue; }
        e.textContent = why;
        e.hidden = false;
        const ctl = { label, models, rpm: counts.rpm, rpd: counts.rpd, tpm: counts.tpm, concurrency: counts.concurrency, token_budget: budget, expires_at: expires }[name];
        if (ctl) ctl.classList.add('invalid');
      }
      return rest;
    },
    clearErrors,
    /** count is how many policy fields are set. */
    count() {
      const b = this.body();
      return POLICY_FIELDS.filter((n) => b[n] !== null && b[n] !== false).length;
    },
  };
}

/** limitRows returns the limits a key's policy sets, with their use now when the API says it. */
function limitRows(k) {
  const usage = k.usage || {};
  const out = [];
  for (const l of LIMITS) {
    const set = l.name === 'token_budget' ? k.token_budget && k.token_budget.limit : k[l.name];
    if (!set && !usage[l.name]) continue;
    const u = usage[l.name] || { used: null, limit: set, resets_at: null };
    const unit = l.name === 'token_budget' ? (BUDGET_UNIT[k.token_budget && k.token_budget.period] || 'tokens') : l.unit;
    out.push({ name: l.name, what: l.what, unit, used: u.used, limit: u.limit, resets: u.resets_at });
  }
  return out;
}

/** limitBar shows one limit: "3 / 60 rpm" and a bar, full (and red) when the limit is reached. */
function limitBar(r) {
  const used = typeof r.used === 'number' ? r.used : null;
  const ratio = used === null || !r.limit ? 0 : Math.min(used / r.limit, 1);
  const hit = used !== null && r.limit > 0 && used >= r.limit;
  const fill = h('span', { class: 'limit-fill' });
  fill.style.width = (ratio * 100).toFixed(1) + '%';
  const title = `${r.what}: ${used === null ? 'unknown' : fmtNum(used)} of ${fmtNum(r.limit)}` +
    (hit ? ' (reached: requests are refused)' : '') + (r.resets ? ` · starts again ${fmtTime(r.resets, { seconds: false })}` : '');
  return h('div', { class: ['limit', hit && 'hit', !hit && ratio >= 0.8 && 'near'], dataset: { limit: r.name }, title },
    h('span', { class: 'limit-text' }, `${used === null ? '—' : fmtCompact(used)} / ${fmtCompact(r.limit)} ${r.unit}`),
    h('span', { class: 'limit-bar', role: 'meter', 'aria-valuemin': '0', 'aria-valuemax': String(r.limit), 'aria-valuenow': String(used || 0), 'aria-label': r.what }, fill));
}

export async function render(view, ctx) {
  let alive = true;
  let timer = null;
  let lastJSON = '';
  let loading = false;
  const label = h('input', { class: 'input', id: 'access-label', placeholder: 'Label, e.g. "mobile app" or a teammate', maxlength: '100', 'aria-label': 'Label' });
  const labelErr = h('p', { class: 'field-error', id: 'access-new-err-label', hidden: true });
  const editor = policyEditor('access-new', null);
  const policyCount = h('span', { class: 'count', id: 'access-policy-count' });
  const panel = h('div', { class: 'policy-panel', id: 'access-policy', hidden: true },
    h('p', { class: 'muted small' }, 'Optional. Empty fields mean no limit; a request over a limit gets 429 and costs no upstream key anything.'),
    editor.el);
  const toggle = h('button', { type: 'button', class: 'btn btn-ghost policy-toggle', id: 'access-policy-toggle', 'aria-expanded': 'false', 'aria-controls': 'access-policy',
    onclick: () => setOpen(panel.hidden) }, icon('lock'), h('span', null, 'Limits & models'), policyCount);
  const setOpen = (open) => {
    panel.hidden = !open;
    toggle.setAttribute('aria-expanded', String(open));
  };
  const syncCount = () => { const n = editor.count(); policyCount.textContent = n ? `${n} set` : ''; };
  panel.addEventListener('input', syncCount);
  panel.addEventListener('change', syncCount);

  const create = h('form', { class: 'card create-card', novalidate: true, onsubmit: (e) => { e.preventDefault(); createKey(); } },
    h('div', { class: 'create-text' },
      h('h2', null, 'New access key'),
      h('p', { class: 'muted' }, 'Clients send it as x-goog-api-key, ?key= or a Bearer token. The full key is shown only once.')),
    h('div', { class: 'create-form' }, label,
      h('button', { type: 'submit', class: 'btn btn-primary', id: 'access-create' }, icon('plus'), h('span', null, 'Create key'))),
    h('div', { class: 'create-more' }, toggle, labelErr),
    panel);
  const list = h('div', { class: 'card table-card' });
  view.append(create, list);
  ctx.actions.append(button('', () => load(true), { iconName: 'refresh', title: 'Refresh now', kind: 'ghost', attrs: { id: 'access-refresh' } }));

  async function load(force) {
    if (loading && !force) return;
    loading = true;
    let data;
    try {
      data = await get('access-keys');
    } catch (e) {
      if (e.status === 401) return;
      lastJSON = '';
      clear(list).append(emptyState('alert', 'Could not load access keys', e.message));
      return;
    } finally {
      loading = false;
    }
    if (!alive) return;
    const keys = Array.isArray(data) ? data : (pick(data, 'access_keys', 'keys', 'items') || []);
    const json = JSON.stringify(keys);
    if (json === lastJSON && !force) return;
    lastJSON = json;
    draw(keys);
  }

  function policyNotes(k) {
    const notes = [];
    if (k.models && k.models.length) {
      notes.push(h('span', { class: 'policy-note', title: 'Models it may use: ' + k.models.join(' ') }, 'models: ',
        k.models.slice(0, 3).map((m) => h('code', { class: 'model-chip' }, m)), k.models.length > 3 ? ` +${k.models.length - 3}` : null));
    }
    if (k.shared) notes.push(h('span', { class: 'tag', title: 'May use resources not made through the gateway' }, 'shared'));
    return notes.length ? h('div', { class: 'policy-notes' }, notes) : null;
  }

  function statusCell(k) {
    const on = enabledOf(k);
    const badges = [h('span', { class: 'badge badge-' + (on ? 'active' : 'disabled') }, on ? 'enabled' : 'disabled')];
    if (k.expired) badges.push(h('span', { class: 'badge badge-expired', title: 'Expired ' + fmtTime(k.expires_at) + ': the gateway refuses it' }, 'expired'));
    return h('td', { class: 'status-cell' }, h('div', { class: 'badges' }, badges),
      k.expires_at && !k.expired ? h('span', { class: 'muted small expires-note', title: fmtTime(k.expires_at) }, 'expires ', fmtAgo(k.expires_at)) : null);
  }

  function draw(keys) {
    clear(list);
    if (!keys.length) {
      list.append(emptyState('shield', 'No access keys', 'Without an access key no client can use the gateway. Create one above.'));
      return;
    }
    list.append(h('div', { class: 'table-scroll' }, h('table', { class: 'table', id: 'access-table' },
      h('thead', null, h('tr', null, h('th', null, 'Label'), h('th', null, 'ID'), h('th', null, 'Status'), h('th', null, 'Limits & use now'),
        h('th', { class: 'hide-sm' }, 'Created'), h('th', null, 'Last use'), h('th', { class: 'col-actions' }, ''))),
      h('tbody', null, keys.map((k) => {
        const on = enabledOf(k);
        const limits = limitRows(k);
        return h('tr', { class: k.expired ? 'expired' : '', dataset: { id: String(k.id), expired: String(!!k.expired) } },
          h('td', { class: 'label-cell' }, k.label ? h('span', { class: 'strong access-label' }, k.label) : h('span', { class: 'muted access-label' }, 'unlabelled'), policyNotes(k)),
          h('td', { class: 'mono muted' }, String(k.id)),
          statusCell(k),
          h('td', { class: 'limits-cell', dataset: { col: 'limits' } },
            limits.length ? h('div', { class: 'limits' }, limits.map(limitBar)) : h('span', { class: 'muted' }, 'no limits')),
          h('td', { class: 'hide-sm muted', title: fmtTime(k.created_at) }, fmtAgo(k.created_at)),
          h('td', { class: 'muted', title: k.last_used_at ? fmtTime(k.last_used_at) : '' }, fmtAgo(k.last_used_at)),
          h('td', { class: 'col-actions' }, h('div', { class: 'row-actions' },
            button('', () => edit(k), { iconName: 'edit', title: 'Edit', kind: 'icon' }),
            on ? button('', () => toggleKey(k, 'disable'), { iconName: 'pause', title: 'Disable', kind: 'icon' })
              : button('', () => toggleKey(k, 'enable'), { iconName: 'play', title: 'Enable', kind: 'icon' }),
            button('', () => remove(k), { iconName: 'trash', title: 'Delete', kind: 'icon danger' }))));
      })))));
  }

  /** showFieldErrors shows the API's field violations in editor e (and the label's under lbl); the rest as a toast. */
  function showFieldErrors(err, e, lbl) {
    const fields = err.fields();
    if (!Object.keys(fields).length) return false;
    let rest = e.showErrors(fields);
    if (lbl && rest.label) {
      lbl.textContent = rest.label;
      lbl.hidden = false;
      label.classList.add('invalid');
      const { label: _, ...others } = rest;
      rest = others;
    }
    const names = Object.keys(rest);
    if (names.length) toast(names.map((n) => `${n}: ${rest[n]}`).join('; '), 'error');
    return true;
  }

  async function createKey() {
    const btn = document.getElementById('access-create');
    btn.disabled = true;
    editor.clearErrors();
    labelErr.hidden = true;
    label.classList.remove('invalid');
    try {
      const body = Object.assign({ label: label.value.trim() }, editor.body());
      const r = await post('access-keys', body);
      label.value = '';
      const fresh = policyEditor('access-new', null);
      editor.el.replaceWith(fresh.el);
      Object.assign(editor, fresh);
      syncCount();
      setOpen(false);
      const secret = pick(r, 'key', 'secret', 'access_key');
      load(true);
      if (secret) await showOnce(String(secret), r.label);
      else toast('Access key created.', 'ok');
    } catch (e) {
      if (e.status === 401) return;
      if (e.status === 400 && showFieldErrors(e, editor, labelErr)) {
        if (Object.keys(e.fields()).some((n) => n !== 'label')) setOpen(true);
        return;
      }
      toast(e.message, 'error');
    } finally {
      btn.disabled = false;
    }
  }

  async function edit(k) {
    const ed = policyEditor('access-edit', k, { withLabel: true });
    const formErr = h('p', { class: 'form-error', id: 'access-edit-error', hidden: true });
    await openModal({
      title: k.label ? `Edit "${k.label}"` : `Edit access key #${k.id}`,
      wide: true,
      content: h('div', { class: 'stack' }, ed.el,
        h('p', { class: 'muted small' }, 'Changes apply at once. Empty fields mean no limit.'), formErr),
      actions: [
        { label: 'Cancel', value: false },
        { label: 'Save', kind: 'primary', primary: true, value: true, attrs: { id: 'access-edit-save' }, onClick: async () => {
          formErr.hidden = true;
          try {
            await api(`access-keys/${encodeURIComponent(k.id)}`, { method: 'PATCH', body: ed.body() });
          } catch (e) {
            if (e.status === 401) return true;
            if (e.status === 400) {
              const rest = ed.showErrors(e.fields());
              const names = Object.keys(rest);
              if (names.length || !Object.keys(e.fields()).length) {
                formErr.textContent = names.length ? names.map((n) => `${n}: ${rest[n]}`).join('; ') : e.message;
                formErr.hidden = false;
              }
              return false;
            }
            formErr.textContent = e.message;
            formErr.hidden = false;
            return false;
          }
          toast(`Saved ${k.label || 'the access key'}.`, 'ok');
          load(true);
          return true;
        } },
      ],
    });
  }

  async function showOnce(secret, lbl) {
    const out = h('input', { class: 'input mono', readonly: true, value: secret, id: 'access-secret', 'aria-label': 'New access key' });
    const copied = h('span', { class: 'copied', hidden: true }, icon('check'), 'Copied');
    const copyBtn = button('Copy', async () => {
      if (await copyText(secret, out)) { copied.hidden = false; setTimeout(() => { copied.hidden = true; }, 2000); } else toast('Copy failed: select the key and copy it by hand.', 'error');
    }, { iconName: 'copy', kind: 'primary', attrs: { id: 'access-copy' } });
    await openModal({
      title: 'Your new access key',
      content: h('div', { class: 'stack' },
        h('div', { class: 'callout warn' }, icon('alert'), h('span', null, 'Copy it now. It is stored only as a hash and cannot be shown again.')),
        lbl ? h('p', null, 'Label: ', h('b', null, lbl)) : null,
        h('div', { class: 'copy-row' }, out, copyBtn), copied),
      actions: [{ label: 'Done', kind: 'primary', primary: true }],
      onOpen: () => out.select(),
    });
  }

  async function toggleKey(k, action) {
    try {
      await post(`access-keys/${encodeURIComponent(k.id)}/${action}`, {});
      toast(`${action === 'enable' ? 'Enabled' : 'Disabled'} ${k.label || 'the access key'}.`, 'ok');
    } catch (e) {
      if (e.status !== 401) toast(e.message, 'error');
    }
    load(true);
  }

  async function remove(k) {
    if (!await confirmDialog('Delete access key', `Delete ${k.label ? '"' + k.label + '"' : 'this access key'}? Clients using it are refused at once.`, {
      confirm: 'Delete', danger: true,
      // The gateway labels the keys it takes from the Caddyfile's access_keys "Caddyfile".
      warning: k.label === 'Caddyfile' ? 'This key comes from access_keys in the Caddyfile. It stays deleted even while the Caddyfile lists it: remove it there too.' : '',
    })) return;
    try {
      await del(`access-keys/${encodeURIComponent(k.id)}`);
      toast('Access key deleted.', 'ok');
    } catch (e) {
      if (e.status !== 401) toast(e.message, 'error');
    }
    load(true);
  }

  await load(true);
  timer = setInterval(() => { if (document.visibilityState === 'visible') load(false); }, REFRESH_MS);
  const onVis = () => { if (document.visibilityState === 'visible') load(false); };
  document.addEventListener('visibilitychange', onVis);
  return () => {
    alive = false;
    clearInterval(timer);
    document.removeEventListener('visibilitychange', onVis);
  };
}
