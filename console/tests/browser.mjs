// The console in a real browser (Debian's Chromium, driven by playwright-core) against a keel-local the Rust test
// `infra/local/tests/host/console.rs` started and seeded. Every page must load without a console error; the main
// actions must work end to end; a member must not reach an admin page. A screenshot of each page is kept in
// $ARTIFACTS. Exits non-zero on the first failure, saying which step failed.
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

const need = (name) => {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set`);
  return value;
};
const base = need('CONSOLE_URL');
const adminToken = need('ADMIN_TOKEN');
const memberToken = need('MEMBER_TOKEN');
const pendingJob = need('PENDING_JOB');
const delivery = need('DELIVERY');
const artifacts = need('ARTIFACTS');
/** The issuer's subject the sign-in through it yields (the issuer is configured when this is set). */
const oidcUser = process.env.OIDC_USER || '';
mkdirSync(artifacts, { recursive: true });

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
    '--disable-component-update', '--disable-sync'],
});
let shot = 0;
let failed = false;

async function session(token) {
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  const page = await context.newPage();
  const errors = [];
  const requests = [];
  page.on('console', (message) => message.type() === 'error' && errors.push(message.text()));
  page.on('pageerror', (error) => errors.push(String(error)));
  page.on('request', (request) => requests.push(request.url()));
  await page.goto(base);
  await page.fill('textarea[name=token]', token);
  await page.click('button[type=submit]');
  await page.waitForSelector('nav [data-who]');
  return { context, page, errors, requests };
}

async function step(name, run) {
  try {
    await run();
    console.log(`ok    ${name}`);
  } catch (error) {
    failed = true;
    console.log(`FAIL  ${name}: ${error.message.split('\n')[0]}`);
  }
}

/** Changes the route, and waits until the console has rendered it (not the page before it). */
async function navigate(page, hash) {
  await page.evaluate((h) => { location.hash = h; }, hash);
  await page.waitForSelector(`main[data-route="${hash}"]`, { timeout: 15000 });
}

async function visit(s, name, hash, ready = '[data-ready]') {
  await step(`${name} loads without a console error`, async () => {
    s.errors.length = 0;
    await navigate(s.page, hash);
    await s.page.waitForSelector(`main[data-route="${hash}"] ${ready}`, { timeout: 15000 });
    await s.page.waitForLoadState('networkidle').catch(() => {});
    shot += 1;
    await s.page.screenshot({ path: join(artifacts, `${String(shot).padStart(2, '0')}-${name}.png`), fullPage: true });
    if (s.errors.length) throw new Error(`console errors: ${s.errors.join(' | ')}`);
  });
}

/** Runs `run`, then fails on console errors other than the network errors of the statuses `expected` allows. */
async function quietly(s, expected, run) {
  s.errors.length = 0;
  await run();
  const unexpected = s.errors.filter((e) => !expected.some((status) => e.includes(`status of ${status}`)));
  if (unexpected.length) throw new Error(`console errors: ${unexpected.join(' | ')}`);
}

const admin = await session(adminToken);
await visit(admin, 'overview', '#/overview', '[data-chart=requests]');
await visit(admin, 'flags', '#/flags');
await visit(admin, 'flags-stale-filter', '#/flags?stale=false&type=release');
await visit(admin, 'flag-edit', '#/flags/beta?tab=edit', 'form.flag-form');
await visit(admin, 'flag-overrides', '#/flags/beta?tab=overrides');
await visit(admin, 'flag-explain', '#/flags/beta?tab=explain');
await visit(admin, 'flag-audit', '#/flags/beta?tab=audit');
await visit(admin, 'webhooks', '#/webhooks?provider=acme');
await visit(admin, 'delivery', `#/webhooks/acme/${delivery}`);
await visit(admin, 'jobs', '#/jobs');
await visit(admin, 'job', `#/jobs/${pendingJob}`);
await visit(admin, 'audit-log', '#/audit');
await visit(admin, 'gdpr', '#/gdpr', '[data-map]');

await step('editing a flag shows the change, before and after, in its audit trail', async () => {
  const p = admin.page;
  await navigate(p, '#/flags/beta?tab=edit');
  await p.waitForSelector('form.flag-form input[name=description]');
  await p.fill('input[name=description]', 'Beta, edited in the console');
  await quietly(admin, [], async () => {
    await p.click('form.flag-form button[type=submit]');
    await p.waitForSelector('form.flag-form .ok');
  });
  await navigate(p, '#/flags/beta?tab=audit');
  const after = await p.waitForSelector('ol.audit li:first-child tr[data-field=description] td.after');
  const before = await p.$('ol.audit li:first-child tr[data-field=description] td.before');
  if (!(await after.textContent()).includes('edited in the console')) throw new Error('the audit entry lacks the new text');
  if (!(await before.textContent()).includes('"Beta"')) throw new Error(`before is ${await before.textContent()}`);
  shot += 1;
  await p.screenshot({ path: join(artifacts, `${String(shot).padStart(2, '0')}-flag-audit-after-edit.png`), fullPage: true });
});

await step("a refused edit shows the API's pointer on the field it names", async () => {
  const p = admin.page;
  await navigate(p, '#/flags/beta?tab=edit');
  await p.waitForSelector('textarea[name=rules]');
  await p.fill('textarea[name=rules]', '[{"constraints": [{"field": "plan", "operator": "NOPE", "values": ["x"]}]}]');
  await quietly(admin, [422], async () => {
    await p.click('form.flag-form button[type=submit]');
    const error = await p.waitForSelector('[data-field=rules] .error');
    const pointer = await error.getAttribute('data-pointer');
    if (!pointer.startsWith('/rules/0')) throw new Error(`the error is on ${pointer}`);
  });
  shot += 1;
  await p.screenshot({ path: join(artifacts, `${String(shot).padStart(2, '0')}-flag-422-pointer.png`), fullPage: true });
});

await step('replaying a delivery queues it again', async () => {
  const p = admin.page;
  await navigate(p, `#/webhooks/acme/${delivery}`);
  const replays = Number(await (await p.waitForSelector('[data-replays]')).textContent());
  await quietly(admin, [], async () => {
    await p.click('[data-action=replay]');
    await p.waitForSelector('.ok');
  });
  await p.waitForFunction((n) => Number(document.querySelector('[data-replays]').textContent) === n, replays + 1);
});

await step('redriving the dead-letter queue answers what it moved', async () => {
  const p = admin.page;
  await navigate(p, '#/webhooks?provider=acme');
  await p.waitForSelector('[data-action=redrive]');
  await quietly(admin, [], async () => {
    await p.click('[data-action=redrive]');
    await p.waitForSelector('[data-redriven]');
  });
});

await step('a cancelled job shows as cancelled through the live feed', async () => {
  const p = admin.page;
  await navigate(p, `#/jobs/${pendingJob}`);
  await p.waitForSelector('[data-stream=live]', { timeout: 15000 });
  await quietly(admin, [], async () => {
    await p.click('[data-action=cancel]');
    await p.waitForSelector('.ok');
    await p.waitForSelector('[data-status=cancelled]', { timeout: 20000 });
  });
  shot += 1;
  await p.screenshot({ path: join(artifacts, `${String(shot).padStart(2, '0')}-job-cancelled-live.png`), fullPage: true });
});

const member = await session(memberToken);
await visit(member, 'member-jobs', '#/jobs');
await visit(member, 'member-audit-log', '#/audit');
await visit(member, 'member-my-data', '#/my-data');
await step('a member sees no admin page and cannot reach one', async () => {
  const p = member.page;
  const links = await p.$$eval('nav [data-nav]', (as) => as.map((a) => a.dataset.nav));
  for (const adminPage of ['overview', 'flags', 'webhooks', 'gdpr']) {
    if (links.includes(adminPage)) throw new Error(`the member's navigation links ${adminPage}`);
  }
  member.requests.length = 0;
  for (const hash of ['#/flags', '#/webhooks?provider=acme', '#/gdpr', '#/overview']) {
    await navigate(p, hash);
    await p.waitForSelector(`main[data-route="${hash}"] [data-denied]`);
  }
  await p.waitForLoadState('networkidle').catch(() => {});
  const adminCalls = member.requests.filter((url) => url.includes('/v1/admin') || url.includes('/v1/webhooks'));
  if (adminCalls.length) throw new Error(`the member's page called ${adminCalls.join(', ')}`);
  shot += 1;
  await p.screenshot({ path: join(artifacts, `${String(shot).padStart(2, '0')}-member-denied.png`), fullPage: true });
});

if (oidcUser) {
  await step('signing in through the issuer (authorization code with PKCE) gives a working session', async () => {
    const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
    const page = await context.newPage();
    const errors = [];
    page.on('console', (message) => message.type() === 'error' && errors.push(message.text()));
    page.on('pageerror', (error) => errors.push(String(error)));
    await page.goto(base);
    await page.click('[data-action=oidc]');
    await page.waitForSelector('#allow');
    shot += 1;
    await page.screenshot({ path: join(artifacts, `${String(shot).padStart(2, '0')}-issuer-sign-in.png`) });
    await page.click('#allow');
    const who = await page.waitForSelector('nav [data-who]');
    if (!(await who.textContent()).includes(oidcUser)) throw new Error(`signed in as ${await who.textContent()}`);
    await navigate(page, '#/jobs');
    await page.waitForSelector('main[data-route="#/jobs"] [data-ready]');
    await page.waitForSelector('[data-stream=live]', { timeout: 15000 });
    if (errors.length) throw new Error(`console errors: ${errors.join(' | ')}`);
    shot += 1;
    await page.screenshot({ path: join(artifacts, `${String(shot).padStart(2, '0')}-issuer-signed-in.png`), fullPage: true });
    await context.close();
  });

  await step('a denied sign-in and a return this tab did not start are refused, saying why', async () => {
    const context = await browser.newContext();
    const page = await context.newPage();
    await page.goto(base);
    await page.click('[data-action=oidc]');
    await page.click('#deny');
    const denied = await page.waitForSelector('.signin [role=alert]');
    if (!(await denied.textContent()).includes('access_denied')) throw new Error(await denied.textContent());
    await page.goto(`${base}?code=forged&state=forged`);
    const forged = await page.waitForSelector('.signin [role=alert]');
    if (!(await forged.textContent()).includes('not started here')) throw new Error(await forged.textContent());
    if (await page.$('nav [data-who]')) throw new Error('signed in anyway');
    await context.close();
  });
}

await browser.close();
process.exit(failed ? 1 : 0);
