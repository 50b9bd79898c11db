#!/usr/bin/env node
// Headless-Chromium check of a lapseguard project gallery page.
//
// Usage:
//   node tests/browser/gallery.mjs --url <gallery URL incl. ?key=...> --expect <min thumbnails>
//        --originals <file: one lowercase hex sha256 per line> --screenshot <png path>
//
// Setup: eval "$(scripts/browser-deps.sh)"; export LAPSEGUARD_CHROMIUM
// (Debian's chromium + playwright-core from tests/browser/package-lock.json; no browser
// download). The browser is LAPSEGUARD_CHROMIUM, default /usr/bin/chromium.
//
// Gallery contract checked here:
//   * GET /projects/{slug}?key=<viewer key> sets a cookie and redirects to /projects/{slug};
//     the page is server-rendered HTML (no JS needed).
//   * each thumbnail is <img class="thumb" src="/projects/{slug}/thumbs/{image_id}.jpg">
//     wrapped in <a href="/projects/{slug}/images/{image_id}"> (full-size anonymized image);
//     images not yet anonymized are a `.pending` placeholder without an <img>;
//   * a next-page link carries rel="next".
//
// Assertions (any failure: message on stderr, exit 1; success: one summary line, exit 0):
//   1. the final URL no longer contains "key=";
//   2. at least --expect img.thumb elements, each complete with naturalWidth > 0 (30 s wait);
//      each is wrapped in <a href> to /projects/{slug}/images/{id} matching its thumbs/{id}.jpg;
//   3. every URL the page references (any src/srcset/href/poster/action/... attribute,
//      url()/@import in style attributes and <style> tags, url() in fetched stylesheets)
//      and every request the page made is same-origin, contains no "/original" path
//      segment and does not carry the viewer key;
//   4. every such same-origin URL, fetched with the page's cookies, returns a body whose
//      sha256 is not in --originals (data: URLs are decoded and hashed too);
//   5. thumbnails answer 200 image/jpeg; one full-size link answers 200 image/*.
// A full-page screenshot is written to --screenshot (also when a check fails, once the
// page has loaded).

import { createHash } from 'node:crypto';
import { mkdir, mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import process from 'node:process';
import { parseArgs } from 'node:util';
import { chromium } from 'playwright-core';

const THUMB_WAIT_MS = 30_000;
const NAV_TIMEOUT_MS = 30_000;
const FETCH_TIMEOUT_MS = 30_000;

// Chromium must run with these on our machines: without the background-networking
// flags its connection attempts are refused by the closed network.
const CHROMIUM_ARGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
];

class CheckFailed extends Error {}

function die(msg) {
  process.stderr.write(`gallery check: ${msg}\n`);
  process.exit(2);
}

function parseCli() {
  let values;
  try {
    ({ values } = parseArgs({
      options: {
        url: { type: 'string' },
        expect: { type: 'string' },
        originals: { type: 'string' },
        screenshot: { type: 'string' },
        help: { type: 'boolean', short: 'h' },
      },
      strict: true,
      allowPositionals: false,
    }));
  } catch (e) {
    die(`${e.message}\nusage: node tests/browser/gallery.mjs --url URL --expect N --originals FILE --screenshot PNG`);
  }
  if (values.help) {
    process.stdout.write('usage: node tests/browser/gallery.mjs --url URL --expect N --originals FILE --screenshot PNG\n');
    process.exit(0);
  }
  for (const k of ['url', 'expect', 'originals', 'screenshot']) {
    if (!values[k]) die(`missing --${k}`);
  }
  let url;
  try {
    url = new URL(values.url);
  } catch {
    die(`--url is not an absolute URL: ${values.url}`);
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') die(`--url must be http(s): ${values.url}`);
  if (!/^\d+$/.test(values.expect) || Number(values.expect) < 1) die(`--expect must be an integer >= 1: ${values.expect}`);
  return { url, expect: Number(values.expect), originals: values.originals, screenshot: values.screenshot };
}

async function loadOriginals(file) {
  let text;
  try {
    text = await readFile(file, 'utf8');
  } catch (e) {
    die(`cannot read --originals ${file}: ${e.message}`);
  }
  const set = new Set();
  text.split(/\r?\n/).forEach((line, i) => {
    const s = line.trim();
    if (s === '' || s.startsWith('#')) return;
    if (!/^[0-9a-f]{64}$/.test(s)) die(`${file}:${i + 1}: not a lowercase hex sha256: ${JSON.stringify(s)}`);
    set.add(s);
  });
  if (set.size === 0) die(`${file}: no sha256 in it (the check would prove nothing)`);
  return set;
}

const sha256 = (buf) => createHash('sha256').update(buf).digest('hex');

// url(...) and @import "..." references in CSS text.
function cssUrls(css) {
  const out = [];
  const re = /url\(\s*(?:"([^"]*)"|'([^']*)'|([^)'"\s]*))\s*\)|@import\s+(?:"([^"]*)"|'([^']*)')/gi;
  for (const m of css.matchAll(re)) {
    const u = m[1] ?? m[2] ?? m[3] ?? m[4] ?? m[5];
    if (u) out.push(u);
  }
  return out;
}

// Runs in the page: every URL-bearing attribute, srcset, and CSS in style attributes and
// <style> elements. Returns [{raw, resolved, where}]; resolved against document.baseURI.
function collectDomUrls() {
  const found = [];
  const resolve = (raw) => {
    try {
      return new URL(raw, document.baseURI).href;
    } catch {
      return null;
    }
  };
  const add = (raw, where) => {
    if (raw == null) return;
    raw = String(raw).trim();
    if (raw === '') return;
    found.push({ raw, resolved: resolve(raw), where });
  };
  const srcset = (v, where) => {
    // candidate = URL [descriptor], separated by commas
    let i = 0;
    while (i < v.length) {
      while (i < v.length && /[\s,]/.test(v[i])) i++;
      let j = i;
      while (j < v.length && !/\s/.test(v[j])) j++;
      let u = v.slice(i, j);
      let trailingComma = false;
      if (u.endsWith(',')) {
        u = u.replace(/,+$/, '');
        trailingComma = true;
      }
      if (u) add(u, where);
      i = j;
      if (!trailingComma) {
        while (i < v.length && v[i] !== ',') i++;
      }
    }
  };
  const css = (text, where) => {
    const re = /url\(\s*(?:"([^"]*)"|'([^']*)'|([^)'"\s]*))\s*\)|@import\s+(?:"([^"]*)"|'([^']*)')/gi;
    for (const m of text.matchAll(re)) add(m[1] ?? m[2] ?? m[3] ?? m[4] ?? m[5], where);
  };
  const URL_ATTRS = ['src', 'href', 'xlink:href', 'poster', 'action', 'formaction', 'data', 'background',
    'cite', 'longdesc', 'manifest', 'ping', 'icon', 'lowsrc', 'dynsrc', 'itemtype'];
  for (const el of document.querySelectorAll('*')) {
    const tag = el.tagName.toLowerCase();
    for (const attr of el.attributes) {
      const name = attr.name.toLowerCase();
      const where = `<${tag} ${name}>`;
      if (URL_ATTRS.includes(name)) {
        if (name === 'ping') attr.value.split(/\s+/).forEach((u) => add(u, where));
        else add(attr.value, where);
      } else if (name === 'srcset' || name === 'imagesrcset') {
        srcset(attr.value, where);
      } else if (name === 'style') {
        css(attr.value, where);
      } else if (name === 'content' && tag === 'meta') {
        const m = /^\s*\d*\s*[;,]\s*url\s*=\s*['"]?([^'"]+)/i.exec(attr.value);
        if (m) add(m[1], '<meta refresh>');
      }
    }
    if (tag === 'style') css(el.textContent || '', '<style>');
  }
  return found;
}

async function main() {
  const args = parseCli();
  const originals = await loadOriginals(args.originals);
  const executablePath = process.env.LAPSEGUARD_CHROMIUM || '/usr/bin/chromium';
  const startUrl = args.url.href;
  const origin = args.url.origin;
  const viewerKey = args.url.searchParams.get('key');

  const failures = [];
  const fail = (msg) => failures.push(msg);

  const userDataDir = await mkdtemp(path.join(tmpdir(), 'lapseguard-chromium-'));
  let context;
  try {
    try {
      context = await chromium.launchPersistentContext(userDataDir, {
        executablePath,
        headless: true,
        args: CHROMIUM_ARGS,
        viewport: { width: 1280, height: 900 },
        timeout: 60_000,
      });
    } catch (e) {
      throw new CheckFailed(`cannot start chromium (${executablePath}): ${e.message}`);
    }
    const page = context.pages()[0] ?? (await context.newPage());
    page.setDefaultTimeout(NAV_TIMEOUT_MS);

    // Every request the page makes (redirect hops included), in order.
    const requested = [];
    page.on('request', (r) => requested.push(r.url()));

    let response;
    try {
      response = await page.goto(startUrl, { waitUntil: 'load', timeout: NAV_TIMEOUT_MS });
      await page.waitForLoadState('networkidle', { timeout: NAV_TIMEOUT_MS });
    } catch (e) {
      throw new CheckFailed(`loading ${startUrl} failed: ${e.message.split('\n')[0]}`);
    }
    if (!response) throw new CheckFailed(`no response for ${startUrl}`);
    if (!response.ok()) throw new CheckFailed(`gallery page answered ${response.status()} ${response.statusText()} (${response.url()})`);

    const finalUrl = page.url();
    if (finalUrl.includes('key=')) fail(`final URL still contains "key=": ${finalUrl} (expected a redirect that drops the key)`);
    const redirectHops = [];
    for (let r = response.request().redirectedFrom(); r; r = r.redirectedFrom()) {
      const resp = await r.response();
      redirectHops.unshift(`${resp ? resp.status() : '?'} ${r.url()}`);
    }

    // Thumbnails: enough of them, all decoded.
    let thumbsReady = true;
    try {
      await page.waitForFunction(
        (min) => {
          const imgs = [...document.querySelectorAll('img.thumb')];
          return imgs.length >= min && imgs.every((i) => i.complete && i.naturalWidth > 0);
        },
        args.expect,
        { timeout: THUMB_WAIT_MS, polling: 250 },
      );
    } catch {
      thumbsReady = false;
    }
    const thumbs = await page.$$eval('img.thumb', (imgs) =>
      imgs.map((i) => {
        const a = i.closest('a[href]');
        return {
          src: i.src,
          rawSrc: i.getAttribute('src'),
          complete: i.complete,
          naturalWidth: i.naturalWidth,
          link: a ? a.href : null,
        };
      }),
    );
    const pendingCount = await page.locator('.pending').count();
    const nextLink = await page.$eval('[rel~="next"][href]', (a) => a.href).catch(() => null);

    // Screenshot now, so it exists for diagnosis even when a later check fails.
    await mkdir(path.dirname(path.resolve(args.screenshot)), { recursive: true });
    await page.screenshot({ path: args.screenshot, fullPage: true });

    if (thumbs.length < args.expect) {
      fail(`expected at least ${args.expect} img.thumb, found ${thumbs.length} (pending placeholders: ${pendingCount}) after ${THUMB_WAIT_MS / 1000} s`);
    }
    const broken = thumbs.filter((t) => !(t.complete && t.naturalWidth > 0));
    for (const t of broken) fail(`thumbnail not loaded (complete=${t.complete}, naturalWidth=${t.naturalWidth}): ${t.src}`);
    if (!thumbsReady && thumbs.length >= args.expect && broken.length === 0) {
      fail(`thumbnails did not settle within ${THUMB_WAIT_MS / 1000} s`);
    }

    // Contract: thumbs/{id}.jpg inside <a href=".../images/{id}">.
    for (const t of thumbs) {
      let tp;
      try {
        tp = new URL(t.src).pathname;
      } catch {
        fail(`thumbnail with unusable src: ${JSON.stringify(t.rawSrc)}`);
        continue;
      }
      const m = /^(\/projects\/[^/]+)\/thumbs\/([^/]+)\.jpg$/.exec(tp);
      if (!m) {
        fail(`thumbnail src does not match /projects/{slug}/thumbs/{image_id}.jpg: ${t.src}`);
        continue;
      }
      if (!t.link) {
        fail(`thumbnail is not wrapped in <a href>: ${t.src}`);
        continue;
      }
      const lp = new URL(t.link).pathname;
      if (lp !== `${m[1]}/images/${m[2]}`) fail(`thumbnail ${t.src} links to ${t.link}, expected ${m[1]}/images/${m[2]}`);
    }

    // Every referenced URL plus every request made.
    const refs = await page.evaluate(collectDomUrls);
    const pageRequests = [...requested];
    const entries = []; // {url, where}
    for (const r of refs) {
      if (r.resolved === null) fail(`unparsable URL ${JSON.stringify(r.raw)} in ${r.where}`);
      else entries.push({ url: r.resolved, where: r.where });
    }
    for (const u of pageRequests) entries.push({ url: u, where: 'request' });

    const fetchQueue = new Map(); // url -> where (first seen)
    const dataUrls = new Map();
    const checked = new Set();
    let skippedSchemes = 0;

    const checkUrl = (u, where) => {
      if (checked.has(`${where}\u0000${u}`)) return;
      checked.add(`${where}\u0000${u}`);
      const parsed = new URL(u);
      if (parsed.protocol === 'data:') {
        dataUrls.set(u, where);
        return;
      }
      if (parsed.protocol !== 'http:' && parsed.protocol !== 'https:') {
        // mailto:, tel:, javascript:, about:, blob: (same-document) — nothing to fetch.
        if (!['mailto:', 'tel:', 'javascript:', 'about:', 'blob:'].includes(parsed.protocol)) {
          fail(`unexpected URL scheme in ${where}: ${u}`);
        }
        skippedSchemes++;
        return;
      }
      if (parsed.origin !== origin) {
        fail(`cross-origin URL in ${where}: ${u} (page origin ${origin})`);
        return;
      }
      if (/\/original/i.test(u) || /\/original/i.test(decodeURIComponentSafe(u))) {
        fail(`URL to an original in ${where}: ${u}`);
      }
      const isStart = u === startUrl && where === 'request';
      if (viewerKey && !isStart && (u.includes(viewerKey) || decodeURIComponentSafe(u).includes(viewerKey))) {
        fail(`URL in ${where} carries the viewer key: ${u}`);
      }
      if (!isStart) {
        const key = parsed.href.split('#')[0];
        if (!fetchQueue.has(key)) fetchQueue.set(key, where);
      }
    };
    for (const { url, where } of entries) checkUrl(url, where);

    // data: URLs — hash the payload (an inlined original would otherwise go unseen).
    for (const [u, where] of dataUrls) {
      const m = /^data:([^,]*?)(;base64)?,(.*)$/is.exec(u);
      if (!m) continue;
      const body = m[2] ? Buffer.from(m[3], 'base64') : Buffer.from(decodeURIComponentSafe(m[3]), 'utf8');
      if (originals.has(sha256(body))) fail(`data: URL in ${where} is an original (sha256 ${sha256(body)})`);
    }

    // Fetch with the page's cookies. Thumbs and the full-size link first, so that an
    // unexpected side effect of some other link (a logout, say) cannot mask them.
    const thumbUrls = new Set(thumbs.map((t) => t.src.split('#')[0]));
    const fullUrl = thumbs.find((t) => t.link)?.link?.split('#')[0] ?? null;
    const ordered = [...fetchQueue.keys()].sort((a, b) => rank(a) - rank(b));
    function rank(u) {
      return thumbUrls.has(u) ? 0 : u === fullUrl ? 1 : 2;
    }
    const fetched = new Map(); // url -> {status, type, sha}
    for (let i = 0; i < ordered.length; i++) {
      const u = ordered[i];
      let resp;
      try {
        resp = await page.request.get(u, { timeout: FETCH_TIMEOUT_MS, failOnStatusCode: false });
      } catch (e) {
        fail(`fetching ${u} (from ${fetchQueue.get(u)}) failed: ${e.message.split('\n')[0]}`);
        continue;
      }
      const body = await resp.body();
      const type = (resp.headers()['content-type'] || '').toLowerCase();
      const sha = sha256(body);
      fetched.set(u, { status: resp.status(), type, sha, finalUrl: resp.url() });
      if (originals.has(sha)) fail(`ORIGINAL REACHABLE: ${u} (from ${fetchQueue.get(u)}) returned an original (sha256 ${sha})`);
      if (resp.url().split('#')[0] !== u) {
        // page.request follows redirects: the final address must pass the same checks.
        if (new URL(resp.url()).origin !== origin) fail(`${u} redirected off-origin to ${resp.url()}`);
        else if (/\/original/i.test(resp.url())) fail(`${u} redirected to an original: ${resp.url()}`);
      }
      // Stylesheets can reference more URLs; check and fetch those as well.
      if (type.startsWith('text/css') && resp.ok()) {
        for (const raw of cssUrls(body.toString('utf8'))) {
          let abs;
          try {
            abs = new URL(raw, resp.url()).href;
          } catch {
            fail(`unparsable URL ${JSON.stringify(raw)} in stylesheet ${u}`);
            continue;
          }
          const before = fetchQueue.size;
          checkUrl(abs, `stylesheet ${u}`);
          if (fetchQueue.size > before) ordered.push(abs.split('#')[0]);
        }
      }
    }

    for (const u of thumbUrls) {
      const f = fetched.get(u);
      if (!f) continue; // already reported (fetch failure or not same-origin)
      if (f.status !== 200) fail(`thumbnail ${u} answered ${f.status}, expected 200`);
      else if (!f.type.startsWith('image/jpeg')) fail(`thumbnail ${u} has content-type ${JSON.stringify(f.type)}, expected image/jpeg`);
    }
    if (!fullUrl) {
      fail('no thumbnail is wrapped in a link to its full-size image');
    } else {
      const f = fetched.get(fullUrl);
      if (f) {
        if (f.status !== 200) fail(`full-size image ${fullUrl} answered ${f.status}, expected 200`);
        else if (!f.type.startsWith('image/')) fail(`full-size image ${fullUrl} has content-type ${JSON.stringify(f.type)}, expected image/*`);
      }
    }

    if (failures.length) {
      process.stderr.write(`gallery check FAILED (${failures.length} problem${failures.length > 1 ? 's' : ''}) for ${startUrl}:\n`);
      for (const f of failures) process.stderr.write(`  - ${f}\n`);
      process.stderr.write(`  (final URL ${finalUrl}; screenshot ${args.screenshot})\n`);
      return 1;
    }
    const uniqueUrls = new Set(entries.map((e) => e.url.split('#')[0]));
    process.stdout.write(
      `gallery OK: ${thumbs.length} thumbnails (>= ${args.expect}), ${pendingCount} pending, ` +
        `${uniqueUrls.size} URLs checked (${fetched.size} fetched, ${pageRequests.length} requests, ` +
        `${dataUrls.size} data:, ${skippedSchemes} other-scheme), 0 of ${originals.size} originals reachable, ` +
        `redirect ${redirectHops.length ? redirectHops.join(' -> ') : 'none'} -> ${finalUrl}, ` +
        `next ${nextLink ?? 'none'}, screenshot ${args.screenshot}\n`,
    );
    return 0;
  } finally {
    if (context) await context.close().catch(() => {});
    await rm(userDataDir, { recursive: true, force: true }).catch(() => {});
  }
}

function decodeURIComponentSafe(s) {
  try {
    return decodeURIComponent(s);
  } catch {
    return s;
  }
}

main().then(
  (code) => process.exit(code),
  (e) => {
    if (e instanceof CheckFailed) {
      process.stderr.write(`gallery check FAILED: ${e.message}\n`);
    } else {
      process.stderr.write(`gallery check FAILED with an unexpected error: ${e && e.stack ? e.stack : e}\n`);
    }
    process.exit(1);
  },
);
