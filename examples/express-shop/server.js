'use strict';
// The example shop in a second language: Express with express-session, its sessions kept by the
// unit's Stickyfarm sidecar through @stickyfarm/express-session. The same walk-through as the
// Rust webstore: add to the cart on one unit, kill it, the cart is still there on the backup.
//
// Environment (set by the operator, or by `farmctl up --app-command`): PORT, STICKYFARM_API_URL
// or STICKYFARM_API_SOCKET, POD_NAME; SESSION_SECRET (the example's default is for local use).

const express = require('express');
const { stickyfarmSession, SessionApiClient } = require('@stickyfarm/express-session');

const CATALOG = {
  apple: { name: 'Apple', cents: 50 },
  bread: { name: 'Bread', cents: 250 },
  milk: { name: 'Milk', cents: 120 },
  tea: { name: 'Tea', cents: 300 },
};
const MAX_QTY = 99;

const app = express();
app.disable('x-powered-by');
app.use(express.json({ limit: '16kb' }));
app.use(express.urlencoded({ extended: false, limit: '16kb' }));
app.get('/healthz', (_req, res) => res.type('text').send('ok\n'));
app.use(stickyfarmSession({
  secret: process.env.SESSION_SECRET || 'express-shop-example-secret',
  // The sidecar's cookie carries the session; express-session's own is only its mirror.
  cookie: { httpOnly: true, sameSite: 'lax' },
}));
// The shop's orders are a second table of the same session, written with the plain client.
const api = new SessionApiClient();

const esc = (s) => String(s).replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' }[c]));
const visit = (req) => ({
  unit: req.get('x-stickyfarm-unit') || process.env.POD_NAME || 'local',
  instance: req.get('x-stickyfarm-instance') || '',
  // Links built from the unit's base URL keep the client on its unit (docs/session-api.md).
  unitUrl: req.get('x-stickyfarm-unit-url') || '',
});
// In catalogue order: PostgreSQL keeps JSON objects with its own key order.
const cartOf = (req) => {
  const cart = req.session.cart || {};
  return Object.fromEntries(Object.keys(CATALOG).filter((sku) => cart[sku]).map((sku) => [sku, cart[sku]]));
};
const total = (cart) => Object.entries(cart).reduce((t, [sku, q]) => t + CATALOG[sku].cents * q, 0);
const money = (c) => `${(c / 100).toFixed(2)} €`;

/** Adds `qty` of `sku`; a clear 400 for anything not in the catalogue or out of range. */
function add(req, sku, qty) {
  if (!Object.hasOwn(CATALOG, sku)) throw Object.assign(new Error(`no product '${sku}'`), { status: 400 });
  const n = Number(qty);
  if (!Number.isInteger(n) || n < 1 || n > MAX_QTY) {
    throw Object.assign(new Error(`quantity must be a whole number from 1 to ${MAX_QTY}`), { status: 400 });
  }
  const cart = { ...cartOf(req) };
  cart[sku] = Math.min(MAX_QTY, (cart[sku] || 0) + n);
  req.session.cart = cart;
}

// Saves before answering, so a refused write (conflict, limits, sidecar down) is the answer.
const saved = (req, res, next, then) => req.session.save((err) => (err ? next(err) : then()));

function page(v, title, body) {
  return `<!doctype html><html lang="en"><head><meta charset="utf-8"><title>${esc(title)} · Express shop</title></head>
<body><header><a href="${esc(v.unitUrl)}/">Express shop</a> · <a href="${esc(v.unitUrl)}/cart">cart</a>
· served by unit <strong id="unit">${esc(v.unit)}</strong></header><main>${body}</main></body></html>`;
}

app.get('/', (req, res) => {
  const v = visit(req);
  const items = Object.entries(CATALOG).map(([sku, p]) => `<li>${esc(p.name)} ${money(p.cents)}
<form method="post" action="${esc(v.unitUrl)}/cart/add"><input type="hidden" name="sku" value="${esc(sku)}">
<input name="qty" type="number" value="1" min="1" max="${MAX_QTY}"><button>Add</button></form></li>`).join('\n');
  res.type('html').send(page(v, 'Catalogue', `<h1>Catalogue</h1><ul>${items}</ul>`));
});

app.get('/cart', (req, res) => {
  const v = visit(req);
  const cart = cartOf(req);
  const lines = Object.entries(cart).map(([sku, q]) => `<li>${esc(CATALOG[sku].name)} × ${q}</li>`).join('');
  res.type('html').send(page(v, 'Cart', `<h1>Cart</h1><ul id="cart">${lines || '<li>empty</li>'}</ul><p>Total ${money(total(cart))}</p>
<form method="post" action="${esc(v.unitUrl)}/checkout"><button>Check out</button></form>`));
});

app.post('/cart/add', (req, res, next) => {
  add(req, req.body.sku, req.body.qty);
  saved(req, res, next, () => res.redirect(303, `${visit(req).unitUrl}/cart`));
});

app.get('/api/whoami', (req, res) => {
  const v = visit(req);
  res.json({ unit: v.unit, unit_url: v.unitUrl, instance: v.instance, user: req.session.user || null });
});

app.get('/api/cart', (req, res) => {
  const v = visit(req);
  const cart = cartOf(req);
  res.json({ unit: v.unit, unit_url: v.unitUrl, instance: v.instance, items: cart, total_cents: total(cart) });
});

app.post('/api/cart/items', (req, res, next) => {
  add(req, req.body && req.body.sku, req.body && req.body.qty);
  const v = visit(req);
  saved(req, res, next, () => res.json({ unit: v.unit, unit_url: v.unitUrl, instance: v.instance, items: cartOf(req) }));
});

async function checkout(req) {
  const cart = cartOf(req);
  if (Object.keys(cart).length === 0) throw Object.assign(new Error('the cart is empty'), { status: 400 });
  const order = { items: cart, total_cents: total(cart), unit: visit(req).unit };
  // The order history is its own table: append with the version read, retrying on a conflict.
  for (let attempt = 0; ; attempt++) {
    const t = await api.getTable(req.sessionID, 'orders');
    try {
      await api.putTable(req.sessionID, 'orders', [...(t ? t.value : []), order], { ifMatch: t ? t.version : 0 });
      break;
    } catch (e) {
      if (e.status !== 409 || attempt >= 3) throw e;
    }
  }
  delete req.session.cart;
  return order;
}

app.post('/api/checkout', (req, res, next) => {
  checkout(req).then((order) => saved(req, res, next, () => res.json(order)), next);
});
app.post('/checkout', (req, res, next) => {
  checkout(req).then((order) => saved(req, res, next, () => res.type('html')
    .send(page(visit(req), 'Thank you', `<h1>Thank you</h1><p>Order of ${money(order.total_cents)} placed.</p>`))), next);
});

app.post('/login', (req, res, next) => {
  const name = String((req.body && req.body.name) || '').trim();
  if (!/^[\p{L}\p{N} ._-]{1,40}$/u.test(name)) return next(Object.assign(new Error('a name of 1 to 40 letters, digits, spaces or ._-'), { status: 400 }));
  const cart = cartOf(req);
  // A new session id on sign-in (against session fixation); the cart comes along.
  req.session.regenerate((err) => {
    if (err) return next(err);
    req.session.user = name;
    req.session.cart = cart;
    saved(req, res, next, () => res.redirect(303, `${visit(req).unitUrl}/`));
  });
});

app.post('/logout', (req, res, next) => {
  req.session.regenerate((err) => (err ? next(err) : saved(req, res, next, () => res.redirect(303, `${visit(req).unitUrl}/`))));
});

// Every refusal is JSON for the API and a short page otherwise; never a stack trace.
// eslint-disable-next-line no-unused-vars
app.use((err, req, res, _next) => {
  const status = err.status && err.status >= 400 && err.status < 600 ? err.status : 500;
  if (status >= 500) console.error(`${req.method} ${req.path}: ${err.message}`);
  if (req.path.startsWith('/api/')) return res.status(status).json({ error: err.message });
  res.status(status).type('html').send(page(visit(req), 'Error', `<h1>${status}</h1><p>${esc(err.message)}</p>`));
});

const port = Number(process.env.PORT || 3000);
// Loopback by default: only the sidecar beside it reaches the app (HOST=0.0.0.0 for probes).
const host = process.env.HOST || '127.0.0.1';
const server = app.listen(port, host, () => console.log(`express-shop listening on ${host}:${port}`));
// The pod (or farmctl) stops the app with SIGTERM: finish what is in flight, then exit.
process.on('SIGTERM', () => server.close(() => process.exit(0)));
