// The Insien web console: plain JavaScript over the server's own REST API, its RPC WebSocket
// (docs/protocol.md) and its event stream. The API key lives in this tab's session storage and
// travels as the X-API-Key header; WebSockets authenticate with the short-lived token of an
// agentUrl from POST /sandbox/<id>/connect, so the key never appears in a URL.

const KEY_STORAGE = 'insien.apiKey';
const REFRESH_MS = 5000;
const METRICS_ROWS = 20;
const $ = (id) => document.getElementById(id);

let apiKey = sessionStorage.getItem(KEY_STORAGE);
let selected = null; // { id, socket, terminal, fit, pid, calls }
let refreshTimer = null;
let eventsAbort = null;

class ApiError extends Error {}

async function api(method, path, { json, body } = {}) {
  const headers = { 'X-API-Key': apiKey };
  let payload = body;
  if (json !== undefined) {
    headers['Content-Type'] = 'application/json';
    payload = JSON.stringify(json);
  }
  const response = await fetch(path, { method, headers, body: payload });
  if (!response.ok) {
    let message = `${response.status} ${response.statusText}`;
    try {
      const problem = await response.json();
      message = `${problem.code}: ${problem.message}`;
    } catch (_) { /* not JSON */ }
    throw new ApiError(message);
  }
  return response;
}

function show(element, visible) { element.hidden = !visible; }

function text(tag, content, className) {
  const element = document.createElement(tag);
  element.textContent = content;
  if (className) element.className = className;
  return element;
}

function age(iso) {
  const seconds = Math.max(0, (Date.now() - Date.parse(iso)) / 1000);
  if (seconds < 60) return `${Math.floor(seconds)} s`;
  if (seconds < 3600) return `${Math.floor(seconds / 60)} min`;
  return `${(seconds / 3600).toFixed(1)} h`;
}

function mib(bytes) { return `${(bytes / 1048576).toFixed(1)} MiB`; }

function reportError(error) { $('app-error').textContent = error ? String(error.message || error) : ''; }

// -- log in and out ------------------------------------------------------------------------------

async function logIn(key) {
  apiKey = key;
  try {
    await api('GET', '/sandboxes?limit=1');
  } catch (error) {
    apiKey = null;
    $('login-error').textContent = error instanceof ApiError ? error.message : 'the server cannot be reached';
    return;
  }
  sessionStorage.setItem(KEY_STORAGE, key);
  $('login-error').textContent = '';
  show($('login'), false);
  show($('app'), true);
  show($('logout'), true);
  await refresh();
  refreshTimer = setInterval(refresh, REFRESH_MS);
  followEvents();
}

function logOut() {
  sessionStorage.removeItem(KEY_STORAGE);
  apiKey = null;
  clearInterval(refreshTimer);
  eventsAbort?.abort();
  closeDetail();
  show($('app'), false);
  show($('logout'), false);
  show($('login'), true);
}

// -- the sandbox list ----------------------------------------------------------------------------

async function refresh() {
  let page;
  try {
    page = await (await api('GET', '/sandboxes?limit=200')).json();
  } catch (error) {
    reportError(error);
    return;
  }
  const live = page.sandboxes.filter((s) => s.state !== 'ended');
  const metrics = await Promise.all(
    live.map((s, i) => (s.state === 'running' && i < METRICS_ROWS
      ? api('GET', `/sandboxes/${s.sandboxId}/metrics`).then((r) => r.json()).catch(() => null)
      : Promise.resolve(null))),
  );
  const body = $('sandboxes').tBodies[0];
  body.replaceChildren(...live.map((sandbox, i) => row(sandbox, metrics[i])));
  show($('no-sandboxes'), live.length === 0);
  if (selected && !live.some((s) => s.sandboxId === selected.id)) closeDetail();
}

function row(sandbox, metrics) {
  const tr = document.createElement('tr');
  tr.dataset.id = sandbox.sandboxId;
  if (selected?.id === sandbox.sandboxId) tr.className = 'selected';
  const open = document.createElement('button');
  open.type = 'button';
  open.textContent = sandbox.sandboxId.slice(0, 8);
  open.title = `Open ${sandbox.sandboxId}`;
  open.setAttribute('aria-label', `Open sandbox ${sandbox.sandboxId}`);
  open.addEventListener('click', () => openDetail(sandbox.sandboxId));
  const idCell = document.createElement('td');
  idCell.append(open);
  const meta = Object.entries(sandbox.metadata).map(([k, v]) => `${k}=${v}`).join(', ');
  const destroy = document.createElement('button');
  destroy.type = 'button';
  destroy.textContent = 'Destroy';
  destroy.setAttribute('aria-label', `Destroy sandbox ${sandbox.sandboxId}`);
  destroy.addEventListener('click', async () => {
    destroy.disabled = true;
    try {
      await api('POST', `/sandbox/${sandbox.sandboxId}/destroy`);
      if (selected?.id === sandbox.sandboxId) closeDetail();
      await refresh();
    } catch (error) {
      reportError(error);
      destroy.disabled = false;
    }
  });
  const actions = document.createElement('td');
  actions.append(destroy);
  tr.append(
    idCell,
    text('td', sandbox.state),
    text('td', sandbox.template),
    text('td', age(sandbox.createdAt)),
    text('td', meta),
    text('td', metrics ? `${metrics.cpuPercent.toFixed(1)} %` : '–', 'cpu'),
    text('td', metrics ? `${mib(metrics.memoryBytes)} of ${mib(metrics.memoryLimit)}` : '–', 'memory'),
    actions,
  );
  return tr;
}

async function create(event) {
  event.preventDefault();
  const button = event.submitter;
  button.disabled = true;
  const request = {};
  const template = $('template').value.trim();
  if (template) request.template = template;
  const metadata = {};
  for (const pair of $('metadata').value.split(',')) {
    const [name, ...rest] = pair.split('=');
    if (name.trim()) metadata[name.trim()] = rest.join('=').trim();
  }
  if (Object.keys(metadata).length) request.metadata = metadata;
  try {
    const made = await (await api('POST', '/sandbox/create', { json: request })).json();
    reportError(null);
    await refresh();
    await openDetail(made.sandboxId);
  } catch (error) {
    reportError(error);
  } finally {
    button.disabled = false;
  }
}

// -- one sandbox: its terminal and files ---------------------------------------------------------

function b64encode(textOrBytes) {
  const bytes = typeof textOrBytes === 'string' ? new TextEncoder().encode(textOrBytes) : textOrBytes;
  let binary = '';
  for (const byte of bytes) binary += String.fromCharCode(byte);
  return btoa(binary);
}

function b64decode(data) {
  const binary = atob(data);
  const bytes = new Uint8Array(binary.length);
  for (let i = 0; i < binary.length; i += 1) bytes[i] = binary.charCodeAt(i);
  return bytes;
}

function closeDetail() {
  if (!selected) return;
  selected.socket.close();
  selected.terminal.dispose();
  selected = null;
  show($('detail'), false);
  for (const tr of $('sandboxes').tBodies[0].rows) tr.className = '';
}

async function openDetail(id) {
  if (selected?.id === id) return;
  closeDetail();
  const { agentUrl } = await (await api('POST', `/sandbox/${id}/connect`)).json();
  const terminal = new Terminal({ fontSize: 14, cursorBlink: true, scrollback: 5000 });
  const fit = new FitAddon.FitAddon();
  terminal.loadAddon(fit);
  show($('detail'), true);
  $('detail-id').textContent = id;
  $('terminal').replaceChildren();
  terminal.open($('terminal'));
  fit.fit();
  const socket = new WebSocket(agentUrl);
  selected = { id, socket, terminal, fit, pid: null, calls: new Map(), next: 0 };
  for (const tr of $('sandboxes').tBodies[0].rows) tr.className = tr.dataset.id === id ? 'selected' : '';
  const mine = selected;
  socket.addEventListener('open', () => {
    socket.send(JSON.stringify({
      id: 'terminal', type: 'spawn', cmd: '/bin/bash', args: ['-l'],
      pty: { cols: terminal.cols, rows: terminal.rows }, encoding: 'base64',
      env: { TERM: 'xterm-256color' },
    }));
    listFolder();
  });
  socket.addEventListener('message', (message) => {
    const msg = JSON.parse(message.data);
    if (msg.id === 'terminal') {
      if (msg.type === 'spawnResponse') mine.pid = msg.pid;
      else if (msg.type === 'output') terminal.write(b64decode(msg.data));
      else if (msg.type === 'exit') terminal.write('\r\n[the shell exited]\r\n');
      else if (msg.type === 'error') terminal.write(`\r\n[${msg.code}: ${msg.message}]\r\n`);
      return;
    }
    const pending = mine.calls.get(msg.id);
    if (pending && !['output', 'spawnResponse', 'attachResponse'].includes(msg.type)) {
      mine.calls.delete(msg.id);
      if (msg.type === 'error') pending.reject(new ApiError(`${msg.code}: ${msg.message}`));
      else pending.resolve(msg);
    }
  });
  socket.addEventListener('close', () => {
    for (const pending of mine.calls.values()) pending.reject(new ApiError('the connection closed'));
    mine.calls.clear();
  });
  terminal.onData((data) => {
    if (mine.pid === null) return;
    call({ type: 'stdin', pid: mine.pid, data: b64encode(data), encoding: 'base64' }).catch(() => {});
  });
  terminal.onResize(({ cols, rows }) => {
    if (mine.pid !== null) call({ type: 'resize', pid: mine.pid, cols, rows }).catch(() => {});
  });
  terminal.focus();
}

function call(request) {
  const mine = selected;
  if (!mine || mine.socket.readyState !== WebSocket.OPEN) return Promise.reject(new ApiError('not connected'));
  mine.next += 1;
  const id = `c${mine.next}`;
  return new Promise((resolve, reject) => {
    mine.calls.set(id, { resolve, reject });
    mine.socket.send(JSON.stringify({ ...request, id }));
  });
}

async function listFolder(event) {
  event?.preventDefault();
  const folder = $('folder').value.trim() || '/home/user';
  try {
    const listed = await call({ type: 'list', path: folder });
    const entries = listed.entries.sort((a, b) => (a.type === 'dir') - (b.type === 'dir') || a.name.localeCompare(b.name)).reverse();
    $('files').replaceChildren(...entries.map((entry) => fileItem(folder, entry)));
    $('files-status').textContent = `${entries.length} entries in ${listed.path}`;
  } catch (error) {
    $('files-status').textContent = String(error.message || error);
  }
}

function fileItem(folder, entry) {
  const li = document.createElement('li');
  const path = `${folder.replace(/\/$/, '')}/${entry.name}`;
  if (entry.type === 'dir') {
    const open = document.createElement('button');
    open.type = 'button';
    open.textContent = `${entry.name}/`;
    open.addEventListener('click', () => { $('folder').value = path; listFolder(); });
    li.append(open);
  } else {
    const download = document.createElement('button');
    download.type = 'button';
    download.textContent = entry.name;
    download.setAttribute('aria-label', `Download ${entry.name}`);
    download.addEventListener('click', () => downloadFile(path, entry.name));
    li.append(download, text('span', `${entry.size} B`, 'hint'));
  }
  return li;
}

async function downloadFile(path, name) {
  try {
    const response = await api('GET', `/sandbox/${selected.id}/files?path=${encodeURIComponent(path)}`);
    const url = URL.createObjectURL(await response.blob());
    const link = document.createElement('a');
    link.href = url;
    link.download = name;
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10000);
  } catch (error) {
    $('files-status').textContent = String(error.message || error);
  }
}

async function upload(event) {
  event.preventDefault();
  const file = $('upload').files[0];
  if (!file || !selected) return;
  const folder = $('folder').value.trim() || '/home/user';
  const path = `${folder.replace(/\/$/, '')}/${file.name}`;
  try {
    await api('PUT', `/sandbox/${selected.id}/files?path=${encodeURIComponent(path)}`, { body: file });
    $('files-status').textContent = `uploaded ${file.name} (${file.size} B)`;
    await listFolder();
  } catch (error) {
    $('files-status').textContent = String(error.message || error);
  }
}

// -- events ----------------------------------------------------------------------------------------

async function followEvents() {
  eventsAbort = new AbortController();
  let response;
  try {
    response = await fetch('/events', { headers: { 'X-API-Key': apiKey }, signal: eventsAbort.signal });
  } catch (_) {
    return;
  }
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = '';
  for (;;) {
    let chunk;
    try {
      chunk = await reader.read();
    } catch (_) {
      return;
    }
    if (chunk.done) return;
    buffer += chunk.value;
    let end;
    while ((end = buffer.indexOf('\n\n')) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const data = block.split('\n').filter((line) => line.startsWith('data: ')).map((line) => line.slice(6)).join('\n');
      if (data) showEvent(JSON.parse(data));
    }
  }
}

function showEvent(event) {
  if (!event.type) return;
  const details = Object.entries(event.details || {})
    .filter(([, value]) => typeof value !== 'object')
    .map(([name, value]) => `${name}=${value}`).join(' ');
  const item = text('li', `${event.time.slice(11, 19)} ${event.type} ${(event.sandboxId || '').slice(0, 8)} ${details}`);
  $('events').prepend(item);
  while ($('events').children.length > 200) $('events').lastChild.remove();
  refresh();
}

// -- wiring ------------------------------------------------------------------------------------------

$('login-form').addEventListener('submit', (event) => {
  event.preventDefault();
  logIn($('key').value.trim());
});
$('logout').addEventListener('click', logOut);
$('create-form').addEventListener('submit', create);
$('folder-form').addEventListener('submit', listFolder);
$('upload-form').addEventListener('submit', upload);
window.addEventListener('resize', () => selected?.fit.fit());
if (apiKey) logIn(apiKey);
