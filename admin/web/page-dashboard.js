// Dashboard: headline figures, the traffic trend, model distribution, keys needing attention
// and the use per access key; the figures, trend and models can be narrowed to one access key.
// Refreshes itself every 15 s while the tab is visible.
import { get } from './api.js';
import { h, clear, icon, button, fmtNum, fmtCompact, fmtPct, fmtAgo, fmtTime, emptyState, pick, toast } from './dom.js';
import { drawTrend, drawDonut } from './chart.js';
import { ejection, ejectedText } from './page-keys.js';

const REFRESH_MS = 15000;
const RANGES = [['24h', '24 hours'], ['7d', '7 days'], ['30d', '30 days']];

function stat(name, value) {
  return h('span', { class: 'stat-value', dataset: { stat: name } }, value);
}

function card(iconName, title, tone, ...body) {
  return h('section', { class: 'card stat-card' },
    h('header', { class: 'stat-head' }, h('span', { class: 'stat-icon tone-' + tone }, icon(iconName)), h('h2', null, title)),
    ...body);
}

export async function render(view, ctx) {
  let range = localStorage.getItem('synapse-range') || '24h';
  if (!RANGES.some((r) => r[0] === range)) range = '24h';
  let timer = null;
  let last = null;
  let loading = false;
  let again = false; // a refresh was asked for while one was loading
  // The access key whose figures are shown ('' for all), from #/dashboard?access_key=ID.
  let accessKey = /^\d+$/.test(ctx.params.get('access_key') || '') ? ctx.params.get('access_key') : '';

  const updated = h('span', { class: 'live' }, h('i', { class: 'live-dot' }), h('span', { class: 'live-text' }, 'Loading…'));
  const filter = h('select', { class: 'input input-sm access-filter', id: 'dash-access-key', 'aria-label': 'Access key', title: 'Show the figures of one access key',
    onchange: () => setAccessKey(filter.value) }, h('option', { value: '' }, 'All access keys'));
  if (accessKey) filter.append(h('option', { value: accessKey, selected: true }, '#' + accessKey));
  ctx.actions.append(updated, filter, button('', () => refresh(true), { iconName: 'refresh', title: 'Refresh now', kind: 'ghost' }));

  function setAccessKey(id) {
    accessKey = id || '';
    filter.value = accessKey;
    filter.classList.toggle('on', !!accessKey);
    refresh(true);
  }
  filter.classList.toggle('on', !!accessKey);

  const cards = h('div', { class: 'grid cards' });
  const seg = h('div', { class: 'segmented', role: 'tablist', 'aria-label': 'Period' },
    RANGES.map(([v, label]) => h('button', {
      type: 'button', role: 'tab', class: v === range ? 'on' : '', 'aria-selected': String(v === range), dataset: { range: v },
      title: 'Last ' + label,
      onclick: () => {
        range = v;
        try { localStorage.setItem('synapse-range', v); } catch (e) { /* fine */ }
        for (const b of seg.children) { b.classList.toggle('on', b.dataset.range === v); b.setAttribute('aria-selected', String(b.dataset.range === v)); }
        refresh(true);
      },
    }, v)));
  const chartBox = h('div', { class: 'chart-box' });
  const chartSub = h('span', { class: 'chart-sub', id: 'dash-chart-sub' });
  const legend = h('div', { class: 'legend' },
    h('span', null, h('i', { class: 'sw sw-ok' }), 'Success'),
    h('span', null, h('i', { class: 'sw sw-bad' }), 'Failure'),
    h('span', null, h('i', { class: 'sw sw-tok' }), 'Tokens (right axis)'));
  const chartCard = h('section', { class: 'card chart-card' },
    h('header', { class: 'card-head' }, h('div', null, h('h2', null, 'Traffic', chartSub), legend), seg),
    chartBox);
  const models = h('div', { class: 'card-body' });
  const attention = h('div', { class: 'card-body' });
  const bottom = h('div', { class: 'grid two' },
    h('section', { class: 'card' }, h('header', { class: 'card-head' }, h('h2', null, 'Models')), models),
    h('section', { class: 'card' }, h('header', { class: 'card-head' }, h('h2', null, 'Keys needing attention'),
      h('a', { href: '#/keys', class: 'link' }, 'All keys')), attention));
  const accessBody = h('div', { class: 'table-scroll' });
  const accessSub = h('span', { class: 'chart-sub' });
  const accessCard = h('section', { class: 'card table-card', id: 'dash-access-card' },
    h('header', { class: 'card-head' }, h('h2', null, 'Access keys', accessSub), h('a', { href: '#/access', class: 'link' }, 'Manage')),
    h('div', { class: 'card-body' }, accessBody));
  view.append(cards, chartCard, bottom, accessCard);

  /** labelOf names an access key of the stats: its label, or its id when it has none. */
  const labelOf = (a) => a.label || `#${a.id}`;

  /** syncFilter lists every access key of the stats in the filter, keeping the choice. */
  function syncFilter(list) {
    const keys = (list || []).filter((a) => a.id > 0);
    const seen = new Map();
    for (const a of keys) seen.set(labelOf(a), (seen.get(labelOf(a)) || 0) + 1);
    const want = [['', 'All access keys'], ...keys.map((a) => [String(a.id),
      seen.get(labelOf(a)) > 1 || a.label === '(deleted)' ? `${labelOf(a)} #${a.id}` : labelOf(a)])];
    if (accessKey && !want.some(([v]) => v === accessKey)) want.push([accessKey, '#' + accessKey]);
    const have = [...filter.options].map((o) => [o.value, o.textContent]);
    if (JSON.stringify(have) !== JSON.stringify(want)) {
      clear(filter).append(...want.map(([v, l]) => h('option', { value: v }, l)));
    }
    filter.value = accessKey;
  }

  const MAX_ROWS = 25;

  function renderAccessTable(list) {
    accessSub.textContent = 'last ' + RANGES.find((x) => x[0] === range)[1];
    const rows = list || [];
    clear(accessBody);
    if (!rows.length) {
      accessBody.append(emptyState('shield', 'No access keys', 'Requests per access key show up here.'));
      return;
    }
    accessBody.append(h('table', { class: 'table table-compact', id: 'dash-access-table' },
      h('thead', null, h('tr', null, h('th', null, 'Access key'), h('th', { class: 'num' }, 'Requests'), h('th', { class: 'num' }, 'Failures'),
        h('th', { class: 'num' }, 'Tokens'), h('th', null, 'Last use'), h('th', null, 'Limits hit'))),
      h('tbody', null, rows.slice(0, MAX_ROWS).map((a) => {
        const hits = Object.entries(a.limits_hit || {}).filter(([, n]) => n > 0).sort((x, y) => y[1] - x[1]);
        const name = a.id > 0
          ? h('button', { type: 'button', class: ['linklike', a.label === '(deleted)' && 'muted'], title: String(a.id) === accessKey ? 'Show every access key' : 'Show only this access key',
            onclick: () => setAccessKey(String(a.id) === accessKey ? '' : String(a.id)) }, labelOf(a))
          : h('span', { class: 'muted' }, labelOf(a));
        return h('tr', { class: String(a.id) === accessKey ? 'selected' : '', dataset: { id: String(a.id) } },
          h('td', { dataset: { col: 'label' } }, name),
          h('td', { class: 'num', dataset: { col: 'requests' } }, fmtNum(a.requests || 0)),
          h('td', { class: ['num', a.failures && 'text-bad'], dataset: { col: 'failures' } }, fmtNum(a.failures || 0)),
          h('td', { class: 'num', dataset: { col: 'tokens' }, title: fmtNum(a.tokens || 0) + ' tokens' }, fmtCompact(a.tokens || 0)),
          h('td', { class: 'muted', dataset: { col: 'last-used' }, title: a.last_used_at ? fmtTime(a.last_used_at) : '' }, fmtAgo(a.last_used_at)),
          h('td', { class: 'limits-hit', dataset: { col: 'limits-hit' }, title: a.limited ? `${fmtNum(a.limited)} requests refused by a limit` : '' },
            hits.length ? hits.map(([l, n]) => h('span', { class: 'hit-chip' }, `${l} ${fmtNum(n)}`)) : h('span', { class: 'muted' }, '—')));
      }))));
    if (rows.length > MAX_ROWS) accessBody.append(h('p', { class: 'muted small attention-more' }, `${fmtNum(rows.length - MAX_ROWS)} more with fewer requests`));
  }

  function renderCards(st) {
    const r = st.requests || {};
    const tk = st.tokens || {};
    const k = st.keys || {};
    const total = r.total || 0;
    const rate = total ? (r.success || 0) / total : null;
    const keyTotal = (k.active || 0) + (k.cooling || 0) + (k.disabled || 0);
    const rateTone = rate === null ? 'neutral' : rate >= 0.95 ? 'ok' : rate >= 0.8 ? 'warn' : 'bad';
    clear(cards).append(
      card('activity', 'Requests', 'blue', stat('requests-total', fmtNum(total)),
        h('p', { class: 'stat-sub' },
          h('span', { class: 'pill pill-ok' }, stat('requests-success', fmtNum(r.success || 0)), ' ok'),
          h('span', { class: 'pill pill-bad' }, stat('requests-failure', fmtNum(r.failure || 0)), ' failed'))),
      card('gauge', 'Success rate', rateTone, stat('success-rate', fmtPct(rate)),
        h('div', { class: 'meter', role: 'meter', 'aria-valuemin': '0', 'aria-valuemax': '100', 'aria-valuenow': rate === null ? '0' : String(Math.round(rate * 100)) },
          meterFill(rate, rateTone)),
        h('p', { class: 'stat-sub muted' }, total ? `${fmtNum(r.failure || 0)} failed in the last ${RANGES.find((x) => x[0] === range)[1]}` : 'no requests yet')),
      card('coins', 'Tokens', 'violet', stat('tokens-total', fmtNum(tk.total || 0)),
        h('p', { class: 'stat-sub muted' },
          h('span', { title: fmtNum(tk.prompt || 0) + ' prompt tokens' }, fmtCompact(tk.prompt || 0), ' in'), '·',
          h('span', { title: fmtNum(tk.candidates || 0) + ' output tokens' }, fmtCompact(tk.candidates || 0), ' out'))),
      h('section', { class: 'card stat-card keys-card' },
        h('header', { class: 'stat-head' }, h('span', { class: 'stat-icon tone-amber' }, icon('key')), h('h2', null, 'API keys')),
        h('div', { class: 'keys-split' },
          drawDonut([
            { value: k.active || 0, cls: 'seg-ok', label: 'Active' },
            { value: k.cooling || 0, cls: 'seg-warn', label: 'Cooling' },
            { value: k.disabled || 0, cls: 'seg-bad', label: 'Disabled' },
          ], fmtNum(keyTotal), 'keys'),
          h('ul', { class: 'key-legend' },
            h('li', null, h('i', { class: 'sw sw-ok' }), 'Active', stat('keys-active', fmtNum(k.active || 0))),
            h('li', null, h('i', { class: 'sw sw-warn' }), 'Cooling', stat('keys-cooling', fmtNum(k.cooling || 0))),
            h('li', null, h('i', { class: 'sw sw-bad' }), 'Disabled', stat('keys-disabled', fmtNum(k.disabled || 0)))))));
  }

  function meterFill(rate, tone) {
    const f = h('span', { class: 'meter-fill tone-' + tone });
    f.style.width = ((rate || 0) * 100).toFixed(1) + '%';
    return f;
  }

  function renderModels(list) {
    clear(models);
    if (!list || !list.length) {
      models.append(emptyState('list', 'No model traffic yet', 'Requests through the gateway show up here by model.'));
      return;
    }
    const max = Math.max(...list.map((m) => m.requests || 0), 1);
    const total = list.reduce((a, m) => a + (m.requests || 0), 0) || 1;
    const rows = list.slice().sort((a, b) => (b.requests || 0) - (a.requests || 0)).slice(0, 10).map((m) => {
      const bar = h('span', { class: 'bar-fill' });
      bar.style.width = (((m.requests || 0) / max) * 100).toFixed(1) + '%';
      const fails = m.failures || 0;
      return h('li', { class: 'model-row' },
        h('div', { class: 'model-line' },
          h('span', { class: 'model-name mono', title: m.model || 'Requests that name no model: model lists, files, batches' }, m.model || '(no model)'),
          h('span', { class: 'model-figs' },
            h('b', null, fmtNum(m.requests || 0)), ' req',
            fails ? h('span', { class: 'text-bad' }, ' · ', fmtNum(fails), ' failed') : null,
            h('span', { class: 'muted' }, ' · ', fmtCompact(m.tokens || 0), ' tok'),
            h('span', { class: 'muted share' }, fmtPct((m.requests || 0) / total)))),
        h('div', { class: 'bar' }, bar));
    });
    models.append(h('ul', { class: 'model-list' }, rows));
  }

  async function renderAttention() {
    let list = [];
    let more = 0;
    try {
      const [dis, cool] = await Promise.all([
        get('keys', { status: 'disabled', page: 1, page_size: 6 }),
        get('keys', { status: 'cooling', page: 1, page_size: 6 }),
      ]);
      list = [...(pick(dis, 'keys', 'items') || []), ...(pick(cool, 'keys', 'items') || [])];
      more = (pick(dis, 'total') || 0) + (pick(cool, 'total') || 0);
    } catch (e) {
      if (e.status === 401) throw e;
      clear(attention).append(h('p', { class: 'muted' }, 'Key list unavailable: ', e.message));
      return;
    }
    clear(attention);
    if (!list.length) {
      attention.append(emptyState('check', 'All keys are healthy', 'Disabled or cooling keys show up here.'));
      return;
    }
    attention.append(h('ul', { class: 'attention-list' }, list.slice(0, 8).map((k) => {
      const cds = k.cooldowns || [];
      const ej = ejection(k);
      const why = k.status === 'disabled'
        ? (k.disabled_reason || k.last_error || 'disabled')
        : ej ? ejectedText(ej) + (k.last_error ? ': ' + k.last_error : '')
          : cds.length ? `cooling on ${cds.map((c) => c.model).join(', ')}, ends ${fmtAgo(cds[0].until)}` : (k.last_error || 'cooling down');
      return h('li', null,
        h('span', { class: 'badge badge-' + (ej ? 'ejected' : k.status) }, ej ? 'ejected' : k.status),
        h('a', { class: 'mono', href: '#/keys?id=' + encodeURIComponent(k.id) }, k.masked || '#' + k.id),
        h('span', { class: 'attention-why muted', title: why }, why));
    })));
    const shown = Math.min(list.length, 8);
    if (more > shown) {
      attention.append(h('p', { class: 'attention-more' }, h('a', { href: '#/keys?status=disabled', class: 'link' }, `${fmtNum(more - shown)} more`)));
    }
  }

  async function refresh(manual) {
    if (loading) { again = true; return; }
    loading = true;
    updated.classList.add('busy');
    try {
      const st = await get('stats', { range, access_key_id: accessKey || undefined });
      if (!ctx.isCurrent()) return;
      last = st;
      syncFilter(st.access_keys);
      renderCards(st);
      drawTrend(chartBox, st.trend || [], range);
      const only = accessKey ? (st.access_keys || []).find((a) => String(a.id) === accessKey) : null;
      chartSub.textContent = [{ '1h': 'hourly', '6h': 'every 6 hours', '1d': 'daily' }[st.bucket], st.timezone,
        accessKey ? 'only ' + (only ? labelOf(only) : '#' + accessKey) : ''].filter(Boolean).join(' · ');
      renderModels(st.models);
      renderAccessTable(st.access_keys);
      await renderAttention();
      updated.querySelector('.live-text').textContent = 'Updated ' + new Date().toLocaleTimeString();
      updated.classList.remove('stale');
    } catch (e) {
      if (e.status === 401) return;
      updated.classList.add('stale');
      updated.querySelector('.live-text').textContent = 'Refresh failed';
      if (manual || !last) toast('Dashboard: ' + e.message, 'error');
    } finally {
      loading = false;
      updated.classList.remove('busy');
      if (again && ctx.isCurrent()) { again = false; refresh(manual); }
    }
  }

  function schedule() {
    clearInterval(timer);
    timer = setInterval(() => { if (document.visibilityState === 'visible') refresh(false); }, REFRESH_MS);
  }
  const onVis = () => { if (document.visibilityState === 'visible') refresh(false); };
  document.addEventListener('visibilitychange', onVis);
  let lastWidth = 0;
  const ro = new ResizeObserver(() => {
    const w = chartBox.clientWidth;
    if (last && Math.abs(w - lastWidth) > 4) { lastWidth = w; drawTrend(chartBox, last.trend || [], range); }
  });
  ro.observe(chartBox);

  await refresh(false);
  schedule();
  return () => {
    clearInterval(timer);
    document.removeEventListener('visibilitychange', onVis);
    ro.disconnect();
  };
}
