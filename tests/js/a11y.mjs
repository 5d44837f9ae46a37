// The console's accessibility sweep (run by tests/it/console_a11y.rs): one Debian Chromium,
// driven by playwright-core, signs in through the real console as a plain user and as an admin
// (who enrols a second factor on the way), and on every page of PAGES, at desktop and phone
// width, runs axe-core (WCAG 2.0/2.1 A and AA, WCAG 2.2 AA) and checks that nothing scrolls
// sideways and that the first focusable element is the skip link to <main>. Then a keyboard
// walk: Tab, Enter on the skip link, Tab into the content, Space on a button.
//
// axe-core is evaluated through the DevTools protocol (page.evaluate), which the console's
// Content-Security-Policy (no scripts at all) does not govern, so the pages are checked under
// their real policy.
//
// Env: TG_URL, TG_SPKI, TG_CHROMIUM, TG_USER, TG_PASSWORD, TG_ADMIN, TG_ADMIN_PASSWORD,
// TG_SECOND_USER (a user page to visit), TG_SHOTS (optional: a directory for a screenshot of
// each page at each width). Output: one JSON object per line on stdout:
// {"step":"page", name, role, width, violations:[{id, impact, help, targets}], scrollWidth,
// innerWidth, skip, errors}, {"step":"keyboard", ...}, then {"step":"done", checked}.
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { chromium } from 'playwright-core';
import { totp } from './totp.mjs';

const env = (k) => { const v = process.env[k]; if (!v) throw new Error(`missing ${k}`); return v; };
const url = env('TG_URL');
const console_ = `${url}/tokengate/console`;
const out = (step, data = {}) => console.log(JSON.stringify({ step, ...data }));
const axeSource = readFileSync(createRequire(import.meta.url).resolve('axe-core/axe.min.js'), 'utf8');

const WIDTHS = [1280, 390];
const TAGS = ['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa', 'wcag22aa'];

// Form helpers for the pages that show a form's error.
const submit = async (page, name) => Promise.all([
  page.waitForEvent('load'),
  page.getByRole('button', { name, exact: true }).click(),
]);

// Every page the sweep checks: `role` is whose browser opens it (anon, user, admin); `path`
// is loaded, then `then` (if any) acts on it to reach the page to check. A new console page is
// one line here.
const PAGES = [
  { name: 'sign-in', role: 'anon', path: '/signin' },
  {
    name: 'sign-in with an error', role: 'anon', path: '/signin', then: async (p) => {
      await p.getByLabel('Username').fill('nobody@example.com');
      await p.getByLabel('Password').fill('not-the-password-1');
      await submit(p, 'Sign in');
    },
  },
  { name: 'sign-in, session expired', role: 'anon', path: '/signin?expired=1' },
  { name: 'my settings', role: 'user', path: '/settings' },
  { name: 'reset confirmation', role: 'user', path: '/settings/reset-token' },
  { name: 'integration token revoke confirmation', role: 'user', path: '/settings/tokens/nightly-sync/revoke' },
  {
    name: 'change password with an error', role: 'user', path: '/settings', then: async (p) => {
      await p.getByLabel('Current password').fill('not-the-password-1');
      await p.getByLabel('New password').fill('Another1pass');
      await submit(p, 'Change Password');
    },
  },
  { name: 'forbidden (message page)', role: 'user', path: '/setup/users' },
  { name: 'not found', role: 'user', path: '/no-such-page' },
  { name: 'my settings (admin, second factor on)', role: 'admin', path: '/settings' },
  { name: 'setup: users', role: 'admin', path: '/setup/users' },
  { name: 'setup: users, page 2', role: 'admin', path: '/setup/users?page=2' },
  { name: 'setup: users, no match', role: 'admin', path: '/setup/users?q=zzzz-nobody' },
  { name: 'setup: a user', role: 'admin', path: () => `/setup/users/${encodeURIComponent(env('TG_SECOND_USER'))}` },
  { name: 'setup: new user', role: 'admin', path: '/setup/new-user' },
  {
    name: 'setup: a confirmation', role: 'admin', path: () => `/setup/users/${encodeURIComponent(env('TG_SECOND_USER'))}`,
    then: async (p) => { await submit(p, 'Disable'); },
  },
  { name: 'setup: users, sorted by last login, admins only', role: 'admin', path: '/setup/users?view=admins&sort=last_login&dir=desc' },
  { name: 'setup: compliance', role: 'admin', path: '/setup/compliance' },
  {
    name: 'setup: compliance with an error', role: 'admin', path: '/setup/compliance', then: async (p) => {
      await p.getByLabel('Enable').check();
      await p.getByLabel('Compliance BCC address').fill('');
      await submit(p, 'Save');
    },
  },
  { name: 'setup: login history', role: 'admin', path: '/setup/history' },
  { name: 'setup: login history with an error', role: 'admin', path: '/setup/history?since=yesterday-ish' },
  { name: 'setup: audit trail', role: 'admin', path: '/setup/audit' },
  { name: 'setup: audit trail with an error', role: 'admin', path: '/setup/audit?since=yesterday-ish' },
];

const browser = await chromium.launch({
  executablePath: env('TG_CHROMIUM'),
  args: [
    '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync',
    `--ignore-certificate-errors-spki-list=${env('TG_SPKI')}`,
  ],
});

let checked = 0;
// axe-core, the sideways-scroll check and the skip link, at each width, on the page as it is.
async function check(page, name, role) {
  for (const width of WIDTHS) {
    await page.setViewportSize({ width, height: 800 });
    const has = await page.evaluate(() => typeof window.axe === 'object');
    if (!has) await page.evaluate(axeSource);
    const result = await page.evaluate(async (tags) => {
      const r = await window.axe.run(document, { runOnly: { type: 'tag', values: tags }, resultTypes: ['violations'] });
      return r.violations.map((v) => ({
        id: v.id, impact: v.impact, help: v.help,
        targets: v.nodes.map((n) => n.target.join(' ')),
      }));
    }, TAGS);
    const layout = await page.evaluate(() => {
      // The first element Tab reaches from the top of the page (autofocus aside).
      const focusable = [...document.querySelectorAll('a[href], button, input:not([type=hidden]), select, textarea, [tabindex]')]
        .filter((e) => e.tabIndex >= 0 && !e.disabled);
      const first = focusable[0];
      const main = document.querySelector('main#main');
      return {
        scrollWidth: document.documentElement.scrollWidth,
        innerWidth: window.innerWidth,
        skip: !!first && first.matches('a[href="#main"]') && first.textContent.trim() === 'Skip to main content'
          && !!main && main.getAttribute('tabindex') === '-1',
        // A form's errors: the title, the focused summary, and each link's field tied to its
        // message (aria-invalid, aria-describedby naming elements that exist).
        errors: {
          title: document.title,
          focused: document.activeElement.getAttribute('role'),
          fields: [...document.querySelectorAll('[role=alert] a[href^="#"]')].map((a) => {
            const f = document.getElementById(a.getAttribute('href').slice(1));
            const ids = (f && f.getAttribute('aria-describedby') || '').split(/\s+/).filter(Boolean);
            return {
              href: a.getAttribute('href'),
              invalid: !!f && f.getAttribute('aria-invalid') === 'true',
              described: ids.length > 0 && ids.every((id) => document.getElementById(id)),
              message: ids.map((id) => document.getElementById(id)?.textContent.trim()).join(' | '),
              value: f ? f.value : null,
            };
          }),
        },
      };
    });
    if (process.env.TG_SHOTS) {
      const slug = name.replace(/[^a-z0-9]+/gi, '-').toLowerCase();
      await page.screenshot({ path: `${process.env.TG_SHOTS}/a11y-${slug}-${width}.png`, fullPage: true });
    }
    out('page', { name, role, width, url: page.url().replace(url, ''), violations: result, ...layout });
    checked += 1;
  }
}

async function newPage(viewport = { width: WIDTHS[0], height: 800 }) {
  const context = await browser.newContext({ viewport });
  return context.newPage();
}

async function signIn(page, user, password) {
  await page.goto(`${console_}/signin`);
  await page.getByLabel('Username').fill(user);
  await page.getByLabel('Password').fill(password);
  await submit(page, 'Sign in');
}

try {
  const anon = await newPage();
  const user = await newPage();
  await signIn(user, env('TG_USER'), env('TG_PASSWORD'));
  if (!user.url().endsWith('/settings')) throw new Error(`user not signed in: ${user.url()}`);

  // The admin owes a second factor: the enrolment, the recovery codes, then (a second
  // browser) the code page, with and without an error, are checked on the way in.
  const admin = await newPage();
  await signIn(admin, env('TG_ADMIN'), env('TG_ADMIN_PASSWORD'));
  await check(admin, 'second factor: enrolment', 'admin');
  const key = (await admin.locator('#totp-secret').innerText()).replace(/\s/g, '');
  await admin.getByLabel('Code from the app').fill('000000');
  await submit(admin, 'Confirm');
  await check(admin, 'second factor: enrolment with an error', 'admin');
  await admin.getByLabel('Code from the app').fill(totp(key));
  await submit(admin, 'Confirm');
  await check(admin, 'second factor: recovery codes', 'admin');
  const later = await newPage();
  await signIn(later, env('TG_ADMIN'), env('TG_ADMIN_PASSWORD'));
  await check(later, 'second factor: code', 'admin');
  await later.getByLabel('Verification code').fill('12345');
  await submit(later, 'Verify');
  await check(later, 'second factor: code with an error', 'admin');
  await later.context().close();

  const as = { anon, user, admin };
  for (const p of PAGES) {
    const page = as[p.role];
    const path = typeof p.path === 'function' ? p.path() : p.path;
    await page.goto(`${console_}${path}`);
    if (p.then) await p.then(page);
    await check(page, p.name, p.role);
  }

  // The keyboard alone, on a phone-sized My Settings.
  const kb = user;
  await kb.setViewportSize({ width: 390, height: 800 });
  await kb.goto(`${console_}/settings`);
  const focused = () => kb.evaluate(() => {
    const e = document.activeElement;
    return {
      tag: e.tagName.toLowerCase(), text: (e.textContent || '').trim().slice(0, 60),
      inMain: !!e.closest('main'),
      // On screen, not merely laid out (a skip link waits above the page until focused).
      visible: ((r) => r.width > 1 && r.height > 1 && r.top >= 0 && r.left >= 0
        && r.bottom <= window.innerHeight && r.right <= window.innerWidth)(e.getBoundingClientRect()),
    };
  });
  await kb.keyboard.press('Tab');
  const first = await focused();
  // Enter on the skip link: a same-page jump (a real link would load another page here).
  await kb.keyboard.press('Enter');
  await kb.waitForLoadState();
  const target = await focused();
  await kb.keyboard.press('Tab');
  const next = await focused();
  // Tab on to "Reset My Security Token", then Space.
  let reset = null;
  for (let i = 0; i < 40 && !reset; i++) {
    const f = await focused();
    if (f.text === 'Reset My Security Token') reset = f;
    else await kb.keyboard.press('Tab');
  }
  // The focus ring on that button (WCAG 2.2 1.4.11): its width, and its contrast against the
  // button and the card's white it sits on.
  const ring = reset ? await kb.evaluate(() => {
    const rgb = (c) => c.match(/[\d.]+/g).slice(0, 3).map(Number);
    const lum = (c) => {
      const [r, g, b] = rgb(c).map((v) => { v /= 255; return v <= 0.04045 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4; });
      return 0.2126 * r + 0.7152 * g + 0.0722 * b;
    };
    const ratio = (a, b) => { const [x, y] = [lum(a), lum(b)].sort((p, q) => q - p); return (x + 0.05) / (y + 0.05); };
    const e = document.activeElement;
    const s = getComputedStyle(e);
    const card = getComputedStyle(e.closest('.card')).backgroundColor;
    return {
      style: s.outlineStyle, width: parseFloat(s.outlineWidth),
      againstButton: ratio(s.outlineColor, s.backgroundColor), againstCard: ratio(s.outlineColor, card),
    };
  }) : null;
  let confirmation = '';
  if (reset) {
    await Promise.all([kb.waitForEvent('load'), kb.keyboard.press(' ')]);
    // A GET form with no fields asks for `action?`: the path is what counts.
    confirmation = new URL(kb.url()).pathname;
  }
  // Sign-in with an error: focus starts on the error summary, whose link leads to the field.
  await anon.goto(`${console_}/signin`);
  await anon.getByLabel('Username').fill('nobody@example.com');
  await anon.getByLabel('Password').fill('not-the-password-1');
  await submit(anon, 'Sign in');
  const summary = await anon.evaluate(() => {
    const e = document.activeElement;
    return { role: e.getAttribute('role'), text: (e.textContent || '').trim().slice(0, 200), title: document.title };
  });
  out('keyboard', { first, target, next, reset, ring, confirmation, summary });
  out('done', { checked });
  await browser.close();
} catch (e) {
  console.error(e.stack || String(e));
  await browser.close();
  process.exit(1);
}
