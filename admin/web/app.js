// Entry point: sign-in, the shell (navigation, theme, sign-out) and hash routing between pages.
import { api, post, onUnauthorized } from './api.js';
import { clear, toast } from './dom.js';
import * as dashboard from './page-dashboard.js';
import * as keys from './page-keys.js';
import * as access from './page-access.js';
import * as logs from './page-logs.js';
import * as settings from './page-settings.js';

const PAGES = {
  dashboard: { title: 'Dashboard', mod: dashboard },
  keys: { title: 'API keys', mod: keys },
  access: { title: 'Access keys', mod: access },
  logs: { title: 'Logs', mod: logs },
  settings: { title: 'Settings', mod: settings },
};

const $ = (id) => document.getElementById(id);
let current = null; // { name, cleanup }
let signedIn = false;
let renderSeq = 0;

function route() {
  const m = /^#\/([a-z-]+)(?:\?(.*))?$/.exec(location.hash);
  const name = m && PAGES[m[1]] ? m[1] : 'dashboard';
  return { name, params: new URLSearchParams((m && m[2]) || '') };
}

function stopPage() {
  if (current && current.cleanup) {
    try { current.cleanup(); } catch (e) { /* ignore */ }
  }
  current = null;
}

async function showPage() {
  if (!signedIn) return;
  const { name, params } = route();
  stopPage();
  const seq = ++renderSeq;
  const page = PAGES[name];
  document.title = `${page.title} · Gemini Synapse`;
  $('page-title').textContent = page.title;
  clear($('page-actions'));
  for (const a of document.querySelectorAll('.nav a')) {
    a.classList.toggle('active', a.dataset.route === name);
    if (a.dataset.route === name) a.setAttribute('aria-current', 'page'); else a.removeAttribute('aria-current');
  }
  document.body.classList.remove('nav-open');
  const view = clear($('view'));
  view.dataset.page = name;
  const ctx = { actions: $('page-actions'), params, isCurrent: () => seq === renderSeq };
  current = { name, cleanup: null };
  try {
    const cleanup = await page.mod.render(view, ctx);
    if (seq === renderSeq) current.cleanup = cleanup || null;
    else if (cleanup) cleanup();
  } catch (e) {
    if (e && e.status === 401) return;
    toast(e.message || String(e), 'error');
  }
}

function showSignIn(message) {
  signedIn = false;
  stopPage();
  clear($('view'));
  $('app').hidden = true;
  $('boot').hidden = true;
  $('signin').hidden = false;
  const err = $('signin-error');
  err.hidden = !message;
  err.textContent = message || '';
  document.title = 'Sign in · Gemini Synapse';
  $('signin-key').value = '';
  $('signin-key').focus();
}

function showApp() {
  signedIn = true;
  $('signin').hidden = true;
  $('boot').hidden = true;
  $('app').hidden = false;
  showPage();
}

async function signIn(e) {
  e.preventDefault();
  const input = $('signin-key');
  const key = input.value.trim();
  const err = $('signin-error');
  if (!key) {
    err.textContent = 'Enter the admin key.';
    err.hidden = false;
    return;
  }
  const btn = $('signin-submit');
  btn.disabled = true;
  btn.classList.add('busy');
  try {
    await post('login', { admin_key: key }, { auth401: false });
    input.value = '';
    err.hidden = true;
    if (!location.hash || location.hash === '#' || location.hash === '#/') location.hash = '#/dashboard';
    showApp();
  } catch (ex) {
    err.textContent = ex.status === 401 ? 'That admin key is not right.' : ex.message;
    err.hidden = false;
    input.select();
  } finally {
    btn.disabled = false;
    btn.classList.remove('busy');
  }
}

async function signOut() {
  try {
    await post('logout', {}, { auth401: false });
  } catch (e) { /* the session may already be gone */ }
  showSignIn('');
  toast('Signed out.', 'ok');
}

// ---------- theme ----------

function effectiveTheme() {
  const t = document.documentElement.dataset.theme;
  if (t === 'light' || t === 'dark') return t;
  return matchMedia('(prefers-color-scheme: dark)').matches ? 'dark' : 'light';
}

function syncThemeLabel() {
  $('theme-label').textContent = effectiveTheme() === 'dark' ? 'Light theme' : 'Dark theme';
}

function toggleTheme() {
  const next = effectiveTheme() === 'dark' ? 'light' : 'dark';
  document.documentElement.dataset.theme = next;
  try { localStorage.setItem('synapse-theme', next); } catch (e) { /* not stored */ }
  syncThemeLabel();
  window.dispatchEvent(new Event('synapse-theme'));
}

// ---------- start ----------

async function start() {
  $('signin-form').addEventListener('submit', signIn);
  $('signout').addEventListener('click', signOut);
  $('theme-toggle').addEventListener('click', toggleTheme);
  matchMedia('(prefers-color-scheme: dark)').addEventListener('change', syncThemeLabel);
  syncThemeLabel();
  $('menu').addEventListener('click', () => document.body.classList.toggle('nav-open'));
  $('scrim').addEventListener('click', () => document.body.classList.remove('nav-open'));
  window.addEventListener('hashchange', showPage);
  onUnauthorized(() => {
    if (signedIn) showSignIn('Your session has ended. Sign in again.');
  });
  // Is there a session?
  try {
    const s = await api('session', { auth401: false });
    if (s && s.authenticated === false) { showSignIn(''); return; }
    showApp();
  } catch (e) {
    showSignIn(e.status === 401 ? '' : e.message);
  }
}

start();
