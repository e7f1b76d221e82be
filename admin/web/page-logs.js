// Logs: requests and upstream errors, filtered and paged on the server. Paths, model names and
// error bodies come from clients and upstreams: they are only ever inserted as text.
import { get } from './api.js';
import { h, clear, icon, button, openModal, fmtNum, fmtTime, fmtMs, emptyState, pick, debounce } from './dom.js';

const PAGE_SIZES = [25, 50, 100];

function statusClass(code) {
  const n = Number(code);
  if (!n) return 'status-none';
  if (n < 300) return 'status-ok';
  if (n < 500 && n !== 429) return 'status-warn';
  return 'status-bad';
}

// Field names of a log row that read poorly when only capitalised.
const LABELS = {
  key_id: 'Key ID',
  access_key_id: 'Access key ID',
  ttfb_ms: 'Time to first byte (ms)',
  latency_ms: 'Latency (ms)',
  candidates_tokens: 'Answer tokens',
  thoughts_tokens: 'Thinking tokens',
};

function when(it) { return pick(it, 'time', 't', 'at', 'created_at', 'timestamp'); }
function errText(it) { return pick(it, 'error', 'message', 'error_message'); }
function latency(it) {
  const ms = pick(it, 'latency_ms', 'duration_ms');
  if (ms !== undefined) return ms;
  const l = pick(it, 'latency');
  return typeof l === 'number' ? l : undefined;
}
function tokens(it) { return pick(it, 'total_tokens', 'tokens'); }

export async function render(view, ctx) {
  const p = ctx.params;
  const state = {
    kind: p.get('kind') === 'error' ? 'error' : 'request',
    page: 1,
    pageSize: Number(localStorage.getItem('synapse-logs-page-size')) || 50,
    model: p.get('model') || '',
    status: p.get('status') || '',
    key_id: p.get('key_id') || '',
    access_key_id: p.get('access_key_id') || '',
  };
  let alive = true;
  let seq = 0;
  // Log rows carry ids; show the masked key and the access key's label instead.
  const keyNames = new Map();
  const clientNames = new Map();
  const names = Promise.all([
    get('keys', { page_size: 500 }).then((d) => { for (const k of (d && d.keys) || []) keyNames.set(k.id, k.masked); }),
    get('access-keys').then((d) => { for (const k of (d && d.access_keys) || []) clientNames.set(k.id, k.label || '#' + k.id); }),
  ]).catch(() => {});
  const keyCell = (it) => it.key_id ? (keyNames.get(it.key_id) || '#' + it.key_id) : '—';
  const clientCell = (it) => it.access_key_id ? (clientNames.get(it.access_key_id) || '#' + it.access_key_id) : '—';

  const tabs = h('div', { class: 'tabs', role: 'tablist' },
    [['request', 'Requests', 'activity'], ['error', 'Errors', 'alert']].map(([k, label, ic]) =>
      h('button', { type: 'button', role: 'tab', class: 'tab' + (state.kind === k ? ' on' : ''), dataset: { kind: k }, 'aria-selected': String(state.kind === k), onclick: () => {
        state.kind = k; state.page = 1;
        for (const b of tabs.children) { b.classList.toggle('on', b.dataset.kind === k); b.setAttribute('aria-selected', String(b.dataset.kind === k)); }
        load();
      } }, icon(ic), h('span', null, label))));

  const field = (name, labelText, attrs) => {
    const inp = h('input', Object.assign({ class: 'input input-sm', name, id: 'logs-' + name.replace('_', '-'), value: state[name], 'aria-label': labelText, placeholder: labelText }, attrs || {}));
    inp.addEventListener('input', debounce(() => { state[name] = inp.value.trim(); state.page = 1; load(); }, 350));
    inputs.push(inp);
    return inp;
  };
  const inputs = [];
  // Keys and clients are chosen by the names shown in the table (masked key, label), not by
  // ids an operator would have to look up; the options are filled once the names are known.
  const choice = (name, labelText, allText) => {
    const sel = h('select', { class: 'input input-sm w-choice', name, id: 'logs-' + name.replace('_', '-'), 'aria-label': labelText, title: labelText },
      h('option', { value: '' }, allText));
    sel.addEventListener('change', () => { state[name] = sel.value; state.page = 1; load(); });
    inputs.push(sel);
    return sel;
  };
  const fillChoice = (sel, names) => {
    const want = state[sel.name];
    for (const [id, label] of names) sel.append(h('option', { value: String(id) }, label));
    if (want && !names.has(Number(want))) sel.append(h('option', { value: want }, '#' + want));
    sel.value = want;
  };
  const clearBtn = button('Clear', () => {
    for (const inp of inputs) { inp.value = ''; state[inp.name] = ''; }
    state.page = 1;
    load();
  }, { kind: 'ghost', iconName: 'x', attrs: { id: 'logs-clear' } });
  const keySel = choice('key_id', 'Key', 'All keys');
  const clientSel = choice('access_key_id', 'Client (access key)', 'All clients');
  const filters = h('div', { class: 'filters' },
    field('model', 'Model', { class: 'input input-sm w-model' }),
    field('status', 'Status', { inputmode: 'numeric', class: 'input input-sm w-num' }),
    keySel,
    clientSel,
    clearBtn,
    button('', () => load(), { iconName: 'refresh', title: 'Reload', kind: 'icon' }));
  const toolbar = h('div', { class: 'toolbar' }, tabs, filters);
  const box = h('div', { class: 'card table-card' });
  const pager = h('div', { class: 'pager' });
  view.append(toolbar, box, pager);

  async function load() {
    const my = ++seq;
    box.classList.add('loading');
    let data;
    try {
      data = await get('logs', {
        kind: state.kind, page: state.page, page_size: state.pageSize,
        model: state.model, status: state.status, key_id: state.key_id, access_key_id: state.access_key_id,
      });
    } catch (e) {
      if (my !== seq || e.status === 401) return;
      box.classList.remove('loading');
      clear(box).append(emptyState('alert', 'Could not load the logs', e.message));
      clear(pager);
      return;
    }
    if (!alive || my !== seq) return;
    box.classList.remove('loading');
    if (data && !(data.items || []).length && state.page > 1 && data.total) {
      state.page = Math.ceil(data.total / state.pageSize);
      return load();
    }
    draw(data || {});
  }

  function draw(data) {
    clearBtn.hidden = !(state.model || state.status || state.key_id || state.access_key_id);
    const items = pick(data, 'items') || [];
    const total = pick(data, 'total') || 0;
    clear(box);
    if (!items.length) {
      const filtered = state.model || state.status || state.key_id || state.access_key_id;
      box.append(state.kind === 'error'
        ? emptyState(filtered ? 'search' : 'check', filtered ? 'No errors match' : 'No upstream errors', filtered ? 'Try other filters.' : 'Failed upstream attempts appear here.')
        : emptyState(filtered ? 'search' : 'inbox', filtered ? 'No requests match' : 'No requests yet', filtered ? 'Try other filters.' : 'Requests through the gateway appear here.'));
    } else {
      box.append(h('div', { class: 'table-scroll' }, state.kind === 'error' ? errorTable(items) : requestTable(items)));
    }
    const pages = Math.max(1, Math.ceil(total / state.pageSize));
    const size = h('select', { class: 'input input-sm', 'aria-label': 'Rows per page' },
      PAGE_SIZES.map((n) => h('option', { value: String(n), selected: n === state.pageSize }, n + ' / page')));
    size.addEventListener('change', () => {
      state.pageSize = Number(size.value); state.page = 1;
      try { localStorage.setItem('synapse-logs-page-size', size.value); } catch (e) { /* fine */ }
      load();
    });
    clear(pager).append(
      h('span', { class: 'muted', id: 'logs-total' }, `${fmtNum(total)} ${state.kind === 'error' ? 'errors' : 'requests'}`),
      h('div', { class: 'pager-ctl' }, size,
        button('', () => { state.page--; load(); }, { iconName: 'chevronLeft', title: 'Newer', kind: 'icon', disabled: state.page <= 1, attrs: { id: 'logs-prev' } }),
        h('span', { class: 'pager-page', id: 'logs-page' }, `Page ${state.page} of ${pages}`),
        button('', () => { state.page++; load(); }, { iconName: 'chevronRight', title: 'Older', kind: 'icon', disabled: state.page >= pages, attrs: { id: 'logs-next' } })));
  }

  function requestTable(items) {
    return h('table', { class: 'table table-logs', id: 'logs-table' },
      h('thead', null, h('tr', null, h('th', null, 'Time'), h('th', null, 'Status'), h('th', null, 'Model'),
        h('th', { class: 'hide-sm' }, 'Key'), h('th', { class: 'hide-md' }, 'Client'), h('th', { class: 'num hide-lg' }, 'Attempts'),
        h('th', { class: 'num' }, 'Latency'), h('th', { class: 'num hide-sm' }, 'Tokens'), h('th', { class: 'hide-md' }, 'Error'))),
      h('tbody', null, items.map((it) => {
        const err = errText(it);
        return h('tr', { class: 'clickable', onclick: () => details(it), dataset: { id: String(pick(it, 'id') ?? '') } },
          h('td', { class: 'nowrap muted' }, fmtTime(when(it))),
          h('td', null, h('span', { class: 'status ' + statusClass(it.status) }, String(it.status ?? '—'))),
          h('td', { class: 'mono log-model', title: it.path ? `${it.method || ''} ${it.path}` : '' }, h('span', { class: 'cell-clip' }, it.model || '—'), it.stream ? h('span', { class: 'tag' }, 'stream') : null),
          h('td', { class: 'hide-sm mono muted nowrap', title: it.key_id ? 'Key ID ' + it.key_id : '' }, keyCell(it)),
          h('td', { class: 'hide-md muted nowrap log-client', title: it.access_key_id ? 'Access key ID ' + it.access_key_id : '' }, clientCell(it)),
          h('td', { class: 'num hide-lg' }, fmtNum(pick(it, 'attempts') ?? 0)),
          h('td', { class: 'num nowrap' }, fmtMs(latency(it))),
          h('td', { class: 'num hide-sm' }, tokens(it) ? fmtNum(tokens(it)) : h('span', { class: 'muted' }, '—')),
          h('td', { class: 'hide-md log-error' }, err ? h('span', { class: 'cell-clip error-text', title: err }, err) : ''));
      })));
  }

  function errorTable(items) {
    return h('table', { class: 'table table-logs', id: 'logs-table' },
      h('thead', null, h('tr', null, h('th', null, 'Time'), h('th', null, 'Status'), h('th', null, 'Model'),
        h('th', { class: 'hide-sm' }, 'Key'), h('th', null, 'Message'))),
      h('tbody', null, items.map((it) => h('tr', { class: 'clickable', onclick: () => details(it), dataset: { id: String(pick(it, 'id') ?? '') } },
        h('td', { class: 'nowrap muted' }, fmtTime(when(it))),
        h('td', null, h('span', { class: 'status ' + statusClass(it.status) }, String(it.status ?? '—'))),
        h('td', { class: 'mono log-model', title: it.path || '' }, h('span', { class: 'cell-clip' }, it.model || '—')),
        h('td', { class: 'hide-sm mono muted nowrap', title: it.key_id ? 'Key ID ' + it.key_id : '' }, keyCell(it)),
        h('td', { class: 'log-error' }, h('span', { class: 'cell-clip error-text wide', title: errText(it) || '' }, errText(it) || ''))))));
  }

  function details(it) {
    const rows = [];
    for (const [k, v] of Object.entries(it)) {
      if (v === null || v === undefined || v === '' || typeof v === 'object') continue;
      if (['error', 'message', 'error_message'].includes(k)) continue;
      let shown = String(v);
      if (['time', 't', 'at', 'created_at', 'timestamp'].includes(k)) shown = fmtTime(v) + '  (' + String(v) + ')';
      rows.push(h('dt', null, LABELS[k] || (k.charAt(0).toUpperCase() + k.slice(1)).replace(/_/g, ' ').replace(/ ms$/, ' (ms)')), h('dd', { class: 'mono' }, shown));
    }
    if (it.key_id) rows.push(h('dt', null, 'Key'), h('dd', { class: 'mono' }, keyCell(it)));
    if (it.access_key_id) rows.push(h('dt', null, 'Client'), h('dd', null, clientCell(it)));
    const err = errText(it);
    openModal({
      title: state.kind === 'error' ? 'Upstream error' : 'Request',
      wide: true,
      content: h('div', { class: 'stack' }, h('dl', { class: 'details' }, rows),
        err ? [h('h3', { class: 'section-title' }, state.kind === 'error' ? 'Message' : 'Error'), h('pre', { class: 'error-pre', id: 'log-error-text' }, err)] : null),
      actions: [{ label: 'Close', kind: 'primary', primary: true }],
    });
  }

  await names;
  fillChoice(keySel, keyNames);
  fillChoice(clientSel, clientNames);
  await load();
  return () => { alive = false; };
}
