// facesearch's web page: sign in with an API key, recognize the faces of a photo, manage the people
// of a domain. One dependency-free module that speaks to the v1 API with fetch().
//
// - The key is kept in sessionStorage (this tab only, gone when it closes) and sent as
//   "Authorization: Bearer"; an <img src> cannot send it, so thumbnails are fetched and shown
//   through blob: URLs.
// - Text from the API is always inserted as text (textContent / text nodes), never as HTML.
// - Every failure ends as a readable message in #message: API errors carry
//   {"error": {"code", "message"}}, network failures and bugs get one of their own.

const KEY = 'facesearch.key';
const DOMAIN = 'facesearch.domain';
const PAGE_SIZE = 48; // people per page of the list
const UPLOADS_AT_ONCE = 2; // enrollment requests in flight (one photo each, so progress is real)

const state = {
  key: sessionStorage.getItem(KEY),
  domain: sessionStorage.getItem(DOMAIN),
  admin: false,
  checked: false, // the key has been checked with the server since the page loaded
  domainInfo: null, // GET /v1/domains/{domain}: its model and default threshold
  people: { q: '', offset: 0 },
  route: 0, // bumped on every navigation: slow answers for a page left meanwhile are dropped
};

// -- small helpers ------------------------------------------------------------------------------

const $ = (selector) => document.querySelector(selector);

/** Build an element: h('a', {href: '#'}, 'text', child). Strings become text nodes. */
function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value == null || value === false) continue;
    if (name === 'class') el.className = value;
    else if (name === 'style') Object.assign(el.style, value);
    else if (name.startsWith('on')) el.addEventListener(name.slice(2), value);
    else el.setAttribute(name, value === true ? '' : String(value));
  }
  el.append(...children.flat().filter((c) => c != null && c !== false));
  return el;
}

const plural = (n, one, many = `${one}s`) => `${n} ${n === 1 ? one : many}`;
const ms = (v) => (v >= 100 ? v.toFixed(0) : v.toFixed(1));
const pct = (v) => `${(Math.min(1, Math.max(0, v)) * 100).toFixed(3)}%`;
const domainPath = (rest = '') => `/v1/domains/${encodeURIComponent(state.domain)}${rest}`;

function initials(name) {
  const words = name.trim().split(/[\s_]+/u).filter(Boolean);
  return (words.slice(0, 2).map((w) => [...w][0]).join('') || '?').toUpperCase();
}

// -- the API ------------------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, code, message, details = null) {
    super(message);
    this.status = status;
    this.code = code;
    this.details = details;
  }
}

/** Send a request with the key; resolve to its raw Response if ok, else throw an ApiError. */
async function request(path, { method = 'GET', json, body } = {}) {
  const headers = { Authorization: `Bearer ${state.key}` };
  if (json !== undefined) {
    headers['Content-Type'] = 'application/json';
    body = JSON.stringify(json);
  }
  let response;
  try {
    response = await fetch(path, { method, headers, body, cache: 'no-store' });
  } catch (err) {
    throw new ApiError(0, 'network_error',
      `Cannot reach the facesearch server (${err.message}). Check that it is running and try again.`);
  }
  if (response.ok) return response;
  let error = null;
  try {
    error = (await response.json()).error;
  } catch {
    // Not our JSON (a proxy's error page, say): fall back to the status line.
  }
  throw new ApiError(response.status, error?.code ?? 'http_error',
    error?.message ?? `The server answered ${response.status} ${response.statusText}.`.trim(),
    error?.details ?? null);
}

/** A JSON API call: the parsed body (null for 204). */
async function api(path, options) {
  const response = await request(path, options);
  return response.status === 204 ? null : response.json();
}

// Thumbnails never change for a face id, so each is fetched once per sign-in and kept as a blob:
// URL (revoked on sign-out, domain change or when the face is deleted).
const thumbnails = new Map(); // face id -> Promise<string | null>

function thumbnailUrl(faceId) {
  if (!thumbnails.has(faceId)) {
    thumbnails.set(faceId, request(domainPath(`/faces/${faceId}/thumbnail`))
      .then((r) => r.blob())
      .then((blob) => URL.createObjectURL(blob))
      .catch(() => null)); // a missing thumbnail leaves the initials in place: not worth an alert
  }
  return thumbnails.get(faceId);
}

function forgetThumbnails(faceId = null) {
  for (const [id, promise] of thumbnails) {
    if (faceId !== null && id !== faceId) continue;
    promise.then((url) => url && URL.revokeObjectURL(url));
    thumbnails.delete(id);
  }
}

/** A square thumbnail: the initials at once, the face crop when (and if) it arrives. */
function thumbnail(faceId, name, alt) {
  const box = h('span', { class: 'thumb', 'aria-hidden': alt ? null : 'true' },
    h('span', { class: 'initials' }, initials(name)));
  if (faceId != null) {
    thumbnailUrl(faceId).then((url) => {
      if (url) box.replaceChildren(h('img', { src: url, alt: alt ?? '', width: 112, height: 112 }));
    });
  }
  return box;
}

// -- messages -----------------------------------------------------------------------------------

function showMessage(text, kind = 'error') {
  const box = $('#message');
  box.className = `message ${kind}`;
  box.setAttribute('role', kind === 'error' ? 'alert' : 'status');
  $('#message-text').textContent = text;
  box.hidden = false;
}

function clearMessage() {
  $('#message').hidden = true;
}

/** Show any failure as a message; a refused key sends the user back to sign in. */
function handleError(err) {
  if (err instanceof ApiError) {
    if (err.status === 401) {
      signOut();
      showMessage(`Your key was refused: ${err.message}`);
      return;
    }
    showMessage(err.status ? `${err.message} (${err.code}, HTTP ${err.status})` : err.message);
    return;
  }
  console.error(err);
  showMessage(`Something went wrong in this page: ${err?.message ?? err}. Reload to start again.`);
}

// -- views and navigation ------------------------------------------------------------------------

function show(view) {
  for (const section of document.querySelectorAll('main > .view')) {
    section.hidden = section.id !== `view-${view}`;
  }
  const signedIn = Boolean(state.key && state.domain) && view !== 'signin';
  $('#nav').hidden = !signedIn;
  $('#session').hidden = !(state.key && state.checked);
  $('#session-domain').textContent = state.domain ?? '–';
  $('#change-domain').hidden = !state.domain || !state.admin;
  for (const link of document.querySelectorAll('#nav a')) {
    const current = link.dataset.view === view || (view === 'person' && link.dataset.view === 'people');
    if (current) link.setAttribute('aria-current', 'page');
    else link.removeAttribute('aria-current');
  }
}

async function route() {
  const token = ++state.route;
  const hash = location.hash || '#/recognize';
  try {
    if (!state.key) {
      show('signin');
      $('#signin-key').focus();
      return;
    }
    if (!state.checked) await checkKey();
    if (token !== state.route) return;
    if (!state.domain || hash === '#/domain') {
      await renderDomains(token);
      return;
    }
    const person = hash.match(/^#\/people\/(\d+)$/);
    if (person) await renderPerson(Number(person[1]), token);
    else if (hash.startsWith('#/people')) await renderPeople(token, true);
    else if (hash === '#/unknown') await renderUnknown(token);
    else if (hash === '#/audit') await renderAudit(token);
    else {
      showRecognizeDefaults();
      show('recognize');
    }
  } catch (err) {
    handleError(err);
  }
}

const current = (token) => token === state.route;

// -- signing in, domains -------------------------------------------------------------------------

/** What is the key (GET /v1/whoami)? A domain key reaches one domain, opened for its holder; the
 * admin's stored domain is checked, and the only domain an admin has is chosen for them. */
async function checkKey() {
  show('loading');
  const who = await api('/v1/whoami');
  state.admin = who.admin;
  if (!who.admin) setDomain(who.domain);
  else if (!state.domain) {
    const { domains } = await api('/v1/domains');
    if (domains.length === 1) setDomain(domains[0].name);
  }
  state.checked = true;
  if (state.domain) {
    try {
      state.domainInfo = await api(domainPath());
    } catch (err) {
      if (!(err instanceof ApiError) || ![403, 404, 422].includes(err.status)) throw err;
      setDomain(null); // gone: choose again
    }
  }
}

function setDomain(name, info = null) {
  if (name !== state.domain) forgetThumbnails();
  state.domain = name;
  state.domainInfo = info;
  state.people = { q: '', offset: 0 };
  $('#people-search').value = '';
  if (name) sessionStorage.setItem(DOMAIN, name);
  else sessionStorage.removeItem(DOMAIN);
}

function signOut() {
  sessionStorage.removeItem(KEY);
  sessionStorage.removeItem(DOMAIN);
  forgetThumbnails();
  Object.assign(state, { key: null, domain: null, admin: false, checked: false });
  resetRecognize();
  // Back to the bare page without a hashchange (which would clear the message saying why).
  history.replaceState(null, '', location.pathname);
  route();
}

$('#signin-form').addEventListener('submit', async (event) => {
  event.preventDefault();
  clearMessage();
  const input = $('#signin-key');
  state.key = input.value.trim();
  state.checked = false;
  try {
    await checkKey();
  } catch (err) {
    Object.assign(state, { key: null, checked: false });
    show('signin');
    const msg = err instanceof ApiError && err.status === 401 ? `That key was refused: ${err.message}` : null;
    if (msg) showMessage(msg);
    else handleError(err);
    input.select();
    return;
  }
  sessionStorage.setItem(KEY, state.key);
  input.value = '';
  route();
});

$('#sign-out').addEventListener('click', () => {
  clearMessage();
  signOut();
});

async function renderDomains(token) {
  if (!state.admin) { // a domain key has its one domain, opened at sign-in
    location.replace('#/people');
    return;
  }
  $('#domain-admin').hidden = false;
  const { domains } = await api('/v1/domains');
  if (!current(token)) return;
  $('#domain-none').hidden = domains.length > 0;
  $('#domain-list').replaceChildren(...domains.map((d) => h('li', {},
    h('button', { type: 'button', class: 'domain', 'aria-pressed': String(d.name === state.domain),
      onclick: () => openDomain(d.name) },
    h('strong', {}, d.name), h('span', { class: 'muted' },
      ` ${plural(d.people, 'person', 'people')}, ${plural(d.faces, 'face')}; model ${d.model}`)))));
  show('domain');
}

async function openDomain(name) {
  clearMessage();
  try {
    const previous = state.domain;
    state.domain = name;
    let info;
    try {
      info = await api(domainPath());
    } finally {
      state.domain = previous;
    }
    setDomain(info.name, info);
    resetRecognize();
    if (location.hash === '#/people') route();
    else location.hash = '#/people';
  } catch (err) {
    handleError(err);
  }
}

$('#domain-create').addEventListener('submit', async (event) => {
  event.preventDefault();
  clearMessage();
  const input = $('#domain-create-name');
  try {
    const created = await api('/v1/domains', { method: 'POST', json: { name: input.value.trim() } });
    input.value = '';
    await openDomain(created.name);
  } catch (err) {
    handleError(err);
  }
});

// -- drop zones ----------------------------------------------------------------------------------

/** A drop zone that is also a button opening the file picker (so it works by keyboard too). */
function dropZone(zone, input, onFiles) {
  zone.addEventListener('click', () => input.click());
  input.addEventListener('change', () => {
    const files = [...input.files];
    input.value = ''; // the same file again is a new choice
    if (files.length) onFiles(files);
  });
  zone.addEventListener('dragenter', (event) => {
    event.preventDefault();
    zone.classList.add('over');
  });
  zone.addEventListener('dragover', (event) => {
    event.preventDefault();
    event.dataTransfer.dropEffect = 'copy';
  });
  zone.addEventListener('dragleave', (event) => {
    if (!zone.contains(event.relatedTarget)) zone.classList.remove('over');
  });
  zone.addEventListener('drop', (event) => {
    event.preventDefault();
    zone.classList.remove('over');
    const files = [...(event.dataTransfer?.files ?? [])];
    if (files.length) onFiles(files);
  });
}

// A photo dropped beside a drop zone must not make the browser navigate away to it.
for (const type of ['dragover', 'drop']) {
  window.addEventListener(type, (event) => {
    if (!event.target.closest?.('.dropzone')) event.preventDefault();
  });
}

// -- recognize -----------------------------------------------------------------------------------

let recognizeRun = 0; // the latest photo's answer wins
let photoUrl = null;

function resetRecognize() {
  recognizeRun++;
  if (photoUrl) URL.revokeObjectURL(photoUrl);
  photoUrl = null;
  $('#recognize-result').hidden = true;
  $('#recognize-status').textContent = '';
  $('#recognize-notice').hidden = true;
  $('#recognize-boxes').replaceChildren();
  $('#recognize-faces').replaceChildren();
}

dropZone($('#recognize-drop'), $('#recognize-file'), (files) => recognize(files[0], files.length));

let recognizedFile = null; // recognized again when the threshold or the matches per face change

/** The domain's default threshold, shown where the user may override it. */
function showRecognizeDefaults() {
  const info = state.domainInfo;
  const input = $('#recognize-threshold');
  input.placeholder = info?.threshold != null ? String(info.threshold) : '';
  $('#recognize-threshold-hint').textContent = info?.threshold != null
    ? `Domain default ${info.threshold} (model ${info.model}); lower is stricter.` : '';
}

/** The recognize request's query: top_k and the threshold where they differ from the defaults (the
 * server's 5, the domain's threshold). */
function recognizeQuery() {
  const query = new URLSearchParams();
  const topK = $('#recognize-top-k');
  if (topK.value && topK.value !== topK.defaultValue && topK.checkValidity()) query.set('top_k', topK.value);
  const threshold = $('#recognize-threshold');
  if (threshold.value && threshold.checkValidity()) query.set('threshold', threshold.value);
  return query.toString();
}

for (const id of ['#recognize-threshold', '#recognize-top-k']) {
  $(id).addEventListener('change', () => {
    if (recognizedFile && $(id).checkValidity()) recognize(recognizedFile);
  });
}

async function recognize(file, count = 1) {
  clearMessage();
  resetRecognize();
  recognizedFile = file;
  const run = recognizeRun;
  photoUrl = URL.createObjectURL(file); // the local file itself: nothing to fetch
  $('#recognize-img').src = photoUrl;
  $('#recognize-timings').textContent = '';
  $('#recognize-status').textContent = `Recognizing ${file.name}…${count > 1 ? ' (the first of the photos dropped)' : ''}`;
  const form = new FormData();
  form.append('photo', file, file.name);
  try {
    const query = recognizeQuery();
    const result = await api(domainPath(`/recognize${query ? `?${query}` : ''}`), { method: 'POST', body: form });
    if (run !== recognizeRun) return;
    showRecognized(file, result);
  } catch (err) {
    if (run !== recognizeRun) return;
    $('#recognize-status').textContent = `${file.name}: not recognized.`;
    handleError(err);
  }
}

function matchText(m) {
  return `${m.name} (distance ${m.distance.toFixed(3)})`;
}

function showRecognized(file, result) {
  const { width, height } = result.image;
  // The figure takes the photo's proportions (so the boxes stay right even if this browser cannot
  // show its format): small photos are enlarged to 480 px wide, large ones fit the window.
  const stage = $('#recognize-stage');
  stage.style.aspectRatio = `${width} / ${height}`;
  stage.style.width = `min(100%, ${Math.max(width, 480)}px, ${(70 * width / height).toFixed(2)}vh)`;
  const known = result.faces.filter((f) => f.matches.length).length;
  let status = `${file.name}: ${plural(result.faces_found, 'face')} found`;
  if (result.faces_found) status += `, ${known} recognized`;
  if (result.faces.length < result.faces_found) status += ` (the ${result.faces.length} largest matched)`;
  $('#recognize-status').textContent = `${status}. Model ${result.model}, threshold ${result.threshold}.`;
  const notice = $('#recognize-notice');
  notice.hidden = result.faces.length >= result.faces_found;
  notice.textContent = notice.hidden ? '' : `This photo has ${result.faces_found} faces: only the `
    + `${result.faces.length} largest were matched (the server's limit, FACESEARCH_MAX_FACES).`;
  const t = result.timings_ms;
  $('#recognize-timings').textContent = Object.entries(t)
    .map(([step, v]) => `${step} ${ms(v)} ms`).join(' · ');

  const boxes = [];
  const items = [];
  result.faces.forEach((face, i) => {
    const [best, ...others] = face.matches;
    const b = face.box;
    const label = best ? best.name : 'unknown';
    const near = b.y / height < 0.12; // too close to the top for the name above the box
    const select = () => {
      for (const [j, el] of items.entries()) el.classList.toggle('selected', j === i);
      for (const [j, el] of boxes.entries()) el.classList.toggle('selected', j === i);
      items[i].scrollIntoView({ block: 'nearest', behavior: 'smooth' });
    };
    const popup = h('span', { class: 'popup' },
      face.matches.length
        ? h('ol', {}, face.matches.map((m) => h('li', {}, matchText(m))))
        : 'Nobody under the threshold.');
    boxes.push(h('button', {
      type: 'button',
      class: `box ${best ? 'known' : 'unknown'}${near ? ' label-below' : ''}`,
      style: { left: pct(b.x / width), top: pct(b.y / height),
        width: pct(Math.min(b.w, width - Math.max(0, b.x)) / width),
        height: pct(Math.min(b.h, height - Math.max(0, b.y)) / height) },
      'aria-label': `Face ${i + 1}: ${best ? matchText(best) : 'unknown'}`,
      onclick: select,
    }, h('span', { class: 'tag' },
      h('span', { class: 'name' }, label),
      best ? h('span', { class: 'distance' }, best.distance.toFixed(3)) : null), popup));
    items.push(h('li', { class: best ? 'known' : 'unknown' },
      h('span', { class: 'face-no' }, `Face ${i + 1}`), ' ',
      best ? h('strong', { class: 'name' }, best.name) : h('strong', { class: 'name' }, 'unknown'),
      best ? h('span', { class: 'distance' }, ` distance ${best.distance.toFixed(3)}`) : null,
      others.length ? h('span', { class: 'others' }, ` · also: ${others.map(matchText).join(', ')}`) : null,
      !best ? h('span', { class: 'muted' }, ' · nobody under the threshold') : null));
  });
  $('#recognize-boxes').replaceChildren(...boxes);
  $('#recognize-faces').replaceChildren(...items);
  $('#recognize-result').hidden = false;
}

$('#recognize-img').addEventListener('error', () => {
  if (photoUrl) $('#recognize-status').append(' (This browser cannot display the photo\'s format.)');
});

// -- people --------------------------------------------------------------------------------------

async function renderPeople(token, reset) {
  if (reset) state.people.offset = 0;
  const params = new URLSearchParams({ limit: PAGE_SIZE, offset: state.people.offset });
  if (state.people.q) params.set('q', state.people.q);
  show('people');
  const page = await api(domainPath(`/people?${params}`));
  if (!current(token)) return;
  const cards = page.people.map((p) => h('li', {},
    h('a', { href: `#/people/${p.id}`, class: 'person-card' },
      thumbnail(p.thumbnail_face_id, p.name),
      h('span', { class: 'name' }, p.name),
      h('span', { class: 'muted' }, plural(p.faces, 'face')))));
  if (reset) $('#people-list').replaceChildren(...cards);
  else $('#people-list').append(...cards);
  const shown = page.offset + page.people.length;
  const what = state.people.q ? ` matching “${state.people.q}”` : '';
  $('#people-count').textContent = page.total
    ? `${plural(page.total, 'person', 'people')}${what}${shown < page.total ? `, ${shown} shown` : ''}.`
    : (state.people.q ? `Nobody${what}.` : 'Nobody here yet: add a person.');
  $('#people-more').hidden = shown >= page.total;
  state.people.offset = shown;
}

let searchTimer;
$('#people-search').addEventListener('input', (event) => {
  clearTimeout(searchTimer);
  searchTimer = setTimeout(() => {
    state.people.q = event.target.value.trim();
    renderPeople(++state.route, true).catch(handleError);
  }, 250);
});

$('#people-more').addEventListener('click', () => {
  renderPeople(++state.route, false).catch(handleError);
});

$('#person-create').addEventListener('submit', async (event) => {
  event.preventDefault();
  clearMessage();
  const input = $('#person-create-name');
  try {
    const person = await api(domainPath('/people'), { method: 'POST', json: { name: input.value } });
    input.value = '';
    location.hash = `#/people/${person.id}`;
  } catch (err) {
    handleError(err);
  }
});

// -- one person ----------------------------------------------------------------------------------

let personId = null;
let personName = '';

async function renderPerson(id, token) {
  if (id !== personId) {
    $('#enroll-results').replaceChildren();
    $('#enroll-progress').hidden = true;
  }
  const [person, { faces }] = await Promise.all([
    api(domainPath(`/people/${id}`)), api(domainPath(`/people/${id}/faces`))]);
  if (!current(token)) return;
  personId = id;
  showPerson(person, faces);
  show('person');
}

function showPerson(person, faces) {
  personName = person.name;
  $('#person-name').textContent = person.name;
  $('#person-faces').textContent = plural(person.faces, 'face');
  $('#person-rename-name').value = person.name;
  $('#faces-none').hidden = faces.length > 0;
  $('#faces-list').replaceChildren(...faces.map((f) => h('li', { class: 'face-card' },
    thumbnail(f.has_thumbnail ? f.id : null, person.name, `Face ${f.id} of ${person.name}`),
    h('span', { class: 'muted' }, `Face ${f.id} · ${new Date(f.created_at).toLocaleDateString()}`),
    h('button', { type: 'button', class: 'danger small', 'aria-label': `Delete face ${f.id}`,
      onclick: () => deleteFace(f.id) }, 'Delete'))));
}

async function refreshPerson() {
  const id = personId;
  const [person, { faces }] = await Promise.all([
    api(domainPath(`/people/${id}`)), api(domainPath(`/people/${id}/faces`))]);
  if (id === personId && location.hash === `#/people/${id}`) showPerson(person, faces);
}

async function deleteFace(faceId) {
  if (!(await confirmDialog(`Delete face ${faceId} of ${personName}? This cannot be undone.`))) return;
  clearMessage();
  try {
    await api(domainPath(`/faces/${faceId}`), { method: 'DELETE' });
    forgetThumbnails(faceId);
    await refreshPerson();
    showMessage(`Deleted face ${faceId}.`, 'info');
  } catch (err) {
    handleError(err);
  }
}

$('#person-rename').addEventListener('submit', async (event) => {
  event.preventDefault();
  clearMessage();
  try {
    const person = await api(domainPath(`/people/${personId}`),
      { method: 'PATCH', json: { name: $('#person-rename-name').value } });
    await refreshPerson();
    showMessage(`Renamed to ${person.name}.`, 'info');
  } catch (err) {
    handleError(err);
  }
});

$('#person-delete').addEventListener('click', async () => {
  const faces = $('#person-faces').textContent;
  if (!(await confirmDialog(`Delete ${personName} and their ${faces}? This cannot be undone.`))) return;
  clearMessage();
  try {
    const person = await api(domainPath(`/people/${personId}`), { method: 'DELETE' });
    forgetThumbnails(); // their faces' ids are gone
    showMessage(`Deleted ${person.name} and ${plural(person.faces, 'face')}.`, 'info');
    location.hash = '#/people';
  } catch (err) {
    handleError(err);
  }
});

// -- enrollment: one request per photo ------------------------------------------------------------

dropZone($('#enroll-drop'), $('#enroll-file'), (files) => enroll(files));

const REFUSALS = {
  several_faces: (e, r) => `${plural(r.faces_found, 'face')} in the photo: tick “enroll the largest” to use the largest one.`,
  no_face: () => 'no face found in the photo.',
};

async function enroll(files) {
  clearMessage();
  const id = personId;
  const largest = $('#enroll-largest').checked;
  const list = $('#enroll-results');
  const rows = files.map((file) => {
    const status = h('span', { class: 'status' }, 'waiting');
    const row = h('li', { class: 'waiting' }, h('span', { class: 'file' }, file.name), ' ', status);
    return { file, row, status };
  });
  list.prepend(...rows.map((r) => r.row)); // the latest photos first, in the order given
  const bar = $('#enroll-bar');
  const counts = { done: 0, enrolled: 0, already: 0, refused: 0 };
  const progress = () => {
    bar.max = files.length;
    bar.value = counts.done;
    $('#enroll-count').textContent = `${counts.done} of ${plural(files.length, 'photo')} done: `
      + `${counts.enrolled} enrolled, ${counts.already} already enrolled, ${counts.refused} refused`;
  };
  $('#enroll-progress').hidden = false;
  progress();

  const queue = [...rows];
  const one = async ({ file, row, status }) => {
    row.className = 'busy';
    status.textContent = 'uploading…';
    const form = new FormData();
    form.append('photo', file, file.name);
    const query = largest ? '?face=largest' : '';
    let outcome;
    let text;
    try {
      const body = await api(domainPath(`/people/${id}/faces${query}`), { method: 'POST', body: form });
      const r = body.results[0];
      outcome = r.status === 'enrolled' ? 'enrolled' : 'already';
      text = r.status === 'enrolled' ? `enrolled (face ${r.face_id})` : 'already enrolled';
      if (r.faces_found > 1) text += `; the largest of ${r.faces_found} faces`;
    } catch (err) {
      outcome = 'refused';
      // One photo refused: its reason, from the per-photo details when the API gives them.
      const r = err instanceof ApiError && Array.isArray(err.details) ? err.details[0] : null;
      const e = r?.error;
      text = `refused: ${e ? (REFUSALS[e.code]?.(e, r) ?? e.message) : err.message}`;
      if (err instanceof ApiError && err.status === 401) handleError(err);
    }
    counts.done++;
    counts[outcome]++;
    row.className = outcome;
    status.textContent = text;
    progress();
  };
  const workers = Array.from({ length: Math.min(UPLOADS_AT_ONCE, queue.length) }, async () => {
    while (queue.length) await one(queue.shift());
  });
  await Promise.all(workers);
  if (id === personId) await refreshPerson().catch(handleError);
}

// -- unknown faces and the audit ---------------------------------------------------------------

/** An unassigned face's thumbnail (they have their own route; fetched each time the view shows). */
function unassignedThumb(faceId) {
  const box = h('span', { class: 'thumb' }, h('span', { class: 'initials' }, '?'));
  request(domainPath(`/unassigned/${faceId}/thumbnail`))
    .then((r) => r.blob())
    .then((blob) => {
      const url = URL.createObjectURL(blob);
      const img = h('img', { src: url, alt: `Unknown face ${faceId}`, width: 112, height: 112 });
      img.addEventListener('load', () => URL.revokeObjectURL(url));
      box.replaceChildren(img);
    })
    .catch(() => {});
  return box;
}

/** Run an action, show what it did, and draw the view again. */
async function act(what, redraw) {
  clearMessage();
  try {
    const done = await what();
    if (done) showMessage(done, 'info');
    await redraw(state.route);
  } catch (err) {
    handleError(err);
  }
}

async function renderUnknown(token) {
  const body = await api(domainPath('/clusters'));
  if (!current(token)) return;
  const redraw = renderUnknown;
  $('#unknown-status').textContent = body.keep_unknown
    ? `${plural(body.unassigned_faces, 'unassigned face')}, ${plural(body.clusters.length, 'cluster')} of 2 or more.`
    : 'This domain does not keep unknown faces (its keep_unknown is off): there is nothing to show.';
  $('#unknown-recluster').onclick = () => act(async () => {
    const r = await api(domainPath('/clusters/recluster'), { method: 'POST' });
    return `Clustered again: ${plural(r.clusters, 'cluster')}.`;
  }, redraw);
  const others = (id) => body.clusters.filter((c) => c.id !== id);
  $('#unknown-clusters').replaceChildren(...body.clusters.map((c) => {
    const nameInput = h('input', { required: true, maxlength: 200, 'aria-label': `Name of cluster ${c.id}`,
      placeholder: 'Who is this?' });
    const mergeSelect = h('select', { 'aria-label': `Merge cluster ${c.id} with` },
      ...others(c.id).map((o) => h('option', { value: o.id }, `cluster ${o.id} (${o.size})`)));
    const path = `/clusters/${c.id}`;
    return h('li', { class: 'cluster', 'data-cluster': c.id },
      h('p', {}, h('strong', {}, `Cluster ${c.id}`),
        h('span', { class: 'muted' }, ` ${plural(c.size, 'face')}, cohesion ${c.cohesion?.toFixed(3) ?? '–'}`)),
      h('ul', { class: 'cluster-faces' }, ...c.faces.map((f) => h('li', {}, unassignedThumb(f.id),
        h('button', { type: 'button', class: 'remove', 'aria-label': `Take face ${f.id} out of cluster ${c.id}`,
          onclick: () => act(async () => {
            await api(domainPath(`${path}/faces/${f.id}`), { method: 'DELETE' });
            return `Face ${f.id} taken out of cluster ${c.id}.`;
          }, redraw) }, '×')))),
      h('form', { class: 'inline-form', onsubmit: (event) => {
        event.preventDefault();
        act(async () => {
          const r = await api(domainPath(`${path}/person`), { method: 'POST', json: { name: nameInput.value.trim() } });
          return `Cluster ${c.id} is ${r.person.name}: ${plural(r.enrolled, 'face')} enrolled.`;
        }, redraw);
      } }, nameInput, h('button', { type: 'submit' }, 'Name')),
      others(c.id).length ? h('div', { class: 'inline-form' }, mergeSelect,
        h('button', { type: 'button', onclick: () => act(async () => {
          await api(domainPath(`${path}/merge`), { method: 'POST', json: { cluster_id: Number(mergeSelect.value) } });
          return `Cluster ${mergeSelect.value} merged into cluster ${c.id}.`;
        }, redraw) }, 'Merge into this')) : null,
      h('button', { type: 'button', class: 'danger', onclick: async () => {
        if (!(await confirmDialog(`Discard cluster ${c.id} and delete its ${plural(c.size, 'face')}?`))) return;
        act(async () => {
          const r = await api(domainPath(path), { method: 'DELETE' });
          return `Discarded cluster ${c.id}: ${plural(r.discarded, 'face')} deleted.`;
        }, redraw);
      } }, 'Discard…'));
  }));
  show('unknown');
}

async function renderAudit(token) {
  const report = await api(domainPath('/audit'));
  if (!current(token)) return;
  const redraw = renderAudit;
  $('#audit-status').textContent = `${plural(report.faces, 'face')} of ${plural(report.people, 'person', 'people')}.`;
  const none = (list, text) => (list.length ? null : h('li', { class: 'muted' }, text));
  $('#audit-outliers').replaceChildren(none(report.outliers, 'None found.'), ...report.outliers.map((o) =>
    h('li', { class: 'finding' }, thumbnail(o.face_id, o.person.name, `Face ${o.face_id}`),
      h('span', {}, `Face ${o.face_id} of ${o.person.name}: ${o.distance.toFixed(3)} from their other faces`),
      o.nearest_person ? h('button', { type: 'button', onclick: () => act(async () => {
        await api(domainPath(`/faces/${o.face_id}/move`), { method: 'POST', json: { person_id: o.nearest_person.id } });
        return `Face ${o.face_id} moved to ${o.nearest_person.name}.`;
      }, redraw) }, `Move to ${o.nearest_person.name}`) : null,
      h('button', { type: 'button', class: 'danger', onclick: async () => {
        if (!(await confirmDialog(`Delete face ${o.face_id} of ${o.person.name}?`))) return;
        act(async () => {
          await api(domainPath(`/faces/${o.face_id}`), { method: 'DELETE' });
          forgetThumbnails(o.face_id);
          return `Deleted face ${o.face_id}.`;
        }, redraw);
      } }, 'Delete face…'))));
  $('#audit-duplicates').replaceChildren(none(report.duplicates, 'None found.'), ...report.duplicates.map((d) => {
    const [a, b] = d.people;
    return h('li', { class: 'finding' }, thumbnail(d.face_ids[0], a.name), thumbnail(d.face_ids[1], b.name),
      h('span', {}, `${a.name} and ${b.name}: ${d.distance.toFixed(3)} apart on average`
        + `${d.likely_same ? ' (likely the same person)' : ' (look-alikes?)'}`),
      h('button', { type: 'button', onclick: async () => {
        if (!(await confirmDialog(`Merge ${b.name} into ${a.name}? ${b.name} is deleted, their faces kept.`))) return;
        act(async () => {
          const r = await api(domainPath(`/people/${a.id}/merge`), { method: 'POST', json: { person_id: b.id } });
          return `${b.name} merged into ${a.name}: ${plural(r.moved, 'face')} moved.`;
        }, redraw);
      } }, `Merge into ${a.name}`));
  }));
  $('#audit-single').replaceChildren(none(report.single_face, 'None.'), ...report.single_face.map((s) =>
    h('li', { class: 'finding' }, thumbnail(s.face_id, s.person.name),
      h('a', { href: `#/people/${s.person.id}` }, s.person.name), ' has a single face: add photos.')));
  show('audit');
}

// -- confirmation dialog (Escape or Cancel: no) ---------------------------------------------------

function confirmDialog(text) {
  const dialog = $('#confirm');
  $('#confirm-text').textContent = text;
  return new Promise((resolve) => {
    const done = (answer) => {
      dialog.removeEventListener('close', onClose);
      if (dialog.open) dialog.close();
      resolve(answer);
    };
    const onClose = () => done(false); // Escape closes a modal dialog by itself
    dialog.addEventListener('close', onClose);
    $('#confirm-ok').onclick = () => done(true);
    $('#confirm-cancel').onclick = () => done(false);
    dialog.showModal();
    $('#confirm-cancel').focus(); // the safe choice first
  });
}

// -- start ----------------------------------------------------------------------------------------

$('#message-close').addEventListener('click', clearMessage);
window.addEventListener('hashchange', () => {
  clearMessageOnNavigation();
  route();
});
// Nothing may end as a blank page: bugs and forgotten promises become a message too.
window.addEventListener('error', (event) => handleError(event.error ?? event.message));
window.addEventListener('unhandledrejection', (event) => handleError(event.reason));

function clearMessageOnNavigation() {
  // Keep a message that says what just happened (e.g. "Deleted ...") across the navigation it caused.
  if ($('#message').classList.contains('error')) clearMessage();
}

route();
