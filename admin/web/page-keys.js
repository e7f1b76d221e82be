// Upstream (Google) keys: list with search, status and project filters and paging; bulk
// actions; project labels per key and for a selection; import by pasting anything ("AIza…
// project" lines label keys); export behind the admin key; per-key details; validate-all with
// progress.
import { api, get, post, del } from './api.js';
import { h, clear, icon, button, toast, openModal, confirmDialog, fmtNum, fmtAgo, fmtTime, fmtPct, emptyState, pick, debounce, wall } from './dom.js';

const STATUSES = [['', 'All'], ['active', 'Active'], ['cooling', 'Cooling'], ['disabled', 'Disabled']];
const PAGE_SIZES = [25, 50, 100, 200];

/** statusBadge shows a key status as a coloured badge. */
export function statusBadge(status) {
  return h('span', { class: 'badge badge-' + (status || 'unknown') }, status || 'unknown');
}

/** EJECT_ALL is the model of an ejection's cooldown: it covers every model. */
const EJECT_ALL = '*';

/**
 * ejection returns the cooldown of a key that is ejected (out of rotation for every model after
 * failing several times in a row while other keys worked), or null.
 */
export function ejection(k) {
  if (!k || k.status !== 'cooling') return null;
  return (k.cooldowns || []).find((c) => c.model === EJECT_ALL) || null;
}

/** hhmm formats an API time as "14:03" on the gateway's clock. */
function hhmm(t) {
  const w = wall(t);
  return w ? `${w.hh}:${w.mm}` : '—';
}

/** ejectedText says until when a key is ejected: "ejected until 14:03". */
export function ejectedText(cd) {
  return 'ejected until ' + hhmm(cd.until);
}

/** EJECTED_WHY explains an ejection when the key has no last error to show. */
const EJECTED_WHY = 'Failed again and again while other keys worked: out of rotation for every model for a while.';

/** ejectedBadge shows an ejected key, its reason (the last error) as the tooltip. */
function ejectedBadge(k, cd) {
  return h('span', { class: 'ejected', title: k.last_error || EJECTED_WHY },
    h('span', { class: 'badge badge-ejected' }, 'ejected'),
    h('span', { class: 'muted small cd-note ejected-until' }, ' until ', hhmm(cd.until)));
}

/** modelName shows a cooldown's model; "*" means every model. */
function modelName(m) {
  return m === EJECT_ALL ? 'every model (ejected)' : m;
}

// Project labels: what the server accepts (store.CheckProject).
const PROJECT_RE = /^[A-Za-z0-9._:-]{0,64}$/;
const PROJECT_RULE = 'Up to 64 letters, digits and . _ : -';

/** projectChip shows a key's project label; onclick, if given, filters by it. */
function projectChip(project, onclick) {
  return onclick
    ? h('button', { type: 'button', class: 'project-chip', title: 'Show the keys of project ' + project, onclick }, project)
    : h('span', { class: 'project-chip' }, project);
}

/** ownedText says how many live resources a key owns, in words. */
function ownedText(n) {
  return n === 1 ? '1 live file/resource' : `${fmtNum(n)} live files/resources`;
}

/** runAll runs fn over items with a small concurrency and counts successes and failures. */
async function runAll(items, fn, limit = 4) {
  let ok = 0;
  const errors = [];
  let i = 0;
  const worker = async () => {
    while (i < items.length) {
      const it = items[i++];
      try { await fn(it); ok++; } catch (e) {
        if (e.status === 401) throw e;
        errors.push(e);
      }
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
  return { ok, errors };
}

const ACTIONS = {
  enabled: 're-enabled',
  valid: 'valid',
  disabled: 'disabled',
  cooling: 'cooling down',
  unchanged: 'unchanged',
};

// What a check found, in words: the API reports the pool's outcome kinds ("key_invalid", ...).
const RESULTS = {
  success: 'valid',
  quota: 'out of quota',
  key_invalid: 'key not valid',
  transient: 'temporary failure',
  client_error: 'request refused',
  canceled: 'cancelled',
};
const resultText = (r) => RESULTS[r] || (r || 'checked').replace(/_/g, ' ');

/** validationText describes the answer of a single-key validation ({"check","key"}). */
function validationText(r) {
  const c = (r && r.check) || r;
  if (!c || typeof c !== 'object') return 'validated';
  const result = resultText(c.result);
  const action = c.action && c.action !== 'valid' && c.action !== 'unchanged' ? ` → ${ACTIONS[c.action] || c.action}` : '';
  const why = c.result !== 'success' && c.reason ? `: ${c.reason}` : '';
  return result + action + why;
}

export async function render(view, ctx) {
  const state = {
    status: ctx.params.get('status') || '',
    // null: every project; '': keys without a label; else one label.
    project: ctx.params.has('project') ? ctx.params.get('project') : null,
    projects: [], // [{project, keys}] over every key
    unlabeled: 0,
    q: '',
    page: 1,
    pageSize: Number(localStorage.getItem('synapse-keys-page-size')) || 50,
    keys: [],
    total: null,
    selected: new Set(),
    openId: ctx.params.get('id'),
  };
  let alive = true;

  // ----- header actions -----
  const validateAllBtn = button('Validate all', () => validateAll(), { iconName: 'shield', kind: 'ghost', attrs: { id: 'keys-validate-all' } });
  ctx.actions.append(
    validateAllBtn,
    button('Export', () => exportKeys(), { iconName: 'download', kind: 'ghost', attrs: { id: 'keys-export' } }),
    button('Add keys', () => importKeys(), { iconName: 'plus', kind: 'primary', attrs: { id: 'keys-add' } }));

  // ----- toolbar -----
  const search = h('input', { type: 'search', class: 'input', placeholder: 'Search keys or errors', 'aria-label': 'Search keys', id: 'keys-search' });
  search.addEventListener('input', debounce(() => { state.q = search.value.trim(); state.page = 1; load(); }, 250));
  const filter = h('div', { class: 'segmented', role: 'tablist', 'aria-label': 'Status' }, STATUSES.map(([v, label]) =>
    h('button', { type: 'button', class: v === state.status ? 'on' : '', dataset: { status: v }, onclick: () => {
      state.status = v; state.page = 1;
      for (const b of filter.children) b.classList.toggle('on', b.dataset.status === v);
      load();
    } }, label, h('span', { class: 'count' }))));
  function drawCounts(counts) {
    if (!counts) return;
    const all = (counts.active || 0) + (counts.cooling || 0) + (counts.disabled || 0);
    for (const b of filter.children) {
      const n = b.dataset.status ? counts[b.dataset.status] || 0 : all;
      b.querySelector('.count').textContent = fmtNum(n);
    }
  }
  const ALL = ' all'; // neither can be a label: labels hold no spaces
  const NONE = ' none';
  const projectSel = h('select', { class: 'input input-sm project-filter', id: 'keys-project', 'aria-label': 'Project' });
  projectSel.addEventListener('change', () => {
    const v = projectSel.value;
    setProject(v === ALL ? null : v === NONE ? '' : v);
  });
  function setProject(p) {
    state.project = p;
    state.page = 1;
    drawProjects();
    load();
  }
  function drawProjects() {
    const opts = [[ALL, 'All projects'], [NONE, `No project (${fmtNum(state.unlabeled)})`]];
    const known = state.projects.map((p) => p.project);
    for (const p of state.projects) opts.push([p.project, `${p.project} (${fmtNum(p.keys)})`]);
    if (state.project && !known.includes(state.project)) opts.push([state.project, `${state.project} (0)`]);
    const cur = state.project === null ? ALL : state.project === '' ? NONE : state.project;
    clear(projectSel).append(...opts.map(([v, l]) => h('option', { value: v, selected: v === cur }, l)));
    projectSel.value = cur;
    projectSel.classList.toggle('on', state.project !== null);
  }
  drawProjects();
  const toolbar = h('div', { class: 'toolbar' }, h('div', { class: 'search' }, icon('search'), search),
    h('div', { class: 'filters' }, projectSel, filter));

  const progress = h('div', { class: 'banner', hidden: true });
  const bulk = h('div', { class: 'bulkbar', hidden: true });
  const tableBox = h('div', { class: 'card table-card' });
  const pager = h('div', { class: 'pager' });
  view.append(toolbar, progress, bulk, tableBox, pager);

  // ----- data -----
  let seq = 0;
  async function load() {
    const my = ++seq;
    let data;
    try {
      // ?project= (empty) asks for the unlabelled keys; the client drops empty query values.
      data = await get(state.project === '' ? 'keys?project=' : 'keys', { status: state.status, page: state.page, page_size: state.pageSize,
        q: state.q || undefined, project: state.project || undefined });
    } catch (e) {
      if (e.status === 401 || my !== seq) return;
      clear(tableBox).append(emptyState('alert', 'Could not load keys', e.message));
      return;
    }
    if (!alive || my !== seq) return; // a newer load is on its way
    state.keys = pick(data, 'keys', 'items') || [];
    state.total = pick(data, 'total');
    if (!state.keys.length && state.page > 1 && state.total) {
      state.page = Math.ceil(state.total / state.pageSize); // the page emptied (deletes): show the last one
      return load();
    }
    drawCounts(data.counts);
    state.projects = Array.isArray(data.projects) ? data.projects : [];
    state.unlabeled = data.unlabeled || 0;
    drawProjects();
    for (const id of [...state.selected]) if (!state.keys.some((k) => String(k.id) === id)) state.selected.delete(id);
    draw();
    if (state.openId) {
      // a link to one key (from the dashboard): it may be on another page
      const id = String(state.openId);
      state.openId = null;
      let k = state.keys.find((x) => String(x.id) === id);
      if (!k) {
        try {
          const one = await get('keys', { q: id, page_size: 50 });
          k = ((one && one.keys) || []).find((x) => String(x.id) === id);
        } catch (e) { /* not found: nothing to open */ }
      }
      if (k && alive) details(k);
    }
  }

  function visible() {
    const q = state.q.toLowerCase();
    if (!q) return state.keys;
    return state.keys.filter((k) => [k.masked, k.project, k.last_error, k.disabled_reason, String(k.id), k.status]
      .some((v) => v && String(v).toLowerCase().includes(q)));
  }

  function draw() {
    const rows = visible();
    clear(tableBox);
    if (!rows.length) {
      if (!state.keys.length && !state.status && !state.q && state.project === null) {
        tableBox.append(emptyState('key', 'No upstream keys yet', 'Add your Google AI Studio keys to start proxying. Paste them in any format.',
          button('Add keys', () => importKeys(), { iconName: 'plus', kind: 'primary' })));
      } else {
        tableBox.append(emptyState('search', 'No keys match', 'Try another search, status or project.'));
      }
      drawBulk();
      drawPager(0);
      return;
    }
    const all = h('input', { type: 'checkbox', 'aria-label': 'Select all on this page' });
    all.checked = rows.every((k) => state.selected.has(String(k.id)));
    all.indeterminate = !all.checked && rows.some((k) => state.selected.has(String(k.id)));
    all.addEventListener('change', () => {
      for (const k of rows) all.checked ? state.selected.add(String(k.id)) : state.selected.delete(String(k.id));
      draw();
    });
    const table = h('table', { class: 'table', id: 'keys-table' },
      h('thead', null, h('tr', null,
        h('th', { class: 'col-check' }, all), h('th', null, 'Key'), h('th', { class: 'col-project hide-sm' }, 'Project'), h('th', null, 'Status'),
        h('th', { class: 'num' }, 'Requests'), h('th', { class: 'num hide-sm' }, 'Failures'),
        h('th', { class: 'num hide-sm', title: 'Live files, cached contents, batches and tuned models this key owns' }, 'Files'),
        h('th', { class: 'hide-lg' }, 'Last used'), h('th', { class: 'hide-md' }, 'Last error'), h('th', { class: 'col-actions' }, ''))),
      h('tbody', null, rows.map(row)));
    tableBox.append(h('div', { class: 'table-scroll' }, table));
    drawBulk();
    drawPager(rows.length);
  }

  function row(k) {
    const id = String(k.id);
    const cb = h('input', { type: 'checkbox', 'aria-label': 'Select key ' + (k.masked || id) });
    cb.checked = state.selected.has(id);
    cb.addEventListener('change', () => { cb.checked ? state.selected.add(id) : state.selected.delete(id); draw(); });
    const reqs = k.requests || 0;
    const fails = k.failures || 0;
    const cds = k.cooldowns || [];
    const ej = ejection(k);
    const statusCell = h('td', null, ej ? ejectedBadge(k, ej) : statusBadge(k.status),
      !ej && k.status === 'cooling' && cds.length ? h('span', { class: 'muted small cd-note' }, ' ', cds.length === 1 ? cds[0].model : cds.length + ' models') : null,
      k.status === 'disabled' && k.disabled_reason ? h('div', { class: 'muted small clip reason-clip', title: k.disabled_reason }, k.disabled_reason) : null);
    const projectCell = h('td', { class: 'col-project hide-sm', dataset: { col: 'project' } },
      h('div', { class: 'project-cell' },
        k.project ? projectChip(k.project, () => setProject(k.project)) : h('span', { class: 'muted' }, '—'),
        button('', () => editProject([k]), { iconName: 'tag', title: k.project ? 'Change the project' : 'Set the project', kind: 'icon', attrs: { class: 'btn btn-icon project-edit' } })));
    const toggle = k.status === 'disabled'
      ? button('', () => act([k], 'enable'), { iconName: 'play', title: 'Enable', kind: 'icon' })
      : button('', () => act([k], 'disable'), { iconName: 'pause', title: 'Disable', kind: 'icon' });
    return h('tr', { dataset: { id, status: k.status || '' }, class: state.selected.has(id) ? 'selected' : '' },
      h('td', { class: 'col-check' }, cb),
      h('td', null, h('button', { type: 'button', class: 'linklike mono key-masked', onclick: () => details(k), title: 'Details' }, k.masked || '#' + id),
        // On a phone the project column is hidden: the label shows under the key.
        k.project ? h('div', { class: 'show-sm project-sub' }, projectChip(k.project, () => setProject(k.project))) : null),
      projectCell,
      statusCell,
      h('td', { class: 'num' }, fmtNum(reqs)),
      h('td', { class: 'num hide-sm' }, fmtNum(fails), reqs ? h('span', { class: 'muted small' }, ' ', fmtPct(fails / reqs)) : null),
      h('td', { class: 'num hide-sm', dataset: { col: 'resources' } }, k.resources
        ? h('span', { class: 'owned', title: `Owns ${ownedText(k.resources)}: only this key can reach them` }, fmtNum(k.resources))
        : h('span', { class: 'muted' }, '—')),
      h('td', { class: 'hide-lg muted nowrap', title: k.last_used_at ? fmtTime(k.last_used_at) : '' }, fmtAgo(k.last_used_at)),
      h('td', { class: 'hide-md key-error-cell' }, k.last_error ? h('span', { class: 'cell-clip error-text', title: k.last_error }, k.last_error) : h('span', { class: 'muted' }, '—')),
      h('td', { class: 'col-actions' }, h('div', { class: 'row-actions' },
        toggle,
        button('', () => act([k], 'validate'), { iconName: 'shield', title: 'Validate', kind: 'icon' }),
        button('', () => remove([k]), { iconName: 'trash', title: 'Delete', kind: 'icon danger' }),
        button('', () => details(k), { iconName: 'more', title: 'Details', kind: 'icon' }))));
  }

  function drawBulk() {
    const sel = state.keys.filter((k) => state.selected.has(String(k.id)));
    bulk.hidden = sel.length === 0;
    clear(bulk);
    if (!sel.length) return;
    bulk.append(
      h('span', { class: 'bulk-count' }, h('b', null, String(sel.length)), sel.length === 1 ? ' key selected' : ' keys selected'),
      h('div', { class: 'bulk-actions' },
        button('Enable', () => act(sel, 'enable'), { iconName: 'play', kind: 'ghost', attrs: { dataset: { bulk: 'enable' } } }),
        button('Disable', () => act(sel, 'disable'), { iconName: 'pause', kind: 'ghost', attrs: { dataset: { bulk: 'disable' } } }),
        button('Validate', () => (sel.length === 1 ? act(sel, 'validate') : startRun(sel.map((k) => k.id))), { iconName: 'shield', kind: 'ghost', attrs: { dataset: { bulk: 'validate' } } }),
        button('Project', () => editProject(sel), { iconName: 'tag', kind: 'ghost', attrs: { dataset: { bulk: 'project' } } }),
        button('Delete', () => remove(sel), { iconName: 'trash', kind: 'danger', attrs: { dataset: { bulk: 'delete' } } }),
        button('', () => { state.selected.clear(); draw(); }, { iconName: 'x', title: 'Clear selection', kind: 'icon' })));
  }

  function drawPager(shown) {
    clear(pager);
    const total = state.total;
    const pages = total !== null && total !== undefined ? Math.max(1, Math.ceil(total / state.pageSize)) : null;
    const size = h('select', { class: 'input input-sm', 'aria-label': 'Keys per page' },
      PAGE_SIZES.map((n) => h('option', { value: String(n), selected: n === state.pageSize }, n + ' / page')));
    size.addEventListener('change', () => {
      state.pageSize = Number(size.value); state.page = 1;
      try { localStorage.setItem('synapse-keys-page-size', size.value); } catch (e) { /* fine */ }
      load();
    });
    const info = total !== null && total !== undefined
      ? (total ? `${fmtNum((state.page - 1) * state.pageSize + 1)}–${fmtNum(Math.min(total, (state.page - 1) * state.pageSize + state.keys.length))} of ${fmtNum(total)} keys` : '0 keys')
      : `${fmtNum(shown)} keys`;
    const hasNext = pages ? state.page < pages : state.keys.length >= state.pageSize;
    pager.append(h('span', { class: 'muted' }, info), h('div', { class: 'pager-ctl' }, size,
      button('', () => { state.page--; load(); }, { iconName: 'chevronLeft', title: 'Previous page', kind: 'icon', disabled: state.page <= 1 }),
      h('span', { class: 'pager-page' }, pages ? `Page ${state.page} of ${pages}` : `Page ${state.page}`),
      button('', () => { state.page++; load(); }, { iconName: 'chevronRight', title: 'Next page', kind: 'icon', disabled: !hasNext })));
  }

  // ----- actions -----
  async function act(list, action) {
    if (!list.length) return;
    const verb = { enable: 'Enabled', disable: 'Disabled', validate: 'Validated' }[action];
    let single = null;
    const outcomes = {};
    try {
      const { ok, errors } = await runAll(list, async (k) => {
        const r = await post(`keys/${encodeURIComponent(k.id)}/${action}`, {});
        if (list.length === 1) single = r;
        const res = r && r.check && r.check.result;
        if (res) outcomes[res] = (outcomes[res] || 0) + 1;
      });
      if (list.length === 1 && !errors.length) {
        const good = action !== 'validate' || !single || !single.check || single.check.result === 'success';
        toast(action === 'validate' ? `${list[0].masked || 'Key'}: ${validationText(single)}` : `${verb} ${list[0].masked || 'the key'}.`, good ? 'ok' : 'error');
      } else if (!errors.length) {
        const parts = Object.entries(outcomes).map(([res, n]) => `${n} ${res === 'success' ? 'valid' : res.replace(/_/g, ' ')}`);
        toast(`${verb} ${ok} keys${parts.length ? ': ' + parts.join(', ') : ''}.`, 'ok');
      } else {
        toast(`${verb} ${ok} of ${list.length} keys; ${errors.length} failed: ${errors[0].message}`, 'error');
      }
    } catch (e) {
      if (e.status !== 401) toast(e.message, 'error');
    }
    await load();
  }

  /** remove deletes keys after asking; a key that owns live resources is deleted (with force)
   *  only once the dialog said so, since the gateway cannot reach them with another key. */
  async function remove(list) {
    const what = list.length === 1 ? (list[0].masked || 'this key') : `${list.length} keys`;
    const owning = list.filter((k) => (k.resources || 0) > 0);
    const owned = owning.reduce((n, k) => n + k.resources, 0);
    let warning = '';
    if (owning.length) {
      const who = list.length === 1 ? 'This key owns'
        : owning.length === 1 ? `${owning[0].masked || 'One of them'} owns`
          : `${owning.length} of them own`;
      warning = `${who} ${ownedText(owned)}${owning.length > 1 ? ' in all' : ''} (uploaded files, cached contents, batches or tuned models); they will no longer be reachable through the gateway.`;
    }
    if (!await confirmDialog(list.length === 1 ? 'Delete key' : 'Delete keys', `Delete ${what} from the pool? This cannot be undone.`,
      { confirm: owning.length ? 'Delete anyway' : 'Delete', danger: true, warning })) return;
    const forced = new Set(owning.map((k) => String(k.id)));
    const deleteOne = (k) => del(`keys/${encodeURIComponent(k.id)}`, forced.has(String(k.id)) ? { query: { force: 'true' } } : undefined);
    try {
      // A key that came to own resources after the list was loaded answers 409: ask again for those.
      const late = [];
      const first = await runAll(list, async (k) => {
        try { await deleteOne(k); } catch (e) {
          if (e.status !== 409) throw e;
          late.push([k, e]);
        }
      });
      let ok = first.ok - late.length;
      const errors = first.errors;
      if (late.length) {
        const names = late.map(([k]) => k.masked || '#' + k.id).join(', ');
        if (await confirmDialog('Delete keys that own resources', `Since the list was loaded, ${late.length === 1 ? 'a key' : late.length + ' keys'} came to own live files/resources: ${names}.`,
          { confirm: 'Delete anyway', danger: true, warning: `Deleted, ${late.length === 1 ? 'its files/resources' : 'their files/resources'} will no longer be reachable through the gateway.` })) {
          for (const [k] of late) forced.add(String(k.id));
          const again = await runAll(late.map(([k]) => k), deleteOne);
          ok += again.ok;
          errors.push(...again.errors);
        } else {
          errors.push(...late.map(([, e]) => e));
        }
      }
      for (const k of list) state.selected.delete(String(k.id));
      if (errors.length) toast(`Deleted ${ok} of ${list.length}; ${errors[0].message}`, 'error');
      else toast(`Deleted ${what}.`, 'ok');
    } catch (e) {
      if (e.status !== 401) toast(e.message, 'error');
    }
    await load();
  }

  /**
   * editProject asks for the project label of one key or a selection and sets it; an empty
   * label (or Remove) clears it. One key goes through PATCH keys/{id}, several through
   * POST keys/project.
   */
  async function editProject(list) {
    if (!list.length) return;
    const labels = [...new Set(list.map((k) => k.project || ''))];
    const same = labels.length === 1 ? labels[0] : '';
    const input = h('input', { class: 'input mono', id: 'project-input', value: same, list: 'project-options', maxlength: '64',
      spellcheck: 'false', autocomplete: 'off', placeholder: 'my-gcp-project' });
    const options = h('datalist', { id: 'project-options' }, state.projects.map((p) => h('option', { value: p.project })));
    const err = h('p', { class: 'field-error', id: 'project-error', hidden: true });
    input.addEventListener('input', () => { err.hidden = true; input.classList.remove('invalid'); });
    const what = list.length === 1 ? (list[0].masked || 'this key') : `${list.length} keys`;
    const save = async (project) => {
      project = project.trim();
      if (!PROJECT_RE.test(project)) {
        err.textContent = PROJECT_RULE + '.';
        err.hidden = false;
        input.classList.add('invalid');
        input.focus();
        return false;
      }
      try {
        if (list.length === 1) await api(`keys/${encodeURIComponent(list[0].id)}`, { method: 'PATCH', body: { project } });
        else await post('keys/project', { ids: list.map((k) => k.id), project });
      } catch (e) {
        if (e.status === 401) return true;
        err.textContent = (e.fields && e.fields().project) || e.message;
        err.hidden = false;
        input.classList.add('invalid');
        return false;
      }
      toast(project ? `${what}: project ${project}.` : `${what}: no project.`, 'ok');
      await load();
      return true;
    };
    await openModal({
      title: list.length === 1 ? 'Project of the key' : `Project of ${list.length} keys`,
      content: h('div', { class: 'stack' },
        h('p', { class: 'muted' }, 'Google counts quota per Cloud project, not per key. When one key of a project runs out, the gateway rests every key with the same label.'),
        labels.length > 1 ? h('p', { class: 'muted small' }, 'The selected keys have different projects now: ', labels.map((l) => l || 'none').join(', '), '.') : null,
        h('label', { class: 'field' }, h('span', { class: 'field-label' }, 'Project'), input, options,
          h('span', { class: 'field-help' }, PROJECT_RULE + '; leave empty for none.')),
        err),
      actions: [
        labels.some((l) => l) ? { label: 'Remove', icon: 'x', attrs: { id: 'project-clear' }, onClick: () => save('') } : null,
        { label: 'Cancel' },
        { label: 'Save', kind: 'primary', primary: true, icon: 'check', attrs: { id: 'project-save' }, onClick: () => save(input.value) },
      ].filter(Boolean),
    });
  }

  async function importKeys() {
    const ta = h('textarea', { class: 'input mono', rows: '9', id: 'import-text', spellcheck: 'false',
      placeholder: 'AIzaSy… my-gcp-project\nAIzaSy…\nPaste a list, a .env file, JSON or a log excerpt: every Gemini key in it is found.' });
    const file = h('input', { type: 'file', accept: '.txt,.env,.json,.csv,text/*', class: 'file-input' });
    file.addEventListener('change', async () => {
      const f = file.files && file.files[0];
      if (f) ta.value = (ta.value ? ta.value + '\n' : '') + await f.text();
    });
    const result = h('div', { class: 'import-result', id: 'import-result', hidden: true });
    const content = h('div', { class: 'stack' },
      h('p', { class: 'muted' }, 'Every Gemini key (AIza… or AQ.…) in the text is found; keys already in the pool and malformed ones are skipped and counted.'),
      h('p', { class: 'muted', id: 'import-projects-help' }, 'To label keys with their Google Cloud project, put one per line: ',
        h('code', null, 'AIza… project-name'), '. A key already in the pool gets the label given with it.'),
      ta,
      h('label', { class: 'file-label' }, icon('upload'), h('span', null, 'or load a file'), file),
      result);
    await openModal({
      title: 'Add upstream keys',
      content,
      wide: true,
      actions: [
        { label: 'Close', value: 'close' },
        { label: 'Add keys', kind: 'primary', primary: true, icon: 'plus', attrs: { id: 'import-submit' }, onClick: async () => {
          const text = ta.value;
          if (!text.trim()) { toast('Paste some text with keys first.', 'error'); return false; }
          try {
            const r = await post('keys', { text });
            clear(result).append(
              h('div', { class: 'result-fig ok' }, h('b', { dataset: { result: 'added' } }, fmtNum(r.added || 0)), h('span', null, 'added')),
              h('div', { class: 'result-fig' }, h('b', { dataset: { result: 'duplicates' } }, fmtNum(r.duplicates || 0)), h('span', null, 'duplicates')),
              h('div', { class: 'result-fig ' + (r.invalid ? 'bad' : '') }, h('b', { dataset: { result: 'invalid' } }, fmtNum(r.invalid || 0)), h('span', null, 'invalid')),
              r.relabeled ? h('div', { class: 'result-fig' }, h('b', { dataset: { result: 'relabeled' } }, fmtNum(r.relabeled)), h('span', null, 'labelled')) : null);
            result.hidden = false;
            ta.value = '';
            if (!r.added && !r.duplicates && !r.invalid) result.append(h('p', { class: 'muted small' }, 'No Gemini key was found in that text.'));
            load();
          } catch (e) {
            if (e.status !== 401) toast(e.message, 'error');
          }
          return false;
        } },
      ],
    });
  }

  async function exportKeys() {
    const pw = h('input', { type: 'password', class: 'input', id: 'export-admin-key', autocomplete: 'current-password', placeholder: 'Admin key', required: true });
    const st = h('select', { class: 'input', id: 'export-status' }, STATUSES.map(([v, l]) => h('option', { value: v }, v ? l + ' keys' : 'All keys')));
    const err = h('p', { class: 'form-error', hidden: true });
    await openModal({
      title: 'Export keys',
      content: h('div', { class: 'stack' },
        h('div', { class: 'callout warn' }, icon('lock'), h('span', null, 'The export holds full upstream keys. Confirm with the admin key; the file downloads as plain text, one key per line.')),
        h('label', { class: 'field' }, h('span', { class: 'field-label' }, 'Admin key'), pw),
        h('label', { class: 'field' }, h('span', { class: 'field-label' }, 'Keys'), st),
        err),
      actions: [
        { label: 'Cancel' },
        { label: 'Download', kind: 'primary', primary: true, icon: 'download', onClick: async () => {
          err.hidden = true;
          if (!pw.value) { err.textContent = 'Enter the admin key.'; err.hidden = false; return false; }
          try {
            const res = await api('keys/export', { method: 'POST', body: { admin_key: pw.value, status: st.value || undefined }, raw: true, auth401: false });
            const text = await res.text();
            const n = text.split('\n').filter((l) => l.trim()).length;
            const blob = new Blob([text], { type: 'text/plain' });
            const a = h('a', { href: URL.createObjectURL(blob), download: `gemini-keys-${st.value || 'all'}-${new Date().toISOString().slice(0, 10)}.txt` });
            document.body.appendChild(a);
            a.click();
            setTimeout(() => { URL.revokeObjectURL(a.href); a.remove(); }, 1000);
            pw.value = '';
            toast(`Exported ${n} key${n === 1 ? '' : 's'}.`, 'ok');
            return true;
          } catch (e) {
            err.textContent = e.status === 401 || e.status === 403 ? 'That admin key is not right.' : e.message;
            err.hidden = false;
            return false;
          }
        } },
      ],
    });
  }

  async function details(k) {
    const cds = k.cooldowns || [];
    const dl = h('dl', { class: 'details' },
      h('dt', null, 'Key'), h('dd', { class: 'mono' }, k.masked || '—'),
      h('dt', null, 'ID'), h('dd', null, String(k.id)),
      h('dt', null, 'Project'), h('dd', { id: 'key-project' }, k.project ? projectChip(k.project) : h('span', { class: 'muted' }, 'none')),
      h('dt', null, 'Status'), h('dd', null, ejection(k) ? ejectedBadge(k, ejection(k)) : statusBadge(k.status)),
      ejection(k) ? [
        h('dt', null, 'Ejected until'), h('dd', { id: 'key-ejected' }, `${fmtTime(ejection(k).until)} · ${fmtAgo(ejection(k).until)}, for every model`),
        h('dt', null, 'Ejected because'), h('dd', { id: 'key-ejected-why' }, k.last_error || EJECTED_WHY)] : null,
      k.disabled_reason ? [h('dt', null, 'Disabled because'), h('dd', null, k.disabled_reason)] : null,
      h('dt', null, 'Consecutive failures'), h('dd', null, fmtNum(k.failure_count || 0)),
      h('dt', null, 'Requests'), h('dd', null, fmtNum(k.requests || 0), ' (', fmtNum(k.failures || 0), ' failed)'),
      h('dt', null, 'Owns'), h('dd', { id: 'key-resources' }, k.resources
        ? `${ownedText(k.resources)} created through the gateway; only this key can reach ${k.resources === 1 ? 'it' : 'them'}`
        : 'no live files or other resources'),
      h('dt', null, 'Last used'), h('dd', null, k.last_used_at ? `${fmtTime(k.last_used_at)} · ${fmtAgo(k.last_used_at)}` : 'never'));
    const cdBox = cds.length
      ? h('table', { class: 'table table-compact' },
        h('thead', null, h('tr', null, h('th', null, 'Model'), h('th', null, 'Cooling until'), h('th', null, ''))),
        h('tbody', null, cds.map((c) => h('tr', null, h('td', { class: c.model === EJECT_ALL ? '' : 'mono' }, modelName(c.model)), h('td', null, fmtTime(c.until)), h('td', { class: 'muted' }, fmtAgo(c.until))))))
      : h('p', { class: 'muted' }, 'No cooldowns running.');
    const content = h('div', { class: 'stack' }, dl,
      h('h3', { class: 'section-title' }, 'Cooldowns'), cdBox,
      h('h3', { class: 'section-title' }, 'Last error'),
      k.last_error ? h('pre', { class: 'error-pre' }, k.last_error) : h('p', { class: 'muted' }, 'None.'));
    const chosen = await openModal({
      title: 'Key details',
      content,
      wide: true,
      actions: [
        { label: 'Delete', kind: 'danger', icon: 'trash', value: 'delete' },
        { label: 'Logs', icon: 'list', value: 'logs' },
        { label: 'Project', icon: 'tag', value: 'project' },
        { label: 'Validate', icon: 'shield', onClick: () => act([k], 'validate') },
        k.status === 'disabled'
          ? { label: 'Enable', icon: 'play', onClick: () => act([k], 'enable') }
          : { label: 'Disable', icon: 'pause', onClick: () => act([k], 'disable') },
        { label: 'Close', kind: 'primary', primary: true },
      ],
    });
    if (chosen === 'delete') await remove([k]);
    if (chosen === 'project') await editProject([k]);
    if (chosen === 'logs') location.hash = '#/logs?key_id=' + encodeURIComponent(k.id);
  }

  // ----- validate all, with progress -----
  let polling = null;
  function showProgress(p) {
    const done = p.done || 0;
    const total = p.total || 0;
    const running = !!p.running;
    progress.hidden = false;
    const fill = h('span', { class: 'meter-fill tone-blue' });
    fill.style.width = (total ? (done / total) * 100 : running ? 3 : 100).toFixed(1) + '%';
    const summary = [];
    if (!running && p.summary) {
      for (const [action, n] of Object.entries(p.summary)) if (n) summary.push(`${fmtNum(n)} ${ACTIONS[action] || action}`);
    }
    clear(progress).append(
      icon(running ? 'refresh' : p.error ? 'alert' : 'check', running ? 'spin' : ''),
      h('div', { class: 'banner-main' },
        h('div', { class: 'banner-line' },
          h('b', null, running ? 'Validating keys…' : p.error ? 'Validation stopped' : 'Validation finished'),
          h('span', { class: 'muted', id: 'validate-progress' }, `${fmtNum(done)} of ${fmtNum(total)} checked`),
          summary.length ? h('span', { class: 'muted' }, '· ' + summary.join(' · ')) : null,
          !running && p.finished_at ? h('span', { class: 'muted' }, '· ' + fmtAgo(p.finished_at)) : null,
          p.error ? h('span', { class: 'text-bad' }, p.error) : null),
        h('div', { class: 'meter' }, fill)),
      !running && p.results && p.results.length ? button('Results', () => showResults(p.results), { kind: 'ghost', attrs: { id: 'validate-results' } }) : null,
      running ? null : button('', () => { progress.hidden = true; dismissedRun = p.started_at || true; }, { iconName: 'x', title: 'Dismiss', kind: 'icon' }));
    validateAllBtn.disabled = running;
  }
  let dismissedRun = null;

  function showResults(results) {
    const names = new Map(state.keys.map((k) => [k.id, k.masked]));
    const tone = (r) => (r === 'success' ? 'status-ok' : r === 'quota' || r === 'transient' ? 'status-warn' : 'status-bad');
    openModal({
      title: 'Validation results',
      wide: true,
      content: h('div', { class: 'table-scroll' }, h('table', { class: 'table table-compact' },
        h('thead', null, h('tr', null, h('th', null, 'Key'), h('th', null, 'Result'), h('th', null, 'Action'), h('th', null, 'Reason'))),
        h('tbody', null, results.map((c) => h('tr', null,
          h('td', { class: 'mono nowrap' }, names.get(c.key_id) || '#' + c.key_id),
          h('td', null, h('span', { class: 'status ' + tone(c.result) }, resultText(c.result))),
          h('td', null, ACTIONS[c.action] || c.action || ''),
          h('td', { class: 'muted' }, c.result === 'success' ? '' : c.reason || (c.http_status ? 'HTTP ' + c.http_status : ''))))))),
      actions: [{ label: 'Close', kind: 'primary', primary: true }],
    });
  }

  async function pollValidation(fresh) {
    clearTimeout(polling);
    if (!alive) return;
    let p;
    try {
      p = await get('keys/validate');
    } catch (e) {
      return;
    }
    if (!alive || !p) return;
    if (p.running) {
      showProgress(p);
      polling = setTimeout(() => pollValidation(true), 1000);
    } else if (fresh && p.total) {
      showProgress(p);
      load();
    } else if (p.total && p.finished_at && dismissedRun !== p.started_at && Date.now() - new Date(p.finished_at).getTime() < 10 * 60 * 1000) {
      showProgress(p); // a run that ended in the last ten minutes
    }
  }

  async function validateAll() {
    if (!await confirmDialog('Validate every key', 'Check every key in the pool against the upstream now? Keys that are refused are disabled; keys that pass are enabled again unless an operator disabled them.', { confirm: 'Validate all' })) return;
    await startRun(undefined);
  }

  /** startRun checks the keys with the given ids (every key when undefined) as one run. */
  async function startRun(ids) {
    validateAllBtn.disabled = true;
    try {
      const run = await post('keys/validate', ids ? { ids } : undefined);
      showProgress(Object.assign({ running: true, done: 0, total: ids ? ids.length : 0 }, run || {}));
      pollValidation(true);
    } catch (e) {
      validateAllBtn.disabled = false;
      if (e.status === 409) { toast('A validation run is going already.', 'info'); pollValidation(true); } else if (e.status !== 401) toast(e.message, 'error');
    }
  }

  await load();
  pollValidation();
  return () => { alive = false; clearTimeout(polling); };
}
