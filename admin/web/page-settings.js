// Settings: every live setting (applied at once, no reload) and the admin key. A 400 from the
// server names the field at fault; the message is shown under that field.
import { get, put } from './api.js';
import { h, clear, icon, button, toast, emptyState } from './dom.js';

const GROUPS = [
  { title: 'Upstream', icon: 'activity', fields: [
    { name: 'upstream', label: 'Upstream URL', help: 'Where requests go; Google is https://generativelanguage.googleapis.com.', type: 'url', placeholder: 'https://generativelanguage.googleapis.com' },
    { name: 'proxy', label: 'Outbound proxy', help: 'http, https, socks5 or socks5h URL; empty for a direct connection.', placeholder: 'socks5://127.0.0.1:1080' },
    { name: 'max_request_body', label: 'Largest request body', help: 'Bigger requests are refused with 413.', type: 'number', min: 1, bytes: true },
  ] },
  { title: 'Reliability', icon: 'shield', fields: [
    { name: 'max_failures', label: 'Failures to eject', help: 'Consecutive failures (5xx, network) before a key is ejected for a while (1–1000); it is never disabled for them.', type: 'number', min: 1, max: 1000 },
    { name: 'max_ejection_percent', label: 'Most keys ejected at once', help: 'Never more than this percent of the enabled keys are ejected together (0–100; 0 turns ejection off).', type: 'number', min: 0, max: 100 },
    { name: 'max_retries', label: 'Retries per request', help: 'Other keys tried after a failure (0–20).', type: 'number', min: 0, max: 20 },
  ] },
  { title: 'Validation', icon: 'check', fields: [
    { name: 'validation_model', label: 'Probe model', help: 'Model used to probe keys, e.g. gemini-2.5-flash.' },
    { name: 'validation_interval', label: 'Interval', help: 'How often every key is checked, e.g. 1h or 30m (at least 1m).' },
    { name: 'validation_probe', label: 'Probe', help: '"models" lists models (free); "generate" sends a one-token request.', options: ['models', 'generate'] },
  ] },
  { title: 'Logs', icon: 'list', fields: [
    { name: 'timezone', label: 'Time zone', help: 'IANA name used for statistics and log times, e.g. Europe/Berlin.', placeholder: 'UTC' },
    { name: 'request_log_retention', label: 'Keep requests', help: 'How long request rows are kept, e.g. 30d or 720h (at least 1m).' },
    { name: 'error_log_retention', label: 'Keep errors', help: 'How long error rows are kept, e.g. 15d (at least 1m).' },
  ] },
];

/** sizeText reads a byte count as the Caddyfile writes it: " (32 MiB)". */
function sizeText(v) {
  const n = Number(v);
  if (!v || !Number.isFinite(n) || n <= 0) return '';
  const units = ['bytes', 'KiB', 'MiB', 'GiB'];
  let i = 0;
  let x = n;
  while (x >= 1024 && i < units.length - 1) { x /= 1024; i++; }
  return i ? ' (' + (Number.isInteger(x) ? x : x.toFixed(1)) + ' ' + units[i] + ')' : '';
}

function humanize(name) {
  const s = name.replace(/_/g, ' ');
  return s.charAt(0).toUpperCase() + s.slice(1);
}

export async function render(view) {
  let data;
  try {
    data = await get('settings');
  } catch (e) {
    if (e.status === 401) return;
    view.append(emptyState('alert', 'Could not load the settings', e.message));
    return;
  }
  const values = (data && typeof data.settings === 'object' && data.settings) || data || {};
  const original = {};
  const inputs = {};
  const errors = {};
  const sizes = {};

  const known = new Set(GROUPS.flatMap((g) => g.fields.map((f) => f.name)));
  const extra = Object.keys(values).filter((k) => !known.has(k) && typeof values[k] !== 'object').sort()
    .map((name) => ({ name, label: humanize(name), type: typeof values[name] === 'number' ? 'number' : 'text' }));
  const groups = extra.length ? [...GROUPS, { title: 'Other', icon: 'more', fields: extra }] : GROUPS;

  function fieldEl(f) {
    const v = values[f.name];
    original[f.name] = v;
    const text = v === undefined || v === null ? '' : String(v);
    let input;
    if (f.options) {
      input = h('select', { class: 'input', name: f.name, id: 'set-' + f.name },
        f.options.map((o) => h('option', { value: o, selected: o === text }, o)));
      if (text && !f.options.includes(text)) input.append(h('option', { value: text, selected: true }, text));
    } else {
      input = h('input', { class: 'input', name: f.name, id: 'set-' + f.name, type: f.type === 'number' ? 'number' : 'text',
        value: text, placeholder: f.placeholder || '', spellcheck: 'false', autocomplete: 'off' });
      if (f.min !== undefined) input.min = String(f.min);
      if (f.max !== undefined) input.max = String(f.max);
    }
    if (!(f.name in values)) input.disabled = true;
    inputs[f.name] = input;
    errors[f.name] = h('p', { class: 'field-error', id: 'err-' + f.name, hidden: true });
    // A byte count also shows in KiB/MiB, the way the Caddyfile writes it.
    const size = f.bytes ? h('span', { class: 'field-size' }, sizeText(input.value)) : null;
    if (size) sizes[f.name] = size;
    input.addEventListener('input', () => { errors[f.name].hidden = true; input.classList.remove('invalid'); markDirty(); });
    return h('div', { class: 'field' },
      h('label', { class: 'field-label', for: 'set-' + f.name }, f.label, h('code', { class: 'field-name' }, f.name)),
      input, f.help ? h('p', { class: 'field-help' }, size ? ['In bytes', size, '. '] : null, f.help) : null, errors[f.name]);
  }

  // Changing where the keys are sent (upstream, proxy) needs the admin key again.
  const GUARDED = ['upstream', 'proxy'];
  const adminKeyInput = h('input', { class: 'input', type: 'password', id: 'settings-admin-key', autocomplete: 'current-password', placeholder: 'The admin key you signed in with' });
  const adminKeyErr = h('p', { class: 'field-error', id: 'err-settings-admin-key', hidden: true });
  const adminKeyField = h('div', { class: 'field', id: 'settings-admin-key-field', hidden: true },
    h('label', { class: 'field-label', for: 'settings-admin-key' }, 'Confirm with your admin key'),
    adminKeyInput,
    h('p', { class: 'field-help' }, 'The upstream and the proxy decide where every upstream key is sent, so changing them needs the admin key again.'),
    adminKeyErr);
  adminKeyInput.addEventListener('input', () => { adminKeyErr.hidden = true; adminKeyInput.classList.remove('invalid'); });
  const guardedChanged = (body) => GUARDED.some((n) => n in body);

  const saveBtn = button('Save changes', () => save(), { iconName: 'check', kind: 'primary', attrs: { id: 'settings-save' } });
  const resetBtn = button('Discard', () => reset(), { kind: 'ghost' });
  const formErr = h('p', { class: 'form-error', hidden: true });
  const form = h('form', { class: 'settings-form', id: 'settings-form', novalidate: true, onsubmit: (e) => { e.preventDefault(); save(); } },
    // The admin key prompt sits in the card of the fields it guards, not far below them.
    groups.map((g) => h('section', { class: 'card settings-group' },
      h('header', { class: 'card-head' }, h('h2', null, icon(g.icon), g.title)),
      h('div', { class: 'settings-fields' }, g.fields.map(fieldEl)),
      g.fields.some((f) => GUARDED.includes(f.name)) ? adminKeyField : null)),
    h('div', { class: 'savebar' }, h('span', { class: 'muted dirty-note' }, 'Changes apply at once, without a reload.'), formErr, resetBtn, saveBtn));
  view.append(form, adminKeyCard());

  function changed() {
    const out = {};
    for (const [name, input] of Object.entries(inputs)) {
      if (input.disabled) continue;
      const was = original[name];
      const now = input.value.trim();
      if (now === (was === undefined || was === null ? '' : String(was))) continue;
      if (typeof was === 'number') {
        const n = Number(now);
        out[name] = now !== '' && Number.isFinite(n) ? n : now;
      } else out[name] = now;
    }
    return out;
  }

  function markDirty() {
    for (const [name, size] of Object.entries(sizes)) size.textContent = sizeText(inputs[name].value);
    const body = changed();
    const n = Object.keys(body).length;
    adminKeyField.hidden = !guardedChanged(body);
    if (adminKeyField.hidden) adminKeyInput.value = '';
    saveBtn.disabled = n === 0;
    resetBtn.disabled = n === 0;
    form.classList.toggle('dirty', n > 0);
  }

  function reset() {
    for (const [name, input] of Object.entries(inputs)) {
      const v = original[name];
      input.value = v === undefined || v === null ? '' : String(v);
      errors[name].hidden = true;
      input.classList.remove('invalid');
    }
    formErr.hidden = true;
    markDirty();
  }

  function showError(e) {
    // The server names each bad field ({"field","description"}); without details the message
    // itself starts with the field: "max_failures: 0 is out of range [1, 1000]".
    const fields = e.fields ? e.fields() : {};
    let placed = false;
    let other = [];
    for (const [name, why] of Object.entries(fields)) {
      if (inputs[name]) {
        errors[name].textContent = why;
        errors[name].hidden = false;
        inputs[name].classList.add('invalid');
        if (!placed) inputs[name].focus();
        placed = true;
      } else other.push(`${name}: ${why}`);
    }
    if (!Object.keys(fields).length) {
      for (const name of Object.keys(inputs).sort((a, b) => b.length - a.length)) {
        if (new RegExp('(^|[^a-z_])' + name + '([^a-z_]|$)').test(e.message)) {
          errors[name].textContent = e.message;
          errors[name].hidden = false;
          inputs[name].classList.add('invalid');
          inputs[name].focus();
          placed = true;
          break;
        }
      }
      if (!placed) other = [e.message];
    }
    if (other.length) {
      formErr.textContent = other.join('; ');
      formErr.hidden = false;
    }
    toast('Nothing was saved: ' + (placed ? 'check the highlighted fields.' : e.message), 'error');
  }

  async function save() {
    const body = changed();
    if (!Object.keys(body).length) return;
    formErr.hidden = true;
    adminKeyErr.hidden = true;
    if (guardedChanged(body)) {
      if (!adminKeyInput.value) {
        adminKeyErr.textContent = 'Enter the admin key to change the upstream or the proxy.';
        adminKeyErr.hidden = false;
        adminKeyInput.classList.add('invalid');
        adminKeyInput.focus();
        return;
      }
      body.admin_key = adminKeyInput.value;
    }
    for (const e of Object.values(errors)) e.hidden = true;
    for (const i of Object.values(inputs)) i.classList.remove('invalid');
    saveBtn.disabled = true;
    try {
      const r = await put('settings', body);
      delete body.admin_key;
      adminKeyInput.value = '';
      const fresh = (r && typeof r.settings === 'object' && r.settings) || (r && typeof r === 'object' ? r : null);
      for (const [k, v] of Object.entries(body)) original[k] = v;
      if (fresh) {
        for (const [k, v] of Object.entries(fresh)) {
          if (!(k in inputs) || typeof v === 'object') continue;
          original[k] = v;
          inputs[k].value = v === null ? '' : String(v);
        }
      }
      const labels = new Map(groups.flatMap((g) => g.fields.map((f) => [f.name, f.label])));
      toast(`Saved: ${Object.keys(body).map((k) => labels.get(k) || k).join(', ')}.`, 'ok');
    } catch (e) {
      if (e.status === 400) showError(e);
      else if (e.status === 403 && 'admin_key' in body) {
        adminKeyErr.textContent = 'The admin key is not right; nothing was saved.';
        adminKeyErr.hidden = false;
        adminKeyInput.classList.add('invalid');
        adminKeyInput.focus();
      } else if (e.status !== 401) toast(e.message, 'error');
    }
    markDirty();
  }

  markDirty();
}

function adminKeyCard() {
  const cur = h('input', { class: 'input', type: 'password', id: 'admin-current', autocomplete: 'current-password' });
  const nw = h('input', { class: 'input', type: 'password', id: 'admin-new', autocomplete: 'new-password', minlength: '16' });
  const again = h('input', { class: 'input', type: 'password', id: 'admin-again', autocomplete: 'new-password' });
  const err = h('p', { class: 'form-error', hidden: true });
  const submit = h('button', { type: 'submit', class: 'btn btn-primary', id: 'admin-key-save' }, icon('lock'), h('span', null, 'Change admin key'));
  const form = h('form', { class: 'card settings-group', id: 'admin-key-form', novalidate: true, onsubmit: async (e) => {
    e.preventDefault();
    err.hidden = true;
    const fail = (m) => { err.textContent = m; err.hidden = false; };
    if (!cur.value) return fail('Enter the current admin key.');
    if (nw.value.length < 16) return fail('Use at least 16 characters for the new key.');
    if (nw.value !== again.value) return fail('The new keys do not match.');
    submit.disabled = true;
    try {
      await put('admin-key', { current: cur.value, new: nw.value }, { auth401: false });
      cur.value = ''; nw.value = ''; again.value = '';
      toast('Admin key changed. Every other session was signed out.', 'ok');
    } catch (ex) {
      fail(ex.status === 401 || ex.status === 403 ? 'The current admin key is not right.' : ex.message);
    } finally {
      submit.disabled = false;
    }
  } },
  h('header', { class: 'card-head' }, h('h2', null, icon('lock'), 'Admin key')),
  h('div', { class: 'settings-fields' },
    h('div', { class: 'field' }, h('label', { class: 'field-label', for: 'admin-current' }, 'Current admin key'), cur),
    h('div', { class: 'field' }, h('label', { class: 'field-label', for: 'admin-new' }, 'New admin key'), nw,
      h('p', { class: 'field-help' }, 'At least 16 characters. Changing it signs out every other session.')),
    h('div', { class: 'field' }, h('label', { class: 'field-label', for: 'admin-again' }, 'Repeat the new key'), again)),
  h('div', { class: 'savebar' }, err, submit));
  return form;
}
