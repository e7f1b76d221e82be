// Access keys: the keys clients use to call the gateway. Create (the full key is shown once),
// enable/disable, delete; changes take effect at once.
import { get, post, del } from './api.js';
import { h, clear, icon, button, toast, openModal, confirmDialog, fmtAgo, fmtTime, emptyState, pick, copyText } from './dom.js';

function enabledOf(k) {
  const e = pick(k, 'enabled');
  if (typeof e === 'boolean') return e;
  const st = pick(k, 'status');
  return st ? st !== 'disabled' : true;
}

export async function render(view, ctx) {
  let alive = true;
  const label = h('input', { class: 'input', id: 'access-label', placeholder: 'Label, e.g. "mobile app" or a teammate', maxlength: '100', 'aria-label': 'Label' });
  const create = h('form', { class: 'card create-card', onsubmit: (e) => { e.preventDefault(); createKey(); } },
    h('div', { class: 'create-text' },
      h('h2', null, 'New access key'),
      h('p', { class: 'muted' }, 'Clients send it as x-goog-api-key, ?key= or a Bearer token. The full key is shown only once.')),
    h('div', { class: 'create-form' }, label,
      h('button', { type: 'submit', class: 'btn btn-primary', id: 'access-create' }, icon('plus'), h('span', null, 'Create key'))));
  const list = h('div', { class: 'card table-card' });
  view.append(create, list);

  async function load() {
    let data;
    try {
      data = await get('access-keys');
    } catch (e) {
      if (e.status === 401) return;
      clear(list).append(emptyState('alert', 'Could not load access keys', e.message));
      return;
    }
    if (!alive) return;
    const keys = Array.isArray(data) ? data : (pick(data, 'access_keys', 'keys', 'items') || []);
    draw(keys);
  }

  function draw(keys) {
    clear(list);
    if (!keys.length) {
      list.append(emptyState('shield', 'No access keys', 'Without an access key no client can use the gateway. Create one above.'));
      return;
    }
    list.append(h('div', { class: 'table-scroll' }, h('table', { class: 'table', id: 'access-table' },
      h('thead', null, h('tr', null, h('th', null, 'Label'), h('th', null, 'ID'), h('th', null, 'Status'),
        h('th', { class: 'hide-sm' }, 'Created'), h('th', null, 'Last use'), h('th', { class: 'col-actions' }, ''))),
      h('tbody', null, keys.map((k) => {
        const on = enabledOf(k);
        return h('tr', { dataset: { id: String(k.id) } },
          h('td', null, k.label ? h('span', { class: 'strong' }, k.label) : h('span', { class: 'muted' }, 'unlabelled')),
          h('td', { class: 'mono muted' }, String(k.id)),
          h('td', null, h('span', { class: 'badge badge-' + (on ? 'active' : 'disabled') }, on ? 'enabled' : 'disabled')),
          h('td', { class: 'hide-sm muted', title: fmtTime(k.created_at) }, fmtAgo(k.created_at)),
          h('td', { class: 'muted', title: k.last_used_at ? fmtTime(k.last_used_at) : '' }, fmtAgo(k.last_used_at)),
          h('td', { class: 'col-actions' }, h('div', { class: 'row-actions' },
            on ? button('', () => toggle(k, 'disable'), { iconName: 'pause', title: 'Disable', kind: 'icon' })
              : button('', () => toggle(k, 'enable'), { iconName: 'play', title: 'Enable', kind: 'icon' }),
            button('', () => remove(k), { iconName: 'trash', title: 'Delete', kind: 'icon danger' }))));
      })))));
  }

  async function createKey() {
    const btn = document.getElementById('access-create');
    btn.disabled = true;
    try {
      const r = await post('access-keys', { label: label.value.trim() });
      label.value = '';
      const secret = pick(r, 'key', 'secret', 'access_key');
      load();
      if (secret) await showOnce(String(secret), r.label);
      else toast('Access key created.', 'ok');
    } catch (e) {
      if (e.status !== 401) toast(e.message, 'error');
    } finally {
      btn.disabled = false;
    }
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

  async function toggle(k, action) {
    try {
      await post(`access-keys/${encodeURIComponent(k.id)}/${action}`, {});
      toast(`${action === 'enable' ? 'Enabled' : 'Disabled'} ${k.label || 'the access key'}.`, 'ok');
    } catch (e) {
      if (e.status !== 401) toast(e.message, 'error');
    }
    load();
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
    load();
  }

  await load();
  return () => { alive = false; };
}
