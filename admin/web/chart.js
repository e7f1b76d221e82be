// The traffic chart: stacked success/failure bars per time bucket and a token line, drawn as
// SVG by our own code. Labels are text nodes; nothing is parsed as markup.
import { h, s, clear, fmtNum, fmtCompact, wall } from './dom.js';

const MONTHS = ['Jan', 'Feb', 'Mar', 'Apr', 'May', 'Jun', 'Jul', 'Aug', 'Sep', 'Oct', 'Nov', 'Dec'];

// niceScale picks a round step (1, 2 or 5 times a power of ten) and a top of at most five
// steps above max, so that the axis shows round numbers.
function niceScale(max, maxSteps = 4) {
  if (max <= 0) return { top: 4, step: 1 };
  const raw = max / maxSteps;
  const exp = Math.pow(10, Math.floor(Math.log10(raw)));
  let step = 10 * exp;
  for (const m of [1, 2, 5]) if (m * exp >= raw) { step = m * exp; break; }
  if (step < 1 && max >= 1) step = 1;
  return { top: Math.ceil(max / step) * step, step };
}

function label(t, range, long) {
  const w = wall(t);
  if (!w) return '';
  const day = `${MONTHS[w.mo - 1]} ${w.d}`;
  const midnight = w.hh === '00' && w.mm === '00';
  if (long) return range === '30d' && midnight ? day : `${day}, ${w.hh}:${w.mm}`;
  if (range === '24h') return `${w.hh}:${w.mm}`;
  if (range === '7d') return midnight ? day : `${w.hh}:${w.mm}`;
  return day;
}

/**
 * drawTrend renders points into container (replacing what is there). points are
 * {t, success, failure, tokens}; range is "24h", "7d" or "30d".
 */
export function drawTrend(container, points, range) {
  clear(container);
  const width = Math.max(container.clientWidth || 640, 280);
  const height = 236;
  const pad = { l: 44, r: 52, t: 14, b: 30 };
  const iw = width - pad.l - pad.r;
  const ih = height - pad.t - pad.b;
  const n = points.length;

  const svg = s('svg', { class: 'chart', viewBox: `0 0 ${width} ${height}`, width, height, role: 'img', 'aria-label': 'Requests and tokens over time' });
  container.appendChild(svg);
  const tip = h('div', { class: 'chart-tip', hidden: true });
  container.appendChild(tip);

  const req = niceScale(Math.max(0, ...points.map((p) => (p.success || 0) + (p.failure || 0))));
  const lines = Math.round(req.top / req.step);
  const reqMax = req.top;
  // the token axis shares the grid lines of the request axis
  const tokRaw = Math.max(0, ...points.map((p) => p.tokens || 0));
  const tokStep = niceScale(tokRaw, lines).step;
  const tokMax = tokRaw > 0 ? Math.max(tokStep * lines, tokStep) : lines;
  const y = (v) => pad.t + ih - (v / reqMax) * ih;
  const yt = (v) => pad.t + ih - (v / tokMax) * ih;

  // grid and axes
  const grid = s('g', { class: 'chart-grid' });
  for (let i = 0; i <= lines; i++) {
    const v = req.step * i;
    const yy = Math.round(y(v)) + 0.5;
    grid.appendChild(s('line', { x1: pad.l, x2: width - pad.r, y1: yy, y2: yy }));
    grid.appendChild(s('text', { x: pad.l - 8, y: yy + 4, 'text-anchor': 'end', class: 'axis', text: fmtCompact(v) }));
    grid.appendChild(s('text', { x: width - pad.r + 8, y: yy + 4, 'text-anchor': 'start', class: 'axis axis-tokens', text: fmtCompact((tokMax / lines) * i) }));
  }
  svg.appendChild(grid);

  if (n === 0) {
    svg.appendChild(s('text', { x: pad.l + iw / 2, y: pad.t + ih / 2, 'text-anchor': 'middle', class: 'chart-empty', text: 'No traffic in this period yet' }));
    return;
  }

  const slot = iw / n;
  const bw = Math.max(1, Math.min(28, slot * 0.68));
  const bars = s('g', { class: 'chart-bars' });
  const hovers = s('g', { class: 'chart-hover' });
  const linePts = [];
  points.forEach((p, i) => {
    const cx = pad.l + slot * i + slot / 2;
    const ok = p.success || 0;
    const bad = p.failure || 0;
    const x = cx - bw / 2;
    const r = Math.min(3, bw / 3);
    if (ok > 0) bars.appendChild(s('rect', { class: 'bar-ok', x, y: y(ok), width: bw, height: Math.max(0, y(0) - y(ok)), rx: r }));
    if (bad > 0) bars.appendChild(s('rect', { class: 'bar-bad', x, y: y(ok + bad), width: bw, height: Math.max(1, y(ok) - y(ok + bad)), rx: r }));
    linePts.push([cx, yt(p.tokens || 0)]);
    const hit = s('rect', { x: pad.l + slot * i, y: pad.t, width: slot, height: ih, class: 'hit' });
    hit.addEventListener('mouseenter', () => {
      hit.classList.add('on');
      clear(tip);
      tip.appendChild(h('div', { class: 'tip-title' }, label(p.t, range, true)));
      tip.appendChild(h('div', { class: 'tip-row' }, h('i', { class: 'sw sw-ok' }), 'Success', h('b', null, fmtNum(ok))));
      tip.appendChild(h('div', { class: 'tip-row' }, h('i', { class: 'sw sw-bad' }), 'Failure', h('b', null, fmtNum(bad))));
      tip.appendChild(h('div', { class: 'tip-row' }, h('i', { class: 'sw sw-tok' }), 'Tokens', h('b', null, fmtNum(p.tokens || 0))));
      tip.hidden = false;
      const tw = tip.offsetWidth;
      let left = (cx / width) * container.clientWidth + 12;
      if (left + tw > container.clientWidth) left = (cx / width) * container.clientWidth - tw - 12;
      tip.style.left = Math.max(0, left) + 'px';
      tip.style.top = '8px';
    });
    hit.addEventListener('mouseleave', () => { hit.classList.remove('on'); tip.hidden = true; });
    hovers.appendChild(hit);
  });
  svg.appendChild(bars);

  if (points.some((p) => (p.tokens || 0) > 0)) {
    const d = linePts.map((pt, i) => (i ? 'L' : 'M') + pt[0].toFixed(1) + ' ' + pt[1].toFixed(1)).join(' ');
    svg.appendChild(s('path', { class: 'token-line', d }));
    if (n <= 48) linePts.forEach((pt) => svg.appendChild(s('circle', { class: 'token-dot', cx: pt[0], cy: pt[1], r: 2.5 })));
  }

  // x labels, about one per 90px
  const every = Math.max(1, Math.ceil(n / Math.max(2, Math.floor(iw / 90))));
  const xl = s('g', { class: 'chart-x' });
  let ticks = [];
  if (range === '7d') {
    // one label per day, at the bucket that starts at midnight
    points.forEach((p, i) => { const w = wall(p.t); if (w && w.hh === '00') ticks.push(i); });
    if (ticks.length * 90 > iw) ticks = ticks.filter((_, j) => j % 2 === 0);
  }
  if (!ticks.length) for (let i = 0; i < n; i += every) ticks.push(i);
  for (const i of ticks) {
    const cx = pad.l + slot * i + slot / 2;
    xl.appendChild(s('text', { x: cx, y: height - 8, 'text-anchor': 'middle', class: 'axis', text: label(points[i].t, range, false) }));
  }
  svg.appendChild(xl);
  svg.appendChild(hovers);
}

/** drawDonut renders a ring of segments [{value, cls, label}] with a centre caption. */
export function drawDonut(segments, caption, sub) {
  const size = 120;
  const r = 48;
  const c = 2 * Math.PI * r;
  const total = segments.reduce((a, x) => a + (x.value || 0), 0);
  const svg = s('svg', { class: 'donut', viewBox: `0 0 ${size} ${size}`, width: size, height: size, role: 'img', 'aria-label': caption + ' ' + (sub || '') });
  svg.appendChild(s('circle', { class: 'donut-track', cx: size / 2, cy: size / 2, r, fill: 'none', 'stroke-width': 12 }));
  let off = 0;
  if (total > 0) {
    for (const seg of segments) {
      if (!seg.value) continue;
      const len = (seg.value / total) * c;
      svg.appendChild(s('circle', {
        class: 'donut-seg ' + seg.cls, cx: size / 2, cy: size / 2, r, fill: 'none', 'stroke-width': 12,
        'stroke-dasharray': `${Math.max(0, len - (segments.filter((x) => x.value).length > 1 ? 2 : 0))} ${c}`,
        'stroke-dashoffset': -off, transform: `rotate(-90 ${size / 2} ${size / 2})`,
      }, s('title', { text: `${seg.label}: ${seg.value}` })));
      off += len;
    }
  }
  svg.appendChild(s('text', { x: size / 2, y: size / 2 + 2, 'text-anchor': 'middle', class: 'donut-num', text: caption }));
  if (sub) svg.appendChild(s('text', { x: size / 2, y: size / 2 + 20, 'text-anchor': 'middle', class: 'donut-sub', text: sub }));
  return svg;
}
