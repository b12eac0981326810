// hush console: a client of hush's public API. It keeps the API key in this tab's
// sessionStorage only, sends it as a bearer token with `X-Hush-Client: console`, and offers
// only what the key's scopes allow. Participant numbers typed here are sent to the API and
// never stored, logged or put in the address bar.
'use strict';

(() => {
  const KEY_SLOT = 'hush.console.key';
  const S = { key: null, who: null, pools: null, sandbox: null };

  // ---- small DOM helpers: text is always set as text, never parsed as HTML ----------------

  const SVG_NS = 'http://www.w3.org/2000/svg';
  const PROPS = new Set(['value', 'checked', 'disabled', 'selected', 'multiple']);

  function h(tag, attrs, ...kids) {
    const svg = tag.startsWith('svg:');
    const el = svg ? document.createElementNS(SVG_NS, tag.slice(4)) : document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
      else if (k === 'text') el.textContent = v;
      else if (PROPS.has(k)) el[k] = v;
      else el.setAttribute(k, v === true ? '' : String(v));
    }
    for (const kid of kids.flat(Infinity)) {
      if (kid === null || kid === undefined || kid === false) continue;
      el.append(kid instanceof Node ? kid : String(kid));
    }
    return el;
  }

  const $ = (sel, root = document) => root.querySelector(sel);

  /// `el.append` that leaves out absent parts (the DOM's own would print them as "null").
  function append(el, ...kids) {
    for (const kid of kids.flat(Infinity)) {
      if (kid !== null && kid !== undefined && kid !== false) el.append(kid);
    }
  }

  /// `el.replaceChildren`, leaving out absent parts as [`append`] does.
  function fill(el, ...kids) {
    el.replaceChildren();
    append(el, ...kids);
  }
  let uid = 0;
  const nextId = (p) => `${p}-${++uid}`;

  /// A labelled form field; `input` is an element, its id is set here.
  function field(label, input, hint) {
    if (!input.id) input.id = nextId('f');
    if (hint) {
      input.setAttribute('aria-describedby', `${input.id}-hint`);
    }
    return h('div', { class: 'field' },
      h('label', { for: input.id }, label),
      input,
      hint ? h('span', { class: 'hint', id: `${input.id}-hint` }, hint) : null);
  }

  function select(name, options, value) {
    return h('select', { name },
      options.map(([v, text]) => h('option', { value: v, selected: v === value }, text)));
  }

  function say(message) {
    const box = $('#status');
    fill(box, h('div', {}, message));
    clearTimeout(say.timer);
    say.timer = setTimeout(() => fill(box), 5000);
  }

  function when(iso) {
    if (!iso) return '—';
    return iso.replace('T', ' ').replace(/(\.\d+)?Z$/, ' UTC');
  }

  function masked(number) {
    if (!number) return '(erased)';
    return number.length > 6 ? number.slice(0, 5) + '•'.repeat(number.length - 7) + number.slice(-2) : '•••';
  }

  // ---- the API ----------------------------------------------------------------------------

  class Problem extends Error {
    constructor(status, body) {
      super((body && (body.detail || body.title)) || (status ? `HTTP ${status}` : 'hush could not be reached'));
      this.status = status;
      this.code = body && body.code;
      this.body = body;
    }
  }

  async function api(method, path, body) {
    const headers = {
      Authorization: `Bearer ${S.key}`,
      'X-Hush-Client': 'console',
      Accept: 'application/json',
    };
    const init = { method, headers, cache: 'no-store', credentials: 'omit', redirect: 'error' };
    if (body !== undefined) {
      headers['Content-Type'] = 'application/json';
      init.body = JSON.stringify(body);
    }
    let r;
    try {
      r = await fetch(path, init);
    } catch (_) {
      throw new Problem(0, null);
    }
    const text = r.status === 204 ? '' : await r.text();
    let data = null;
    try { data = text ? JSON.parse(text) : null; } catch (_) { data = null; }
    if (!r.ok) {
      if (r.status === 401 && S.who) signOut('hush no longer accepts this key; sign in again.');
      throw new Problem(r.status, data);
    }
    return data;
  }

  /// An endpoint this hush may not have (a newer feature, or one turned off): `null` when it
  /// answers a plain 404, the data otherwise.
  async function optional(path) {
    try {
      return await api('GET', path);
    } catch (e) {
      if (e.status === 404 && !/_not_found$/.test(e.code || '')) return null;
      throw e;
    }
  }

  const enc = encodeURIComponent;

  function can(scope) {
    const scopes = (S.who && S.who.scopes) || [];
    return scopes.includes('admin') || scopes.includes(scope);
  }

  /// A problem+json answer as people read it, with its stable code.
  function problemBox(e) {
    return h('div', { class: 'problem', role: 'alert' },
      e.message, e.code ? h('span', {}, ' (', h('code', {}, e.code), ')') : null);
  }

  function unavailable(what) {
    return h('p', { class: 'unavailable' }, `${what} is not available on this hush.`);
  }

  /// Runs `work`, showing any problem in `slot` (emptied first).
  async function guarded(slot, work) {
    fill(slot);
    try {
      return await work();
    } catch (e) {
      if (!(e instanceof Problem)) throw e;
      fill(slot, problemBox(e));
      return undefined;
    }
  }

  // ---- sign in, navigation ----------------------------------------------------------------

  const PAGES = [
    { id: 'pools', title: 'Pools', scope: 'pools', render: pagePools },
    { id: 'numbers', title: 'Numbers', scope: 'pools', render: pageNumbers },
    { id: 'capacity', title: 'Capacity', scope: 'pools', render: pageCapacity },
    { id: 'sessions', title: 'Sessions', scope: 'sessions', render: pageSessions },
    { id: 'events', title: 'Events', scope: 'pools', render: pageEvents },
    { id: 'audit', title: 'Audit log', scope: 'admin', render: pageAudit },
    { id: 'sandbox', title: 'Sandbox', scope: null, render: pageSandbox },
  ];

  function offered(page) {
    if (page.id === 'sandbox') return !!S.sandbox;
    return can(page.scope);
  }

  async function signIn(key) {
    S.key = key;
    let who;
    try {
      who = await api('GET', '/v1/whoami');
    } catch (e) {
      S.key = null;
      throw e;
    }
    S.who = who;
    sessionStorage.setItem(KEY_SLOT, key);
    S.pools = null;
    S.sandbox = await optional('/v1/sandbox').catch(() => null);
    $('#signin').hidden = true;
    $('#view').hidden = false;
    $('#who').hidden = false;
    $('#who-name').textContent = `${who.name} · ${who.scopes.join(', ')}`;
    const nav = $('#nav');
    fill(nav, ...PAGES.filter(offered).map((p) =>
      h('a', { href: `#/${p.id}`, 'data-page': p.id }, p.title)));
    nav.hidden = false;
    route();
  }

  function signOut(message) {
    sessionStorage.removeItem(KEY_SLOT);
    Object.assign(S, { key: null, who: null, pools: null, sandbox: null });
    fill($('#view'));
    $('#view').hidden = true;
    $('#nav').hidden = true;
    $('#who').hidden = true;
    $('#signin').hidden = false;
    $('#signin-error').textContent = message || '';
    $('#key').value = '';
    $('#key').focus();
  }

  async function pools(fresh) {
    if (!can('pools')) return (S.who.pools || []).map((name) => ({ name }));
    if (!S.pools || fresh) S.pools = (await api('GET', '/v1/pools')).pools;
    return S.pools;
  }

  /// The page and its argument from the address: `#/numbers/rides` → ['numbers', 'rides'].
  function place() {
    const [, page, ...rest] = location.hash.split('/');
    return [page || '', rest.map(decodeURIComponent).join('/')];
  }

  let rendering = 0;
  async function route() {
    if (!S.who) return;
    let [id, arg] = place();
    const pages = PAGES.filter(offered);
    let page = PAGES.find((p) => p.id === id);
    if (!page) page = pages[0];
    for (const a of $('#nav').querySelectorAll('a')) {
      if (a.dataset.page === page.id) a.setAttribute('aria-current', 'page');
      else a.removeAttribute('aria-current');
    }
    const view = $('#view');
    const turn = ++rendering;
    const body = h('div', { class: 'page', 'data-page': page.id });
    if (!offered(page)) {
      body.append(h('h1', {}, page.title),
        h('p', { class: 'unavailable' },
          page.scope
            ? `This key (scopes: ${S.who.scopes.join(', ')}) cannot use this page; it needs the ${page.scope} scope.`
            : 'The sandbox is off on this hush (start it with `hush dev`, or set HUSH_SANDBOX=true).'));
    } else {
      try {
        await page.render(body, arg);
      } catch (e) {
        if (!(e instanceof Problem)) throw e;
        body.append(problemBox(e));
      }
    }
    if (turn !== rendering) return;
    fill(view, body);
    document.title = `${page.title} · hush console`;
  }

  /// Moves to `page`; when that is the page shown, renders it again and returns the promise
  /// of that rendering.
  function go(page, arg) {
    const target = `#/${page}${arg ? '/' + enc(arg) : ''}`;
    if (location.hash === target) return route();
    location.hash = target;
    return undefined;
  }

  /// A pool chooser that moves to `page` for the chosen pool.
  async function poolChooser(page, current, label = 'Pool') {
    const list = await pools();
    const choice = h('select', { name: 'pool', onchange: () => go(page, choice.value) },
      h('option', { value: '' }, list.length ? 'Choose a pool…' : 'No pools yet'),
      list.map((p) => h('option', { value: p.name, selected: p.name === current }, p.name)));
    const f = field(label, choice);
    f.classList.add('chooser');
    return f;
  }

  // ---- Pools ------------------------------------------------------------------------------

  async function pagePools(root, name) {
    if (name) return pagePool(root, name);
    const list = await pools(true);
    const err = h('div');
    const nameIn = h('input', { type: 'text', name: 'name', required: true, pattern: '[a-z0-9][a-z0-9_-]{0,62}', autocomplete: 'off' });
    const ttl = h('input', { type: 'number', name: 'default_ttl_secs', min: 60, placeholder: '3600' });
    const cool = h('input', { type: 'number', name: 'cooloff_secs', min: 0, placeholder: '3600' });
    const create = h('form', {
      class: 'card', 'aria-labelledby': 'new-pool',
      onsubmit: async (ev) => {
        ev.preventDefault();
        const n = nameIn.value.trim();
        await guarded(err, async () => {
          const exists = await api('GET', `/v1/pools/${enc(n)}`).then(() => true, (e) => {
            if (e.code === 'pool_not_found') return false;
            throw e;
          });
          if (exists) throw new Problem(409, { detail: `a pool named ${n} exists already`, code: 'pool_exists' });
          const body = {};
          if (ttl.value) body.default_ttl_secs = Number(ttl.value);
          if (cool.value) body.cooloff_secs = Number(cool.value);
          await api('PUT', `/v1/pools/${enc(n)}`, body);
          say(`Pool ${n} created.`);
          S.pools = null;
          go('pools', n);
        });
      },
    },
    h('h2', { id: 'new-pool' }, 'Create a pool'),
    h('div', { class: 'row' },
      field('Name', nameIn, 'lower-case letters, digits, - and _'),
      field('Session TTL (s)', ttl, 'default 3600'),
      field('Cool-off (s)', cool, 'default 3600'),
      h('div', { class: 'field btn' }, h('button', { type: 'submit', class: 'primary' }, 'Create pool'))),
    err);

    const table = h('table', { class: 'stack' },
      h('thead', {}, h('tr', {},
        h('th', {}, 'Pool'), h('th', { class: 'num' }, 'Numbers'), h('th', { class: 'num' }, 'Draining'),
        h('th', { class: 'num' }, 'Open sessions'), h('th', { class: 'num' }, 'TTL'),
        h('th', { class: 'num' }, 'Cool-off'), h('th', {}, 'Callbacks'))),
      h('tbody', {}, list.map((p) => h('tr', {},
        h('td', { 'data-label': 'Pool' }, h('a', { href: `#/pools/${enc(p.name)}` }, p.name)),
        h('td', { class: 'num', 'data-label': 'Numbers' }, `${p.numbers.active} of ${p.numbers.total} active`),
        h('td', { class: 'num', 'data-label': 'Draining' }, p.numbers.draining),
        h('td', { class: 'num', 'data-label': 'Open sessions' }, p.open_sessions),
        h('td', { class: 'num', 'data-label': 'TTL' }, duration(p.default_ttl_secs)),
        h('td', { class: 'num', 'data-label': 'Cool-off' }, duration(p.cooloff_secs)),
        h('td', { 'data-label': 'Callbacks' }, p.callback_url ? 'on' : h('span', { class: 'muted' }, 'off'))))));
    append(root,
      h('div', { class: 'head' }, h('h1', {}, 'Pools')),
      h('section', { class: 'card' },
        list.length ? h('div', { class: 'table-wrap' }, table)
          : h('p', { class: 'muted' }, 'No pools yet: create one below.')),
      create);
  }

  function duration(secs) {
    if (secs === null || secs === undefined) return '—';
    if (secs === 0) return '0';
    if (secs % 86400 === 0) return `${secs / 86400} d`;
    if (secs % 3600 === 0) return `${secs / 3600} h`;
    if (secs % 60 === 0) return `${secs / 60} min`;
    return `${secs} s`;
  }

  /// The policy's settings, in groups: [key, label, kind, hint]; a kind that is a list holds
  /// the choices as [value, label].
  const POLICY_GROUPS = [
    ['Sessions', [
      ['default_ttl_secs', 'Session TTL (s)', 'int'],
      ['cooloff_secs', 'Cool-off (s)', 'int', 'after a session ends, its routes stay reserved this long'],
      ['idle_ttl_secs', 'Idle TTL (s)', 'int?', 'blank: sessions never end for being idle'],
      ['geo_match', 'Geo-match', [['area_code', 'same area code, then country'], ['country', 'same country'], ['any', 'any number']]],
      ['number_selection', 'Number selection', [['prefer_sticky', "reuse the pair's last number"], ['avoid_sticky', "avoid the pair's last number"]]],
      ['low_threshold_pct', 'pool.low threshold (%)', 'int', 'share of numbers in use that sends pool.low'],
      ['shards', 'Shards', 'int', 'can only grow'],
      ['provider', 'Provider', 'text?', 'blank: any configured provider'],
    ]],
    ['Calls and texts', [
      ['max_call_secs', 'Call time limit (s)', 'int?', 'blank: no limit'],
      ['record_channels', 'Recording channels', [['dual', 'two channels'], ['mono', 'one channel']]],
      ['record', 'Record calls', 'bool'],
      ['out_of_session_message', 'Out-of-session message', 'long', 'what a caller without a session hears'],
    ]],
    ['Callbacks and intercept', [
      ['callback_url', 'Callback URL', 'url?', 'blank: no events are sent'],
      ['callback_include_numbers', 'Callbacks include participant numbers', 'bool'],
      ['intercept_url', 'Intercept URL', 'url?', 'blank: no intercept'],
      ['intercept_timeout_ms', 'Intercept timeout (ms)', 'int'],
      ['intercept_fallback', 'When the intercept does not answer', [['allow', 'connect (allow)'], ['block', 'announce the message (block)']]],
    ]],
    ['PIN sessions', [
      ['pin', 'PIN sessions', [['off', 'off: no number free, no session'], ['fallback', 'when no number is free'], ['always', 'for every session']]],
      ['pin_length', 'PIN length (digits)', 'int', '4 to 8'],
      ['pin_prompt_timeout_secs', 'PIN prompt wait (s)', 'int', "silence this long connects a caller's own route"],
      ['pin_retry', 'Prompts after a wrong PIN', 'int', '0 to 5, then the out-of-session message'],
      ['pin_failure_limit', 'Wrong PINs per caller a minute', 'int', 'more are refused, on each number'],
      ['pin_caller_check', 'A PIN works only from its participant\'s phone', 'bool'],
      ['pin_prompt', 'PIN prompt', 'long', 'what a caller hears'],
      ['pin_text_prompt', 'PIN reply to texts', 'long', 'the reply to a text that does not start with a right PIN'],
    ]],
  ];
  const POLICY = POLICY_GROUPS.flatMap(([, fields]) => fields);

  /// The policy form: only fields whose value changed are sent, as a merge patch.
  function policyForm(pool, onSaved) {
    const err = h('div');
    const inputs = {};
    const fieldOf = ([key, label, kind, hint]) => {
      const v = pool[key];
      let input;
      if (Array.isArray(kind)) input = select(key, kind, v);
      else if (kind === 'bool') {
        input = h('input', { type: 'checkbox', name: key, checked: !!v });
        inputs[key] = input;
        return h('div', { class: 'field' }, h('label', { class: 'check' }, input, label));
      } else if (kind === 'long') input = h('textarea', { name: key, rows: 2, value: v || '' });
      else if (kind.startsWith('int')) input = h('input', { type: 'number', name: key, value: v === null ? '' : String(v) });
      else input = h('input', { type: kind.startsWith('url') ? 'url' : 'text', name: key, value: v || '' });
      inputs[key] = input;
      return field(label, input, hint);
    };
    const groups = POLICY_GROUPS.map(([legend, list]) =>
      h('fieldset', {}, h('legend', {}, legend), h('div', { class: 'grid' }, list.map(fieldOf))));
    const read = (key, kind) => {
      const input = inputs[key];
      if (kind === 'bool') return input.checked;
      const raw = input.value.trim();
      if (Array.isArray(kind)) return raw;
      if (kind.startsWith('int')) return raw === '' ? null : Number(raw);
      if (kind.endsWith('?')) return raw === '' ? null : raw;
      return input.value;
    };
    return h('form', {
      class: 'card', 'aria-labelledby': 'policy-title',
      onsubmit: async (ev) => {
        ev.preventDefault();
        const patch = {};
        for (const [key, , kind] of POLICY) {
          const now = read(key, kind);
          const was = pool[key] === undefined ? null : pool[key];
          if (now !== was) patch[key] = now;
        }
        if (!Object.keys(patch).length) {
          fill(err, h('p', { class: 'muted' }, 'Nothing changed.'));
          return;
        }
        const saved = await guarded(err, () => api('PATCH', `/v1/pools/${enc(pool.name)}`, patch));
        if (saved) {
          S.pools = null;
          // The page is drawn again with what was saved before it says so: a field edited
          // after the message is not wiped by the redraw.
          await onSaved(saved);
          say(`Saved ${Object.keys(patch).join(', ')}.`);
        }
      },
    },
    h('h2', { id: 'policy-title' }, 'Policy'),
    h('p', { class: 'muted small' }, 'Only the settings you change are sent; the others are kept.'),
    groups,
    h('button', { type: 'submit', class: 'primary' }, 'Save changes'),
    err);
  }

  async function pagePool(root, name) {
    const pool = await api('GET', `/v1/pools/${enc(name)}`);
    const [stats, capacity] = await Promise.all([
      optional(`/v1/pools/${enc(name)}/stats?minutes=1440`).catch(() => null),
      optional(`/v1/pools/${enc(name)}/capacity`).catch(() => null),
    ]);
    const created = stats ? stats.minutes.reduce((n, m) => n + m.created, 0) : null;
    const exhausted = stats ? stats.minutes.reduce((n, m) => n + m.exhausted, 0) : null;
    let state = h('span', { class: 'badge ok' }, 'ok');
    if (pool.numbers.active === 0) state = h('span', { class: 'badge bad' }, 'no active numbers');
    else if (exhausted) state = h('span', { class: 'badge bad' }, `exhausted ${exhausted}× in 24 h`);
    else if (capacity && capacity.warning) state = h('span', { class: 'badge warn' }, 'pool.low');
    const busyPct = capacity && capacity.numbers_active
      ? Math.round((100 * capacity.peak_holdings) / capacity.numbers_active) : null;

    const delErr = h('div');
    const confirmBox = h('div', { class: 'notice', hidden: true },
      h('p', {}, `Delete pool ${name} with its numbers and settings? This cannot be undone.`),
      h('div', { class: 'actions' },
        h('button', {
          type: 'button', class: 'danger primary',
          onclick: async () => {
            const done = await guarded(delErr, () => api('DELETE', `/v1/pools/${enc(name)}`).then(() => true));
            confirmBox.hidden = true;
            if (done) {
              say(`Pool ${name} deleted.`);
              S.pools = null;
              go('pools');
            }
          },
        }, 'Delete for good'),
        h('button', { type: 'button', onclick: () => { confirmBox.hidden = true; } }, 'Keep it')));

    append(root,
      h('p', { class: 'small' }, h('a', { href: '#/pools' }, '← All pools')),
      h('div', { class: 'head' }, h('h1', {}, `Pool ${name} `, state),
        h('div', { class: 'actions' },
          h('a', { href: `#/numbers/${enc(name)}` }, 'Numbers'), ' · ',
          h('a', { href: `#/capacity/${enc(name)}` }, 'Capacity'), ' · ',
          h('a', { href: `#/events/${enc(name)}` }, 'Events'))),
      h('div', { class: 'stats' },
        stat(pool.numbers.total, 'numbers'),
        stat(pool.numbers.active, 'active'),
        stat(pool.numbers.draining, 'draining'),
        stat(pool.open_sessions, 'open sessions'),
        busyPct === null ? null : stat(`${busyPct}%`, 'of numbers, peak for one person'),
        created === null ? null : stat(created, 'created, 24 h'),
        exhausted === null ? null : stat(exhausted, 'exhausted, 24 h')),
      capacity && capacity.warning ? h('p', { class: 'notice', role: 'note' }, capacity.warning) : null,
      h('section', { class: 'card', 'aria-labelledby': 'chart-title' },
        h('h2', { id: 'chart-title' }, 'Sessions created and exhausted answers, last 24 h'),
        stats ? [chart(stats.minutes), h('div', { class: 'legend' },
          h('span', {}, h('i', { class: 'created' }), 'created'),
          h('span', {}, h('i', { class: 'exhausted' }), 'exhausted (no number free)'))]
          : unavailable('Per-minute history')),
      policyForm(pool, () => go('pools', name)),
      h('section', { class: 'card' },
        h('h2', {}, 'Delete this pool'),
        h('p', { class: 'muted small' }, 'Refused while any of its numbers holds a session, open or cooling off.'),
        h('button', { type: 'button', class: 'danger', onclick: () => { confirmBox.hidden = false; } }, 'Delete pool…'),
        confirmBox, delErr));
  }

  function stat(value, label) {
    return h('div', { class: 'stat' }, h('b', {}, value), h('span', {}, label));
  }

  /// Bars of sessions created and exhausted answers, in half-hour steps, drawn as SVG.
  function chart(minutes) {
    const STEPS = 48;
    const per = Math.max(1, Math.ceil(minutes.length / STEPS));
    const steps = [];
    for (let i = 0; i < minutes.length; i += per) {
      const slice = minutes.slice(i, i + per);
      steps.push({
        at: slice[0].at,
        created: slice.reduce((n, m) => n + m.created, 0),
        exhausted: slice.reduce((n, m) => n + m.exhausted, 0),
      });
    }
    const W = 760, H = 200, L = 40, R = 8, T = 10, B = 26;
    const max = Math.max(1, ...steps.map((s) => Math.max(s.created, s.exhausted)));
    const top = niceCeil(max);
    const bw = (W - L - R) / Math.max(steps.length, 1);
    const y = (v) => T + (H - T - B) * (1 - v / top);
    const total = steps.reduce((n, s) => n + s.created, 0);
    const lost = steps.reduce((n, s) => n + s.exhausted, 0);
    const svg = h('svg:svg', {
      class: 'chart', viewBox: `0 0 ${W} ${H}`, role: 'img',
      'aria-label': `Last 24 hours: ${total} sessions created, ${lost} exhausted answers.`,
    });
    for (const v of [0, top / 2, top]) {
      svg.append(h('svg:line', { class: v ? 'grid' : 'axis', x1: L, x2: W - R, y1: y(v), y2: y(v) }),
        h('svg:text', { x: L - 6, y: y(v) + 4, 'text-anchor': 'end' }, String(v)));
    }
    steps.forEach((s, i) => {
      const x = L + i * bw;
      const w = Math.max(1, bw * 0.42);
      const c = h('svg:rect', { class: 'created', x: x + bw * 0.08, y: y(s.created), width: w, height: y(0) - y(s.created) },
        h('svg:title', {}, `${when(s.at)}: ${s.created} created`));
      const e = h('svg:rect', { class: 'exhausted', x: x + bw * 0.08 + w, y: y(s.exhausted), width: w, height: y(0) - y(s.exhausted) },
        h('svg:title', {}, `${when(s.at)}: ${s.exhausted} exhausted`));
      svg.append(c, e);
      if (i % 6 === 0) {
        svg.append(h('svg:text', { x: x + 2, y: H - 8 }, s.at.slice(11, 16)));
      }
    });
    svg.append(h('svg:text', { x: W - R, y: H - 8, 'text-anchor': 'end' }, 'UTC'));
    return svg;
  }

  function niceCeil(v) {
    const p = 10 ** Math.floor(Math.log10(v));
    for (const m of [1, 2, 5, 10]) if (m * p >= v) return Math.max(2, m * p);
    return v;
  }

  // ---- Numbers ----------------------------------------------------------------------------

  const PAGE_SIZE = 100;
  const SKIP_REASONS = {
    invalid_number: 'not a valid phone number',
    invalid_capabilities: 'capabilities must be voice and/or sms',
    duplicate: 'already in this pool (or twice in the file)',
    in_another_pool: 'belongs to another pool',
  };

  async function pageNumbers(root, name) {
    append(root, h('h1', {}, 'Numbers'), await poolChooser('numbers', name));
    if (!name) return;
    const listSlot = h('section', { class: 'card', 'aria-labelledby': 'numbers-title' });
    const cursors = [null];
    const show = async (page) => {
      const cursor = cursors[page];
      const q = `limit=${PAGE_SIZE}${cursor ? `&cursor=${enc(cursor)}` : ''}`;
      const data = await api('GET', `/v1/pools/${enc(name)}/numbers?${q}`);
      cursors[page + 1] = data.next_cursor || undefined;
      fill(listSlot,
        h('h2', { id: 'numbers-title' }, `Numbers of ${name}`),
        data.numbers.length ? h('div', { class: 'table-wrap' }, numbersTable(name, data.numbers, () => show(page)))
          : h('p', { class: 'muted' }, 'This pool has no numbers yet: import some below.'),
        h('div', { class: 'pager' },
          h('button', { type: 'button', disabled: page === 0, onclick: () => show(page - 1) }, '← Previous'),
          h('span', { class: 'muted small' }, `Page ${page + 1}`),
          h('button', { type: 'button', disabled: !data.next_cursor, onclick: () => show(page + 1) }, 'Next →')));
    };
    await show(0);
    append(root, listSlot, importForm(name, () => show(0)));
  }

  function numbersTable(pool, numbers, refresh) {
    return h('table', { class: 'stack' },
      h('thead', {}, h('tr', {}, h('th', {}, 'Number'), h('th', {}, 'Capabilities'), h('th', {}, 'State'),
        h('th', { class: 'num' }, 'Open sessions'), h('th', { class: 'num' }, 'Cooling off'), h('th', {}, 'Actions'))),
      h('tbody', {}, numbers.map((n) => {
        const err = h('div');
        const path = `/v1/pools/${enc(pool)}/numbers/${enc(n.number)}`;
        const setState = (state) => async () => {
          if (await guarded(err, () => api('PATCH', path, { state }))) {
            say(`${n.number} is ${state === 'draining' ? 'draining' : 'active again'}.`);
            refresh();
          }
        };
        return h('tr', { 'data-number': n.number },
          h('td', { class: 'mono', 'data-label': 'Number' }, n.number),
          h('td', { 'data-label': 'Capabilities' }, n.capabilities.join(', ') || '—'),
          h('td', { 'data-label': 'State' }, h('span', { class: `badge ${n.state === 'active' ? 'ok' : 'warn'}` }, n.state)),
          h('td', { class: 'num', 'data-label': 'Open sessions' }, n.open_sessions),
          h('td', { class: 'num', 'data-label': 'Cooling off' },
            n.holding_sessions === undefined ? '—' : Math.max(0, n.holding_sessions - n.open_sessions)),
          h('td', { 'data-label': 'Actions' },
            h('div', { class: 'actions' },
              n.state === 'active'
                ? h('button', { type: 'button', class: 'small', onclick: setState('draining'), 'aria-label': `Drain ${n.number}` }, 'Drain')
                : h('button', { type: 'button', class: 'small', onclick: setState('active'), 'aria-label': `Reactivate ${n.number}` }, 'Reactivate'),
              h('button', {
                type: 'button', class: 'small danger', 'aria-label': `Remove ${n.number}`,
                onclick: async () => {
                  if ((await guarded(err, () => api('DELETE', path).then(() => true)))) {
                    say(`${n.number} removed.`);
                    refresh();
                  }
                },
              }, 'Remove')),
            err));
      })));
  }

  /// The rows of a CSV in the CLI's format (`hush numbers import`): `number,capabilities`,
  /// capabilities separated by `;`, `|`, spaces or commas; a header row, blank lines and
  /// `#` comments are skipped.
  function parseCsv(text) {
    const rows = [];
    text.split(/\r?\n/).forEach((raw, i) => {
      const line = raw.trim();
      if (!line || line.startsWith('#')) return;
      const comma = line.indexOf(',');
      const first = comma < 0 ? line : line.slice(0, comma);
      const rest = comma < 0 ? '' : line.slice(comma + 1);
      const number = first.trim().replace(/^"+|"+$/g, '');
      if (number.toLowerCase() === 'number') return;
      const caps = rest.trim().replace(/^"+|"+$/g, '').split(/[;| ,]/)
        .map((c) => c.trim().toLowerCase()).filter(Boolean);
      let error = null;
      if (!/^\+[1-9]\d{4,14}$/.test(number)) error = 'not an E.164 number (a + and 5 to 15 digits)';
      else if (caps.some((c) => c !== 'voice' && c !== 'sms')) error = SKIP_REASONS.invalid_capabilities;
      rows.push({ line: i + 1, number, caps: caps.length ? caps : null, error });
    });
    return rows;
  }

  function importForm(pool, refresh) {
    const file = h('input', { type: 'file', name: 'csv', accept: '.csv,text/csv,text/plain' });
    const text = h('textarea', { name: 'csv_text', rows: 7, spellcheck: false, placeholder: 'number,capabilities\n+12015550100,voice;sms' });
    const preview = h('div', { 'aria-live': 'polite' });
    const err = h('div');
    let rows = [];
    file.addEventListener('change', async () => {
      if (file.files[0]) text.value = await file.files[0].text();
    });
    const importBtn = h('button', {
      type: 'button', class: 'primary', disabled: true,
      onclick: async () => {
        const good = rows.filter((r) => !r.error);
        const report = { added: [], skipped: [] };
        const done = await guarded(err, async () => {
          for (let i = 0; i < good.length; i += 1000) {
            const chunk = good.slice(i, i + 1000).map((r) => (r.caps ? { number: r.number, capabilities: r.caps } : { number: r.number }));
            const r = await api('POST', `/v1/pools/${enc(pool)}/numbers`, { numbers: chunk });
            report.added.push(...r.added);
            report.skipped.push(...r.skipped);
          }
          return true;
        });
        if (!done) return;
        const skippedBy = new Map(report.skipped.map((s) => [s.number, s.code]));
        for (const r of good) if (skippedBy.has(r.number)) r.error = SKIP_REASONS[skippedBy.get(r.number)] || skippedBy.get(r.number);
        const left = rows.filter((r) => r.error).length;
        fill(preview,
          h('p', { class: left ? 'notice' : '', role: 'status' },
            `Added ${report.added.length} number${report.added.length === 1 ? '' : 's'}; ${left} row${left === 1 ? '' : 's'} left out.`),
          previewTable(rows.filter((r) => r.error)));
        importBtn.disabled = true;
        refresh();
      },
    }, 'Import');
    const previewBtn = h('button', {
      type: 'button',
      onclick: () => {
        rows = parseCsv(text.value);
        const bad = rows.filter((r) => r.error).length;
        importBtn.disabled = rows.length === bad;
        importBtn.textContent = `Import ${rows.length - bad} number${rows.length - bad === 1 ? '' : 's'}`;
        fill(preview,
          h('p', {}, `${rows.length} row${rows.length === 1 ? '' : 's'}: ${rows.length - bad} ready, ${bad} with errors (left out).`),
          previewTable(rows));
      },
    }, 'Preview');
    return h('section', { class: 'card', 'aria-labelledby': 'import-title' },
      h('h2', { id: 'import-title' }, 'Import numbers from CSV'),
      h('p', { class: 'muted small' }, 'The format of ', h('code', {}, 'hush numbers import'),
        ': one number per line in E.164, then optional capabilities (voice, sms) separated by ; or spaces. A header row is skipped.'),
      h('div', { class: 'row' }, field('CSV file', file), ),
      field('…or paste the rows', text),
      h('div', { class: 'actions' }, previewBtn, importBtn),
      err, preview);
  }

  function previewTable(rows) {
    if (!rows.length) return null;
    return h('div', { class: 'table-wrap' }, h('table', { class: 'stack preview' },
      h('thead', {}, h('tr', {}, h('th', { class: 'num' }, 'Line'), h('th', {}, 'Number'), h('th', {}, 'Capabilities'), h('th', {}, 'Check'))),
      h('tbody', {}, rows.slice(0, 500).map((r) => h('tr', { class: r.error ? 'bad' : '' },
        h('td', { class: 'num', 'data-label': 'Line' }, r.line),
        h('td', { class: 'mono', 'data-label': 'Number' }, r.number || '(empty)'),
        h('td', { 'data-label': 'Capabilities' }, r.caps ? r.caps.join(', ') : 'voice, sms'),
        h('td', { 'data-label': 'Check' }, r.error ? h('span', { class: 'error row-error' }, r.error) : h('span', { class: 'badge ok' }, 'ok')))))),
      rows.length > 500 ? h('p', { class: 'muted small' }, `…and ${rows.length - 500} more rows.`) : null);
  }

  // ---- Capacity ---------------------------------------------------------------------------

  async function pageCapacity(root, name) {
    append(root, h('h1', {}, 'Capacity'), await poolChooser('capacity', name));
    if (!name) return;
    const c = await optional(`/v1/pools/${enc(name)}/capacity`);
    if (!c) {
      append(root, unavailable('Capacity planning'));
      return;
    }
    append(root, h('section', { class: 'card', 'aria-labelledby': 'cap-title' },
      h('h2', { id: 'cap-title' }, `Capacity of ${name}`),
      c.warning ? h('p', { class: 'notice', role: 'note' }, c.warning)
        : h('p', {}, h('span', { class: 'badge ok' }, 'enough numbers'), ' for the busiest participant seen.'),
      h('dl', { class: 'facts' },
        h('dt', {}, 'Active numbers'), h('dd', {}, `${c.numbers_active} (of ${c.numbers_total})`),
        h('dt', {}, 'Peak holdings'), h('dd', {}, `${c.peak_holdings}${c.peak_at ? ` at ${when(c.peak_at)}` : ''}`),
        h('dt', {}, 'Cool-off'), h('dd', {}, duration(c.cooloff_secs)),
        h('dt', {}, 'Numbers needed'), h('dd', {}, c.numbers_needed),
        h('dt', {}, 'Headroom'), h('dd', {}, c.headroom)),
      h('p', { class: 'muted small' },
        'A pool needs about as many numbers as the busiest single participant holds at once (open or cooling off), not one per session.')));
  }

  // ---- Sessions ---------------------------------------------------------------------------

  async function pageSessions(root, id) {
    if (id) return pageSession(root, id);
    const results = h('div', { 'aria-live': 'polite' });
    const who = h('input', { type: 'tel', name: 'participant', autocomplete: 'off', spellcheck: false, placeholder: '+14155550123', required: true });
    const find = h('form', {
      class: 'card', 'aria-labelledby': 'find-title',
      onsubmit: async (ev) => {
        ev.preventDefault();
        const data = await guarded(results, () => api('GET', `/v1/sessions?participant=${enc(who.value.trim())}`));
        if (data) {
          fill(results, data.sessions.length
            ? sessionsTable(data.sessions)
            : h('p', { class: 'muted' }, 'No open session for this number.'));
        }
      },
    },
    h('h2', { id: 'find-title' }, "Find a participant's sessions"),
    h('div', { class: 'row' },
      field("Participant's number", who, 'E.164; it is not stored or logged'),
      h('div', { class: 'field btn' }, h('button', { type: 'submit', class: 'primary' }, 'Find'))),
    results);

    const list = await pools().catch(() => []);
    // A key without the pools scope cannot list pools: it names one.
    const poolIn = list.length
      ? h('select', { name: 'pool' },
        h('option', { value: '' }, 'Choose a pool…'),
        list.map((p) => h('option', { value: p.name }, p.name)))
      : h('input', { type: 'text', name: 'pool', autocomplete: 'off', placeholder: 'rides' });
    const open = h('div');
    const cursors = [null];
    const show = async (page) => {
      const c = cursors[page];
      const data = await guarded(open, () => api('GET',
        `/v1/sessions?pool=${enc(poolIn.value)}&limit=50${c ? `&cursor=${enc(c)}` : ''}`));
      if (!data) return;
      cursors[page + 1] = data.next_cursor || undefined;
      fill(open,
        data.sessions.length ? sessionsTable(data.sessions) : h('p', { class: 'muted' }, 'No open sessions on this page.'),
        h('div', { class: 'pager' },
          h('button', { type: 'button', disabled: page === 0, onclick: () => show(page - 1) }, '← Previous'),
          h('span', { class: 'muted small' }, `Page ${page + 1}`),
          h('button', { type: 'button', disabled: !data.next_cursor, onclick: () => show(page + 1) }, 'Next →')));
    };
    const byPool = h('form', {
      class: 'card', 'aria-labelledby': 'open-title',
      onsubmit: (ev) => {
        ev.preventDefault();
        cursors.length = 1;
        if (poolIn.value) show(0);
      },
    },
    h('h2', { id: 'open-title' }, "A pool's open sessions"),
    h('div', { class: 'row' }, field('Pool', poolIn),
      h('div', { class: 'field btn' }, h('button', { type: 'submit' }, 'List'))),
    open);
    append(root, h('h1', {}, 'Sessions'), find, byPool);
  }

  function statusBadge(status) {
    const kind = { open: 'ok', closed: '', delivered: 'ok', pending: 'warn', failed: 'bad' }[status];
    return h('span', { class: `badge ${kind || ''}` }, status);
  }

  function sessionsTable(list) {
    return h('div', { class: 'table-wrap' }, h('table', { class: 'stack sessions' },
      h('thead', {}, h('tr', {}, h('th', {}, 'Session'), h('th', {}, 'Pool'), h('th', {}, 'Proxy number'),
        h('th', {}, 'Labels'), h('th', {}, 'Status'), h('th', {}, 'Expires'))),
      h('tbody', {}, list.map((s) => h('tr', {},
        h('td', { class: 'mono', 'data-label': 'Session' }, h('a', { href: `#/sessions/${enc(s.id)}` }, s.id)),
        h('td', { 'data-label': 'Pool' }, s.pool),
        h('td', { class: 'mono', 'data-label': 'Proxy number' }, s.proxy_number),
        h('td', { 'data-label': 'Labels' }, s.participants.map((p) => p.label || '—').join(' ↔ ')),
        h('td', { 'data-label': 'Status' }, statusBadge(s.status)),
        h('td', { 'data-label': 'Expires' }, when(s.expires_at)))))));
  }

  async function pageSession(root, id) {
    const [s, inter] = await Promise.all([
      api('GET', `/v1/sessions/${enc(id)}`),
      api('GET', `/v1/sessions/${enc(id)}/interactions`),
    ]);
    const err = h('div');
    const reveal = h('button', { type: 'button', class: 'small', 'aria-pressed': 'false' }, 'Show numbers');
    const people = h('dd', {});
    // A PIN reaches the other participant as surely as a number does: hidden alike.
    const pins = s.pins || [];
    const pinOf = (p, i) => {
      const pin = pins.find((x) => p.number && x.participant === p.number) || pins[i];
      if (!pin) return null;
      return [' — PIN ', h('span', { class: 'mono pin' }, shown ? pin.pin : '•'.repeat(pin.pin.length))];
    };
    let shown = false;
    const paint = () => {
      fill(people, ...s.participants.map((p, i) => h('div', {},
        `${i + 1}. ${p.label || 'no label'} — `, h('span', { class: 'mono' }, shown ? (p.number || '(erased)') : masked(p.number)),
        pinOf(p, i))));
      const what = pins.length ? 'numbers and PINs' : 'numbers';
      reveal.textContent = shown ? `Hide ${what}` : `Show ${what}`;
      reveal.setAttribute('aria-pressed', String(shown));
    };
    reveal.addEventListener('click', () => { shown = !shown; paint(); });
    paint();
    const ttl = h('input', { type: 'number', name: 'ttl_secs', min: 1, value: '3600' });
    const open = s.status === 'open';
    append(root,
      h('p', { class: 'small' }, h('a', { href: '#/sessions' }, '← Sessions')),
      h('div', { class: 'head' }, h('h1', {}, 'Session ', h('span', { class: 'mono' }, s.id), ' ', statusBadge(s.status))),
      h('section', { class: 'card' },
        h('dl', { class: 'facts' },
          h('dt', {}, 'Pool'), h('dd', {}, s.pool),
          h('dt', {}, 'Proxy number'), h('dd', { class: 'mono' }, s.proxy_number),
          s.access ? [h('dt', {}, 'Access'), h('dd', { class: 'access' },
            s.access === 'pin' ? 'PIN, on a number shared with other sessions' : 'direct: routes of its own')] : null,
          h('dt', {}, 'Participants'), people,
          h('dt', {}, 'Mode'), h('dd', {}, s.mode),
          h('dt', {}, 'Created'), h('dd', {}, when(s.created_at)),
          h('dt', {}, open ? 'Expires' : 'Ended'), h('dd', {}, when(open ? s.expires_at : s.closed_at)),
          s.close_reason ? [h('dt', {}, 'Reason'), h('dd', {}, s.close_reason)] : null,
          Object.keys(s.metadata || {}).length ? [h('dt', {}, 'Metadata'), h('dd', { class: 'mono' }, JSON.stringify(s.metadata))] : null),
        h('p', {}, reveal)),
      open ? h('section', { class: 'card', 'aria-labelledby': 'change-title' },
        h('h2', { id: 'change-title' }, 'Change'),
        h('form', {
          class: 'row',
          onsubmit: async (ev) => {
            ev.preventDefault();
            if (await guarded(err, () => api('PATCH', `/v1/sessions/${enc(id)}`, { ttl_secs: Number(ttl.value) }))) {
              say('Session extended.');
              go('sessions', id);
            }
          },
        }, field('New time to live from now (s)', ttl),
        h('div', { class: 'field btn' }, h('button', { type: 'submit' }, 'Extend'))),
        h('button', {
          type: 'button', class: 'danger',
          onclick: async () => {
            if (await guarded(err, () => api('DELETE', `/v1/sessions/${enc(id)}`))) {
              say('Session closed.');
              go('sessions', id);
            }
          },
        }, 'Close session'),
        err) : null,
      h('section', { class: 'card', 'aria-labelledby': 'inter-title' },
        h('h2', { id: 'inter-title' }, 'Interactions'),
        inter.interactions.length ? h('div', { class: 'table-wrap' }, h('table', { class: 'stack' },
          h('thead', {}, h('tr', {}, h('th', {}, 'Started'), h('th', {}, 'Kind'), h('th', {}, 'From'),
            h('th', {}, 'Status'), h('th', { class: 'num' }, 'Duration'), h('th', {}, 'Provider'))),
          h('tbody', {}, inter.interactions.map((i) => h('tr', {},
            h('td', { 'data-label': 'Started' }, when(i.started_at)),
            h('td', { 'data-label': 'Kind' }, i.kind),
            h('td', { 'data-label': 'From' }, `participant ${i.from_participant + 1}`),
            h('td', { 'data-label': 'Status' }, i.status),
            h('td', { class: 'num', 'data-label': 'Duration' }, i.duration_secs === undefined ? '—' : `${i.duration_secs} s`),
            h('td', { 'data-label': 'Provider' }, i.provider))))))
          : h('p', { class: 'muted' }, 'No call or text yet.')));
  }

  // ---- Events -----------------------------------------------------------------------------

  async function pageEvents(root, name) {
    const status = select('status', [['', 'any'], ['pending', 'pending'], ['delivered', 'delivered'], ['failed', 'failed']], '');
    const limit = select('limit', [['50', '50'], ['100', '100'], ['500', '500']], '100');
    const list = h('div', { 'aria-live': 'polite' });
    const load = async () => {
      const q = [`limit=${limit.value}`];
      if (name) q.push(`pool=${enc(name)}`);
      if (status.value) q.push(`status=${status.value}`);
      const data = await guarded(list, () => api('GET', `/v1/events?${q.join('&')}`));
      if (data) fill(list, eventsTable(data.events, load));
    };
    const chooser = await poolChooser('events', name, 'Pool (all when none is chosen)');
    append(root, h('h1', {}, 'Events'),
      h('form', {
        class: 'card row', 'aria-label': 'Filters',
        onsubmit: (ev) => { ev.preventDefault(); load(); },
      }, chooser, field('Status', status), field('Show', limit),
      h('div', { class: 'field btn' }, h('button', { type: 'submit', class: 'primary' }, 'Apply'))),
      h('section', { class: 'card' }, list));
    await load();
    if (name) append(root, await deliverySettings(name));
  }

  function eventsTable(events, reload) {
    if (!events.length) return h('p', { class: 'muted' }, 'No events match.');
    return h('div', { class: 'table-wrap' }, h('table', { class: 'stack events' },
      h('thead', {}, h('tr', {}, h('th', {}, 'Created'), h('th', {}, 'Type'), h('th', {}, 'Pool'),
        h('th', {}, 'Status'), h('th', {}, 'Attempts'), h('th', {}, ''))),
      h('tbody', {}, events.map((e) => {
        const err = h('div');
        return h('tr', { 'data-event': e.id },
          h('td', { 'data-label': 'Created' }, when(e.created_at)),
          h('td', { 'data-label': 'Type' }, h('code', {}, e.type)),
          h('td', { 'data-label': 'Pool' }, e.pool),
          h('td', { 'data-label': 'Status' }, statusBadge(e.status), e.failure ? h('div', { class: 'small muted' }, e.failure) : null),
          h('td', { 'data-label': 'Attempts' }, e.attempts.length
            ? h('details', {}, h('summary', {}, `${e.attempts.length} attempt${e.attempts.length === 1 ? '' : 's'}`),
              h('ol', { class: 'small' }, e.attempts.map((a) =>
                h('li', {}, `${when(a.at)}: ${a.status ? `HTTP ${a.status}` : 'no answer'} in ${a.latency_ms} ms`))))
            : h('span', { class: 'muted' }, 'none yet')),
          h('td', { 'data-label': '' },
            h('button', {
              type: 'button', class: 'small', 'aria-label': `Redeliver ${e.type} ${e.id}`,
              onclick: async () => {
                if (await guarded(err, () => api('POST', `/v1/events/${enc(e.id)}/redeliver`))) {
                  say(`Event ${e.id} queued for delivery again.`);
                  reload();
                }
              },
            }, 'Redeliver'), err));
      }))));
  }

  async function deliverySettings(name) {
    const pool = await api('GET', `/v1/pools/${enc(name)}`);
    const secretSlot = h('div');
    const showSecret = h('button', {
      type: 'button',
      onclick: async () => {
        if (secretSlot.childElementCount && !secretSlot.querySelector('.problem')) {
          fill(secretSlot);
          showSecret.textContent = 'Show signing secret';
          return;
        }
        const data = await guarded(secretSlot, () => api('GET', `/v1/pools/${enc(name)}/callback-secret`));
        if (data) {
          fill(secretSlot, h('p', {}, h('code', { class: 'secret' }, data.secret)));
          showSecret.textContent = 'Hide signing secret';
        }
      },
    }, 'Show signing secret');
    return h('section', { class: 'card', 'aria-labelledby': 'delivery-title' },
      h('h2', { id: 'delivery-title' }, `Delivery settings of ${name}`),
      h('dl', { class: 'facts' },
        h('dt', {}, 'Callback URL'), h('dd', {}, pool.callback_url || 'none (no events are sent)'),
        h('dt', {}, 'Numbers in callbacks'), h('dd', {}, pool.callback_include_numbers ? 'included' : 'left out'),
        h('dt', {}, 'Intercept URL'), h('dd', {}, pool.intercept_url || 'none'),
        h('dt', {}, 'Intercept timeout'), h('dd', {}, `${pool.intercept_timeout_ms} ms`),
        h('dt', {}, 'Intercept fallback'), h('dd', {}, pool.intercept_fallback)),
      h('p', { class: 'small' }, h('a', { href: `#/pools/${enc(name)}` }, 'Change them in the pool policy')),
      can('admin') ? [h('h3', {}, 'Signing secret'),
        h('p', { class: 'muted small' }, 'Shown only on request; reading it is recorded in the audit log.'),
        showSecret, secretSlot] : null);
  }

  // ---- Audit log --------------------------------------------------------------------------

  async function pageAudit(root) {
    const probe = await optional('/v1/audit?limit=1');
    append(root, h('h1', {}, 'Audit log'));
    if (!probe) {
      append(root, unavailable('The audit log'));
      return;
    }
    const f = {
      actor: h('input', { type: 'text', name: 'actor', autocomplete: 'off' }),
      action: h('input', { type: 'text', name: 'action', autocomplete: 'off', placeholder: 'pool.update' }),
      target: h('input', { type: 'text', name: 'target', autocomplete: 'off', placeholder: 'pool:rides' }),
      since: h('input', { type: 'datetime-local', name: 'since' }),
      until: h('input', { type: 'datetime-local', name: 'until' }),
    };
    const list = h('div', { 'aria-live': 'polite' });
    const cursors = [null];
    const show = async (page) => {
      const q = ['limit=50'];
      for (const k of ['actor', 'action', 'target']) if (f[k].value.trim()) q.push(`${k}=${enc(f[k].value.trim())}`);
      for (const k of ['since', 'until']) if (f[k].value) q.push(`${k}=${enc(new Date(f[k].value).toISOString())}`);
      if (cursors[page]) q.push(`cursor=${enc(cursors[page])}`);
      const data = await guarded(list, () => api('GET', `/v1/audit?${q.join('&')}`));
      if (!data) return;
      cursors[page + 1] = data.next_cursor || undefined;
      fill(list,
        data.entries.length ? h('div', { class: 'table-wrap' }, h('table', { class: 'stack audit' },
          h('thead', {}, h('tr', {}, h('th', {}, 'When'), h('th', {}, 'Who'), h('th', {}, 'Via'),
            h('th', {}, 'Action'), h('th', {}, 'Target'), h('th', {}, 'Detail'))),
          h('tbody', {}, data.entries.map((e) => h('tr', {},
            h('td', { class: 'nowrap', 'data-label': 'When' }, when(e.at)),
            h('td', { 'data-label': 'Who' }, e.actor),
            h('td', { 'data-label': 'Via' }, e.via),
            h('td', { 'data-label': 'Action' }, h('code', {}, e.action)),
            h('td', { class: 'mono', 'data-label': 'Target' }, e.target),
            h('td', { class: 'mono small detail', 'data-label': 'Detail' }, details(e.detail))))))
        ) : h('p', { class: 'muted' }, 'No entries match.'),
        h('div', { class: 'pager' },
          h('button', { type: 'button', disabled: page === 0, onclick: () => show(page - 1) }, '← Newer'),
          h('span', { class: 'muted small' }, `Page ${page + 1}`),
          h('button', { type: 'button', disabled: !data.next_cursor, onclick: () => show(page + 1) }, 'Older →')));
    };
    append(root,
      h('form', {
        class: 'card', 'aria-label': 'Filters',
        onsubmit: (ev) => { ev.preventDefault(); cursors.length = 1; show(0); },
      },
      h('div', { class: 'row' }, field('Actor (key name)', f.actor), field('Action', f.action), field('Target', f.target),
        field('Since', f.since), field('Until', f.until),
        h('div', { class: 'field btn' }, h('button', { type: 'submit', class: 'primary' }, 'Apply')))),
      h('section', { class: 'card' }, list));
    await show(0);
  }

  /// An audit entry's detail as `key: value` lines.
  function details(d) {
    if (!d || typeof d !== 'object') return '';
    return Object.entries(d).map(([k, v]) =>
      h('div', {}, `${k}: ${Array.isArray(v) ? v.join(', ') : typeof v === 'object' && v !== null ? JSON.stringify(v) : String(v)}`));
  }

  // ---- Sandbox ----------------------------------------------------------------------------

  async function pageSandbox(root) {
    const sb = await optional('/v1/sandbox');
    append(root, h('h1', {}, 'Sandbox'));
    if (!sb) {
      append(root, unavailable('The sandbox'));
      return;
    }
    S.sandbox = sb;
    const phones = h('div', { class: 'phones', 'aria-label': 'Simulated phones' });
    const cards = new Map();
    for (const p of sb.phones) {
      const screen = h('div', { class: 'screen', 'aria-live': 'polite' }, h('span', { class: 'muted' }, 'Idle'));
      const card = h('div', { class: 'phone', 'data-phone': p.number, role: 'group', 'aria-label': `${p.name}'s phone` },
        h('div', { class: 'who-phone' }, p.name), h('div', { class: 'mono small' }, p.number), screen);
      cards.set(p.number, { card, screen });
      phones.append(card);
    }
    const from = select('from', sb.phones.map((p) => [p.number, `${p.name} (${p.number})`]), sb.phones[0] && sb.phones[0].number);
    const to = select('to', sb.proxy_numbers.map((n) => [n, n]), sb.proxy_numbers[0]);
    const dialect = select('dialect', sb.dialects.map((d) => [d, d]), sb.dialects[0]);
    const kind = select('kind', [['call', 'a call'], ['text', 'a text']], 'call');
    const body = h('textarea', { name: 'body', rows: 2, value: 'On my way!' });
    const bodyField = field('Text', body);
    bodyField.hidden = true;
    kind.addEventListener('change', () => { bodyField.hidden = kind.value !== 'text'; });
    const steps = h('div', { 'aria-live': 'polite' });
    const err = h('div');
    const run = h('form', {
      class: 'card', 'aria-labelledby': 'run-title',
      onsubmit: async (ev) => {
        ev.preventDefault();
        for (const { card, screen } of cards.values()) {
          card.classList.remove('ringing', 'texted', 'calling');
          fill(screen, h('span', { class: 'muted' }, 'Idle'));
        }
        const isCall = kind.value === 'call';
        const req = { from: from.value, to: to.value, dialect: dialect.value };
        if (!isCall) req.body = body.value;
        const sender = cards.get(from.value);
        if (sender) {
          sender.card.classList.add('calling');
          fill(sender.screen, h('span', {}, `${isCall ? 'Calling' : 'Texting'} ${to.value}…`));
        }
        const data = await guarded(err, () => api('POST', `/v1/sandbox/${isCall ? 'calls' : 'texts'}`, req));
        if (!data) return;
        if (sender) fill(sender.screen, h('span', {}, `${isCall ? 'Called' : 'Texted'} ${to.value}`));
        fill(steps, h('h2', {}, 'What happened'),
          h('ol', { class: 'steps' }, data.steps.map((s) => h('li', { 'data-step': s.step },
            h('strong', {}, s.title), ' ', h('span', { class: 'badge' }, s.step),
            s.detail ? h('pre', { class: 'detail' }, s.detail) : null))));
        for (const s of data.steps) {
          if (!s.phone || !s.caller_id) continue;
          const target = cards.get(s.phone);
          if (!target) continue;
          target.card.classList.add(isCall ? 'ringing' : 'texted');
          fill(target.screen,
            h('div', {}, isCall ? 'Incoming call' : 'New message'),
            h('div', { class: 'caller mono' }, s.caller_id),
            isCall ? null : h('div', {}, `“${req.body}”`));
        }
      },
    },
    h('h2', { id: 'run-title' }, 'Place a call or send a text'),
    h('div', { class: 'row' }, field('From', from), field('To proxy number', to), field('Provider dialect', dialect), field('Send', kind)),
    bodyField,
    h('button', { type: 'submit', class: 'primary' }, 'Go'),
    err);
    const name = h('input', { type: 'text', name: 'name', required: true, autocomplete: 'off', placeholder: 'Courier' });
    const addErr = h('div');
    const add = h('form', {
      class: 'card row', 'aria-label': 'Add a phone',
      onsubmit: async (ev) => {
        ev.preventDefault();
        if (await guarded(addErr, () => api('POST', '/v1/sandbox/phones', { name: name.value.trim() }))) {
          say(`Phone ${name.value.trim()} added.`);
          go('sandbox');
        }
      },
    }, field('New phone’s name', name), h('div', { class: 'field btn' }, h('button', { type: 'submit' }, 'Add phone')), addErr);
    append(root, h('section', { class: 'card' }, h('h2', {}, 'Phones'), phones), add, run, steps);
  }

  // ---- start ------------------------------------------------------------------------------

  document.addEventListener('DOMContentLoaded', () => {
    $('#signin-form').addEventListener('submit', async (ev) => {
      ev.preventDefault();
      $('#signin-error').textContent = '';
      const key = $('#key').value.trim();
      try {
        await signIn(key);
      } catch (e) {
        if (!(e instanceof Problem)) throw e;
        $('#signin-error').textContent = e.status === 401 ? 'hush refused this key.' : e.message;
      }
    });
    $('#signout').addEventListener('click', () => signOut(''));
    window.addEventListener('hashchange', () => {
      route().then(() => $('#main').focus({ preventScroll: true }));
    });
    const saved = sessionStorage.getItem(KEY_SLOT);
    if (saved) signIn(saved).catch(() => signOut('Sign in again.'));
    else $('#key').focus();
  });
})();
