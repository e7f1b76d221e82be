// Small DOM helpers. Every piece of data goes into the page as text (textContent or text
// nodes); no HTML string is ever parsed, so model names, paths and upstream error bodies
// cannot inject markup.

const SVG_NS = 'http://www.w3.org/2000/svg';

function applyAttrs(el, attrs) {
  if (!attrs) return;
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === 'class') el.setAttribute('class', Array.isArray(v) ? v.filter(Boolean).join(' ') : v);
    else if (k === 'text') el.textContent = String(v);
    else if (k === 'dataset') Object.assign(el.dataset, v);
    else if (k.startsWith('on') && typeof v === 'function') el.addEventListener(k.slice(2), v);
    else if (k === 'style') throw new Error('inline styles are not allowed (CSP)');
    else if (k in el && typeof v !== 'string' && !(el instanceof SVGElement)) el[k] = v;
    else el.setAttribute(k, v === true ? '' : String(v));
  }
}

function append(el, children) {
  for (const c of children) {
    if (c === undefined || c === null || c === false) continue;
    if (Array.isArray(c)) append(el, c);
    else if (c instanceof Node) el.appendChild(c);
    else el.appendChild(document.createTextNode(String(c)));
  }
}

/** h builds an HTML element: h('div', {class: 'x'}, 'text', child, [more]). */
export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  applyAttrs(el, attrs);
  append(el, children);
  return el;
}

/** s builds an SVG element. */
export function s(tag, attrs, ...children) {
  const el = document.createElementNS(SVG_NS, tag);
  if (attrs) {
    for (const [k, v] of Object.entries(attrs)) {
      if (v === undefined || v === null || v === false) continue;
      if (k === 'text') el.textContent = String(v);
      else if (k.startsWith('on') && typeof v === 'function') el.addEventListener(k.slice(2), v);
      else if (k === 'style') throw new Error('inline styles are not allowed (CSP)');
      else el.setAttribute(k, String(v));
    }
  }
  append(el, children);
  return el;
}

/** clear removes every child of el and returns it. */
export function clear(el) {
  while (el.firstChild) el.removeChild(el.firstChild);
  return el;
}

const ICONS = {
  plus: ['M12 5v14M5 12h14'],
  refresh: ['M20 11a8 8 0 0 0-14.9-4M4 5v4h4', 'M4 13a8 8 0 0 0 14.9 4M20 19v-4h-4'],
  check: ['m5 12 5 5 9-10'],
  x: ['M6 6l12 12M18 6 6 18'],
  trash: ['M4 7h16M10 11v6M14 11v6M6 7l1 13h10l1-13M9 7V4h6v3'],
  power: ['M12 3v8', 'M6.3 7.3a8 8 0 1 0 11.4 0'],
  pause: ['M9 5v14M15 5v14'],
  play: ['M7 5l12 7-12 7z'],
  shield: ['M12 3 4 6v6c0 4.5 3.4 8.3 8 9 4.6-.7 8-4.5 8-9V6z', 'm9 12 2 2 4-4'],
  download: ['M12 4v11M7 10l5 5 5-5M5 20h14'],
  upload: ['M12 20V9M7 14l5-5 5 5M5 4h14'],
  copy: ['M9 9h11v11H9z', 'M5 15H4V4h11v1'],
  search: ['M11 18a7 7 0 1 0 0-14 7 7 0 0 0 0 14zM21 21l-5-5'],
  info: ['M12 21a9 9 0 1 0 0-18 9 9 0 0 0 0 18zM12 11v6M12 7.5v.5'],
  alert: ['M12 3 2 20h20L12 3zM12 10v5M12 17.5v.5'],
  clock: ['M12 21a9 9 0 1 0 0-18 9 9 0 0 0 0 18zM12 7v5l3 2'],
  key: ['M7.5 20a4.5 4.5 0 1 0 0-9 4.5 4.5 0 0 0 0 9zM10.7 12.3 20 3M16 7l3 3M14 9l2 2'],
  chevronLeft: ['m15 5-7 7 7 7'],
  chevronRight: ['m9 5 7 7-7 7'],
  more: ['M5 12h.01M12 12h.01M19 12h.01'],
  activity: ['M3 12h4l3-8 4 16 3-8h4'],
  coins: ['M12 4c4.4 0 8 1.3 8 3s-3.6 3-8 3-8-1.3-8-3 3.6-3 8-3z', 'M4 7v5c0 1.7 3.6 3 8 3s8-1.3 8-3V7M4 12v5c0 1.7 3.6 3 8 3s8-1.3 8-3v-5'],
  gauge: ['M4 17a8 8 0 1 1 16 0', 'M12 17l4-6'],
  list: ['M8 6h13M8 12h13M8 18h13M3.5 6h.01M3.5 12h.01M3.5 18h.01'],
  eye: ['M2 12s3.6-7 10-7 10 7 10 7-3.6 7-10 7S2 12 2 12z', 'M12 15a3 3 0 1 0 0-6 3 3 0 0 0 0 6z'],
  file: ['M14 3H6v18h12V7zM14 3v4h4'],
  inbox: ['M3 13h5l2 3h4l2-3h5', 'M5 5h14l2 8v6H3v-6z'],
  lock: ['M6 11h12v10H6zM8 11V7a4 4 0 0 1 8 0v4'],
  tag: ['M3 12V4h8l10 10-8 8z', 'M7.5 7.5h.01'],
  edit: ['M4 20h4L19 9l-4-4L4 16z', 'M13.5 6.5l4 4'],
};

/** icon returns a stroke icon from the built-in set. */
export function icon(name, cls) {
  const paths = ICONS[name] || ICONS.info;
  return s('svg', { class: 'icon' + (cls ? ' ' + cls : ''), viewBox: '0 0 24 24', 'aria-hidden': 'true' },
    paths.map((d) => s('path', { d })));
}

/** button is a <button type="button"> with an optional icon. */
export function button(label, onclick, { kind = '', iconName, title, disabled, attrs } = {}) {
  const b = h('button', Object.assign({ type: 'button', class: ['btn', kind && 'btn-' + kind].filter(Boolean).join(' '), title, onclick }, attrs || {}),
    iconName ? icon(iconName) : null, label ? h('span', null, label) : null);
  if (disabled) b.disabled = true;
  if (!label && title) b.setAttribute('aria-label', title);
  return b;
}

// ---------- toasts ----------

/** toast shows a short message in the corner; kind is 'ok', 'error' or 'info'. */
export function toast(message, kind = 'info', timeout) {
  const box = document.getElementById('toasts');
  const t = h('div', { class: 'toast toast-' + kind, role: kind === 'error' ? 'alert' : 'status' },
    icon(kind === 'ok' ? 'check' : kind === 'error' ? 'alert' : 'info'),
    h('span', { class: 'toast-text' }, message),
    h('button', { type: 'button', class: 'toast-close', 'aria-label': 'Dismiss', onclick: () => dismiss() }, icon('x')));
  box.appendChild(t);
  let gone = false;
  const dismiss = () => {
    if (gone) return;
    gone = true;
    t.classList.add('leaving');
    setTimeout(() => t.remove(), 200);
  };
  setTimeout(dismiss, timeout || (kind === 'error' ? 8000 : 4000));
  return dismiss;
}

// ---------- modal dialogs ----------

/**
 * openModal shows the shared <dialog>. content is a node; actions is a list of
 * {label, kind, value, onClick}. It resolves with the value of the action chosen, or
 * undefined when dismissed. onClick may return false (or a promise of false) to keep it open.
 */
let modalSeq = 0;
let modalFinish = null;

export function openModal({ title, content, actions = [], wide = false, onOpen }) {
  const dlg = document.getElementById('modal');
  if (modalFinish) modalFinish(undefined);
  if (dlg.open) dlg.close();
  clear(dlg);
  dlg.className = 'modal' + (wide ? ' modal-wide' : '');
  const my = ++modalSeq;
  return new Promise((resolve) => {
    let settled = false;
    const finish = (v) => {
      if (settled) return;
      settled = true;
      dlg.removeEventListener('close', onClose);
      if (modalFinish === finish) modalFinish = null;
      // Drop the content (it may hold a secret shown once) unless another dialog took over.
      setTimeout(() => { if (modalSeq === my && !dlg.open) clear(dlg); }, 0);
      resolve(v);
    };
    // A close event may arrive late, after the next dialog opened: only the current one counts.
    const onClose = () => { if (modalSeq === my && !dlg.open) finish(undefined); };
    const close = (v) => { finish(v); if (modalSeq === my && dlg.open) dlg.close(); };
    modalFinish = finish;
    const btns = actions.map((a) => {
      const b = button(a.label, async () => {
        if (a.onClick) {
          b.disabled = true;
          try {
            const keep = await a.onClick();
            if (keep === false) return;
          } finally { b.disabled = false; }
        }
        close(a.value);
      }, { kind: a.kind || '', iconName: a.icon, attrs: a.attrs });
      return b;
    });
    const form = h('form', { method: 'dialog', class: 'modal-body', onsubmit: (e) => {
      e.preventDefault();
      const primary = btns.find((b, i) => actions[i].primary);
      if (primary && !primary.disabled) primary.click();
    } },
    h('header', { class: 'modal-head' },
      h('h2', null, title),
      h('button', { type: 'button', class: 'icon-btn', 'aria-label': 'Close', onclick: () => close(undefined) }, icon('x'))),
    h('div', { class: 'modal-content' }, content),
    btns.length ? h('footer', { class: 'modal-foot' }, btns) : null);
    dlg.appendChild(form);
    dlg.addEventListener('close', onClose);
    dlg.showModal();
    const first = dlg.querySelector('.modal-content input:not([type=checkbox]):not([type=file]), .modal-content textarea, .modal-content select');
    if (first) first.focus();
    if (onOpen) onOpen(dlg, close);
  });
}

/** confirmDialog asks a yes/no question; warning, if given, stands out below the question. */
export async function confirmDialog(title, message, { confirm = 'Confirm', danger = false, warning = '' } = {}) {
  const v = await openModal({
    title,
    content: h('div', { class: 'stack' }, h('p', { class: 'modal-text' }, message),
      warning ? h('div', { class: 'callout warn', role: 'alert' }, icon('alert'), h('span', { class: 'confirm-warning' }, warning)) : null),
    actions: [
      { label: 'Cancel', value: false },
      { label: confirm, value: true, kind: danger ? 'danger' : 'primary', primary: true },
    ],
  });
  return v === true;
}

// ---------- formatting ----------

const nf = new Intl.NumberFormat();
const cf = new Intl.NumberFormat(undefined, { notation: 'compact', maximumFractionDigits: 1 });

/** fmtNum formats a whole number with grouping; missing values show as a dash. */
export function fmtNum(n) {
  if (n === undefined || n === null || Number.isNaN(Number(n))) return '—';
  return nf.format(Number(n));
}

/** fmtCompact formats a large number as 1.2K, 3.4M… */
export function fmtCompact(n) {
  if (n === undefined || n === null) return '—';
  return Math.abs(n) < 10000 ? nf.format(n) : cf.format(n);
}

/** fmtPct formats a 0..1 ratio as a percentage with one decimal. */
export function fmtPct(r) {
  if (r === null || r === undefined || !Number.isFinite(r)) return '—';
  const p = r * 100;
  return (p === 100 || p === 0 ? p.toFixed(0) : p.toFixed(1)) + '%';
}

/** toDate turns an API time (RFC 3339 text, Unix seconds or milliseconds) into a Date. */
export function toDate(t) {
  if (t === undefined || t === null || t === '' || t === 0) return null;
  if (typeof t === 'number') return new Date(t > 1e12 ? t : t * 1000);
  const d = new Date(t);
  return Number.isNaN(d.getTime()) ? null : d;
}

const ISO = /^(\d{4})-(\d{2})-(\d{2})[T ](\d{2}):(\d{2})(?::(\d{2}))?/;
const MONTHS = ['Jan', 'Feb', 'Mar', 'Apr', 'May', 'Jun', 'Jul', 'Aug', 'Sep', 'Oct', 'Nov', 'Dec'];

/**
 * wall returns the wall-clock parts of an API time. RFC 3339 text is taken literally, so
 * times show in the gateway's configured time zone rather than the browser's.
 */
export function wall(t) {
  if (typeof t === 'string') {
    const m = ISO.exec(t);
    if (m) return { y: +m[1], mo: +m[2], d: +m[3], hh: m[4], mm: m[5], ss: m[6] || '00' };
  }
  const d = toDate(t);
  if (!d) return null;
  const p = (n) => String(n).padStart(2, '0');
  return { y: d.getFullYear(), mo: d.getMonth() + 1, d: d.getDate(), hh: p(d.getHours()), mm: p(d.getMinutes()), ss: p(d.getSeconds()) };
}

/** fmtTime formats an API time as "Nov 26, 14:03:12". */
export function fmtTime(t, { seconds = true } = {}) {
  const w = wall(t);
  if (!w) return '—';
  return `${MONTHS[w.mo - 1]} ${w.d}, ${w.hh}:${w.mm}${seconds ? ':' + w.ss : ''}`;
}

/** fmtAgo formats an API time relative to now: "3 min ago", "in 2 h". */
export function fmtAgo(t) {
  const d = toDate(t);
  if (!d) return 'never';
  let sec = Math.round((d.getTime() - Date.now()) / 1000);
  const future = sec > 0;
  sec = Math.abs(sec);
  let v;
  if (sec < 45) v = future ? `${sec}s` : 'just now';
  else if (sec < 3600) v = Math.round(sec / 60) + ' min';
  else if (sec < 86400) v = Math.round(sec / 3600) + ' h';
  else v = Math.round(sec / 86400) + ' d';
  if (v === 'just now') return v;
  return future ? 'in ' + v : v + ' ago';
}

/** fmtMs formats a duration in milliseconds. */
export function fmtMs(ms) {
  if (ms === undefined || ms === null || Number.isNaN(Number(ms))) return '—';
  ms = Number(ms);
  if (ms < 1) return '<1 ms';
  if (ms < 1000) return Math.round(ms) + ' ms';
  if (ms < 60000) return (ms / 1000).toFixed(ms < 10000 ? 2 : 1) + ' s';
  return (ms / 60000).toFixed(1) + ' min';
}

/** pick returns the first defined field of obj among names. */
export function pick(obj, ...names) {
  if (!obj) return undefined;
  for (const n of names) if (obj[n] !== undefined && obj[n] !== null) return obj[n];
  return undefined;
}

/** emptyState is the placeholder shown where a list has nothing to show. */
export function emptyState(iconName, title, text, action) {
  return h('div', { class: 'empty' }, h('div', { class: 'empty-icon' }, icon(iconName)),
    h('p', { class: 'empty-title' }, title), text ? h('p', { class: 'muted' }, text) : null, action || null);
}

/** copyText copies text to the clipboard, with a fallback for plain-HTTP origins. */
export async function copyText(text, fallbackInput) {
  try {
    if (navigator.clipboard && window.isSecureContext) {
      await navigator.clipboard.writeText(text);
      return true;
    }
  } catch (e) { /* fall through */ }
  if (fallbackInput) {
    fallbackInput.focus();
    fallbackInput.select();
    try { return document.execCommand('copy'); } catch (e) { return false; }
  }
  return false;
}

/** debounce delays fn until calls stop for ms. */
export function debounce(fn, ms) {
  let id;
  return (...a) => { clearTimeout(id); id = setTimeout(() => fn(...a), ms); };
}
