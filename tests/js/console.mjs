// Drives the tokengate web console in Debian's headless Chromium with playwright-core (no
// browser download: executablePath is the system chromium). The certificate is trusted by its
// SPKI hash only (--ignore-certificate-errors-spki-list), so TLS verification stays meaningful.
//
// Env: TG_URL, TG_SPKI, TG_PHASE (user | admin | escape | mfa | flow), TG_USER, TG_PASSWORD,
// TG_ADMIN, TG_ADMIN_PASSWORD, TG_COMPLIANCE, TG_SHOTS (directory for screenshots), TG_MARKUP
// (escape: the text that must show as text; it would add an element with id "pwned" if it were
// markup), TG_BULK (flow: the usernames to select for a bulk reset, comma-separated).
import { chromium } from 'playwright-core';
import { totp } from './totp.mjs';

const env = (k) => { const v = process.env[k]; if (!v) throw new Error(`missing ${k}`); return v; };
const url = env('TG_URL');
const shots = env('TG_SHOTS');
const out = (step, data = {}) => console.log(JSON.stringify({ step, ...data }));

const browser = await chromium.launch({
  executablePath: process.env.TG_CHROMIUM || '/usr/bin/chromium',
  args: [
    '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync',
    `--ignore-certificate-errors-spki-list=${env('TG_SPKI')}`,
  ],
});
const shot = async (page, name) => page.screenshot({ path: `${shots}/${name}.png`, fullPage: true });

async function signIn(context, user, password) {
  const page = await context.newPage();
  await page.goto(`${url}/tokengate/console/settings`);
  if (!page.url().endsWith('/tokengate/console/signin')) throw new Error(`not sent to sign-in: ${page.url()}`);
  await page.getByLabel('Username').fill(user);
  await page.getByLabel('Password').fill(password);
  await page.getByRole('button', { name: 'Sign in' }).click();
  await page.waitForURL('**/tokengate/console/settings');
  return page;
}

try {
  const context = await browser.newContext({ viewport: { width: 1100, height: 800 } });
  if (process.env.TG_PHASE === 'user') {
    // A wrong password first: the generic error, no session.
    const page = await context.newPage();
    await page.goto(`${url}/tokengate/console/signin`);
    await shot(page, 'signin');
    await page.getByLabel('Username').fill(env('TG_USER'));
    await page.getByLabel('Password').fill('definitely-wrong-1');
    await page.getByRole('button', { name: 'Sign in' }).click();
    out('wrong-password', { alert: await page.getByRole('alert').innerText() });
    await page.close();

    const settings = await signIn(context, env('TG_USER'), env('TG_PASSWORD'));
    out('signed-in', { heading: await settings.getByRole('heading', { level: 1 }).innerText() });
    await shot(settings, 'settings');
    await settings.getByRole('button', { name: 'Reset My Security Token' }).click();
    // A GET form (a button, not a link styled as one) asks for `reset-token?`.
    await settings.waitForURL((u) => u.pathname.endsWith('/settings/reset-token'));
    await shot(settings, 'reset-confirm');
    await settings.getByRole('button', { name: 'Yes, reset my security token' }).click();
    await settings.waitForURL('**/tokengate/console/settings');
    const notice = await settings.getByRole('status').innerText();
    out('reset', { notice });
    await shot(settings, 'reset-done');
    // Post/Redirect/Get: a reload repeats the page, not the reset (and the notice was shown once).
    await settings.reload();
    out('reloaded', { url: settings.url(), notices: await settings.getByRole('status').count() });

    // A non-admin cannot reach Setup, and sees no Setup links.
    const links = await settings.getByRole('link', { name: /Setup/ }).count();
    const resp = await settings.goto(`${url}/tokengate/console/setup/users`);
    out('setup-forbidden', { status: resp.status(), links, text: await settings.locator('main').innerText() });
  } else if (process.env.TG_PHASE === 'mfa') {
    // The script's own TOTP against RFC 6238 Appendix B (SHA-1, T = 59: 94287082, last six).
    if (totp('GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ', 59) !== '287082') throw new Error('TOTP self-check failed');
    const user = env('TG_ADMIN');
    const signInTo = async (page) => {
      await page.goto(`${url}/tokengate/console/settings`);
      await page.getByLabel('Username').fill(user);
      await page.getByLabel('Password').fill(env('TG_ADMIN_PASSWORD'));
      await page.getByRole('button', { name: 'Sign in' }).click();
      await page.waitForURL('**/tokengate/console/mfa');
    };
    // First sign-in: enrolment, with the key read off the page and a code computed here.
    const page = await context.newPage();
    await signInTo(page);
    const key = (await page.locator('#totp-secret').innerText()).replace(/\s/g, '');
    const qr = await page.locator('figure.qr svg').count();
    await shot(page, 'mfa-enrol');
    await page.getByLabel('Code from the app').fill(totp(key));
    await page.getByRole('button', { name: 'Confirm' }).click();
    const codes = await page.getByRole('list', { name: 'Recovery codes' }).locator('li').allInnerTexts();
    out('enrolled', { heading: await page.getByRole('heading', { level: 1 }).innerText(), qr, codes: codes.length, key });
    await shot(page, 'mfa-recovery');
    await page.getByRole('link', { name: 'Continue' }).click();
    await page.waitForURL('**/tokengate/console/settings');
    await page.getByRole('button', { name: `Sign out ${user}` }).click();
    await page.waitForURL('**/tokengate/console/signin');

    // Next sign-in: the code page. The enrolment used this step's code, so the next step's
    // (within the one step of drift allowed) signs in.
    await signInTo(page);
    const code = totp(key, Date.now() / 1000 + 30);
    await page.getByLabel('Verification code').fill(code);
    await shot(page, 'mfa-code');
    await page.getByRole('button', { name: 'Verify' }).click();
    await page.waitForURL('**/tokengate/console/settings');
    out('signed-in', { heading: await page.getByRole('heading', { level: 1 }).innerText() });
    await page.getByRole('button', { name: `Sign out ${user}` }).click();
    await page.waitForURL('**/tokengate/console/signin');

    // The same code again: refused, and the browser stays on the code page.
    await signInTo(page);
    await page.getByLabel('Verification code').fill(code);
    await page.getByRole('button', { name: 'Verify' }).click();
    out('replayed', { alert: await page.getByRole('alert').innerText(), url: page.url() });
    const settings = await page.goto(`${url}/tokengate/console/settings`);
    out('still-half-signed-in', { url: page.url(), status: settings.status() });
  } else if (process.env.TG_PHASE === 'escape') {
    // Attacker-chosen text (a username) on the admin's pages: shown as text, never as markup.
    const page = await signIn(context, env('TG_ADMIN'), env('TG_ADMIN_PASSWORD'));
    const dialogs = [];
    page.on('dialog', async (d) => { dialogs.push(d.message()); await d.dismiss(); });
    const markup = env('TG_MARKUP');
    const look = async (step) => out(step, {
      injected: await page.locator('#pwned').count(),
      shown: (await page.locator('tbody').innerText()).includes(markup),
      dialogs: dialogs.length,
    });
    await page.getByRole('link', { name: 'Setup: Users' }).click();
    await page.getByLabel('Search users').fill('pwned');
    await page.getByRole('button', { name: 'Search' }).click();
    await look('users');
    await page.getByRole('link', { name: 'Setup: Login History' }).click();
    await look('history');
  } else if (process.env.TG_PHASE === 'flow') {
    // Setup → Users: a destructive action asks first (Cancel leaves the user as they were),
    // then a bulk reset of the selected users after one confirmation, back to the same list.
    const page = await signIn(context, env('TG_ADMIN'), env('TG_ADMIN_PASSWORD'));
    await page.getByRole('link', { name: 'Setup: Users' }).click();
    await page.getByRole('link', { name: env('TG_USER'), exact: true }).click();
    await page.getByRole('button', { name: 'Disable' }).click();
    const asked = await page.locator('main').innerText();
    await shot(page, 'confirm-disable');
    await page.getByRole('link', { name: 'Cancel' }).click();
    out('cancelled', { asked, url: page.url(), status: await page.locator('dd').first().innerText() });

    // The admin's own page: Revoke admin, confirmed, is refused — they stay an admin.
    await page.goto(`${url}/tokengate/console/setup/users/${encodeURIComponent(env('TG_ADMIN'))}`);
    await page.getByRole('button', { name: 'Revoke admin' }).click();
    await page.getByRole('button', { name: 'Revoke admin' }).click(); // the confirmation page's
    out('self-demotion', {
      alert: await page.locator('.flash, [role=alert], [role=status]').first().innerText(),
      setup: await page.getByRole('link', { name: 'Setup: Users' }).count(),
    });

    await page.getByRole('link', { name: 'Setup: Users' }).click();
    await page.getByLabel('View').selectOption('active');
    await page.getByLabel('Search users').fill('bulk');
    await page.getByRole('button', { name: 'Search' }).click();
    await page.getByRole('link', { name: 'Username' }).click(); // sorted descending now
    const listed = await page.locator('tbody tr td:nth-child(2)').allInnerTexts();
    const bulk = env('TG_BULK').split(',');
    for (const u of bulk) await page.getByLabel(`Select ${u}`, { exact: true }).check();
    await page.getByRole('button', { name: 'Reset token' }).click();
    const confirm = await page.locator('main').innerText();
    await shot(page, 'confirm-bulk');
    await page.getByRole('button', { name: `Reset token ${bulk.length} users` }).click();
    await page.waitForURL('**/tokengate/console/setup/users?**');
    out('bulk-reset', {
      confirm, listed,
      notice: await page.getByRole('status').innerText(),
      url: page.url(),
      search: await page.getByLabel('Search users').inputValue(),
      view: await page.getByLabel('View').inputValue(),
    });
    await shot(page, 'users');
    // On a phone's width (390 px) nothing is wider than the screen: the list stacks, the user's
    // page and a confirmation page fit.
    await page.setViewportSize({ width: 390, height: 800 });
    const widths = {};
    widths.list = await page.evaluate(() => document.documentElement.scrollWidth);
    widths.table = await page.evaluate(() => document.querySelector('table.users').scrollWidth);
    await shot(page, 'users-narrow');
    await page.getByRole('link', { name: env('TG_USER'), exact: true }).click();
    widths.user = await page.evaluate(() => document.documentElement.scrollWidth);
    await page.getByRole('button', { name: 'Disable' }).click();
    widths.confirm = await page.evaluate(() => document.documentElement.scrollWidth);
    out('narrow', widths);
  } else {
    const page = await signIn(context, env('TG_ADMIN'), env('TG_ADMIN_PASSWORD'));
    await page.getByRole('link', { name: 'Setup: Compliance BCC Email' }).click();
    await page.getByLabel('Enable').check();
    await page.getByLabel('Compliance BCC address').fill(env('TG_COMPLIANCE'));
    await page.getByRole('button', { name: 'Save' }).click();
    out('compliance-saved', { notice: await page.getByRole('status').innerText() });
    await shot(page, 'compliance');

    await page.getByRole('link', { name: 'Setup: Users' }).click();
    await page.getByLabel('Search users').fill(env('TG_USER').split('@')[0]);
    await page.getByRole('button', { name: 'Search' }).click();
    await page.getByRole('link', { name: env('TG_USER'), exact: true }).click();
    await page.getByRole('button', { name: 'Reset token' }).click();
    await page.getByRole('button', { name: 'Reset token' }).click(); // the confirmation page's
    out('admin-reset', { notice: await page.getByRole('status').innerText() });
    await page.goto(`${url}/tokengate/console/setup/users`);

    await page.getByRole('link', { name: 'Setup: Login History' }).click();
    await page.getByLabel('Outcome').selectOption('bad_credentials');
    await page.getByRole('button', { name: 'Filter' }).click();
    const rows = await page.locator('tbody tr').count();
    out('history', { rows, text: await page.locator('tbody').innerText() });
    await shot(page, 'history');
    // Escaping: a full name with markup is shown as text.
    out('escaped', { html: (await page.content()).includes('<script>alert') });

    // The history opens with its charts, drawn by the server: they show with JavaScript off.
    const plain = await browser.newContext({ viewport: { width: 1100, height: 800 }, javaScriptEnabled: false });
    const noScript = await signIn(plain, env('TG_ADMIN'), env('TG_ADMIN_PASSWORD'));
    await noScript.getByRole('link', { name: 'Setup: Login History' }).click();
    const perHour = noScript.getByRole('img', { name: /^Logins per hour by outcome, / });
    const perClient = noScript.getByRole('img', { name: /^Logins per client by result/ });
    const box = (await perHour.count()) === 1 ? await perHour.boundingBox() : null;
    out('chart', {
      hour: await perHour.count(),
      client: await perClient.count(),
      width: box ? box.width : 0,
      height: box ? box.height : 0,
      legend: await perHour.getByText('bad_credentials', { exact: true }).count(),
      bars: await perHour.locator('rect > title').count(),
    });
    await perHour.screenshot({ path: `${shots}/history-chart.png` });
    await shot(noScript, 'history-charts');
    await plain.close();

    // A user's own page: the profile saved (the user becomes API only), then the change in
    // Setup → Audit Trail, with who made it and what changed.
    await page.getByRole('link', { name: 'Setup: Users' }).click();
    await page.getByRole('link', { name: env('TG_USER'), exact: true }).click();
    await page.getByLabel('Full name').fill('Integration (Formstack)');
    await page.getByLabel('API only (no console sign-in)').check();
    await page.getByRole('button', { name: 'Save profile' }).click();
    out('profile-saved', { notice: await page.getByRole('status').innerText() });
    await shot(page, 'user');
    await page.getByRole('link', { name: 'Setup: Audit Trail' }).click();
    await page.getByLabel('Target').fill(env('TG_USER'));
    await page.getByRole('button', { name: 'Filter' }).click();
    const first = page.locator('tbody tr').first().locator('td');
    out('audit', {
      rows: await page.locator('tbody tr').count(),
      actor: await first.nth(2).innerText(),
      channel: await first.nth(4).innerText(),
      action: await first.nth(5).innerText(),
      changes: await first.nth(7).innerText(),
    });
    await shot(page, 'audit');
  }
  await browser.close();
} catch (e) {
  console.error(e.stack || String(e));
  await browser.close();
  process.exit(1);
}
