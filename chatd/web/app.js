// chatd web client: one ES module, no dependencies, no build step.
//
// Three layers, each knowing only the one below it:
//   Connection  one WebSocket at a time, refs -> replies, backoff, heartbeat
//   Session     login/auth, stream position (epoch, seq), resume or resync, outbox
//   UI          everything that touches the document
// The wire contract is PROTOCOL.md (version 2).

const TOKEN_KEY = "chatd.token";
const CHANNEL_KEY = "chatd.channel";
const HISTORY_PAGE = 50;
const SEARCH_PAGE = 20;
// Going to a search hit loads older history in pages this big (the protocol's most).
const JUMP_PAGE = 500;
const BODY_LIMIT = 4096;
const BACKOFF_BASE_MS = 250;
const BACKOFF_CAP_MS = 5000;
const PING_EVERY_MS = 25000;
const PING_TIMEOUT_MS = 10000;
const LOAD_OLDER_PX = 48;
const RETRY_UNAVAILABLE_MS = 1000;
// Close code: the token was ended (logout elsewhere, password change,
// deactivation). Reconnecting with it would only be refused.
const CLOSE_TOKEN_ENDED = 4001;

// ---------------------------------------------------------------- helpers

// localStorage throws in some privacy modes; the page must still work there.
const store = {
  get(key) {
    try { return localStorage.getItem(key); } catch { return null; }
  },
  set(key, value) {
    try {
      if (value == null) localStorage.removeItem(key);
      else localStorage.setItem(key, value);
    } catch { /* memory only, then */ }
  },
};

// crypto.randomUUID needs a secure context; getRandomValues also works on plain http.
function randomNonce() {
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

// Full jitter, so clients dropped by a server restart do not all return at once.
function backoffDelay(attempt) {
  return Math.random() * Math.min(BACKOFF_CAP_MS, BACKOFF_BASE_MS * 2 ** attempt);
}

function wsUrl() {
  return (location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/ws";
}

class ServerError extends Error {
  constructor(frame) {
    super(typeof frame.message === "string" ? frame.message : String(frame.code));
    this.code = frame.code;
    this.frame = frame;
  }
}

class ConnectionLost extends Error {
  constructor() {
    super("not connected to the server");
    this.code = "connection_lost";
  }
}

// ------------------------------------------------------------- Connection

class Connection {
  constructor(url, handlers) {
    this.url = url;
    this.handlers = handlers; // { onOpen, onClose, onEvent, onStrayError, onTokenEnded, mayPark }
    this.ws = null;
    // No socket and no retry timer: the session has no use for one (logged out),
    // so the next request for one (whenOpen) connects.
    this.parked = false;
    this.nextRef = 1;
    this.pending = new Map(); // ref -> { resolve, reject }
    this.attempt = 0;
    this.retryTimer = null;
    this.pingTimer = null;
    this.openWaiters = [];
  }

  get isOpen() {
    return this.ws !== null && this.ws.readyState === WebSocket.OPEN;
  }

  start() {
    this._connect();
  }

  // Never queued across sockets: a command meant for one connection's login
  // state must not silently run on the next one.
  request(op, args = {}) {
    if (!this.isOpen) return Promise.reject(new ConnectionLost());
    const ref = this.nextRef++;
    return new Promise((resolve, reject) => {
      this.pending.set(ref, { resolve, reject });
      this.ws.send(JSON.stringify({ ...args, op, ref }));
    });
  }

  whenOpen() {
    if (this.isOpen) return Promise.resolve();
    const opened = new Promise((resolve) => this.openWaiters.push(resolve));
    if (this.parked) this.reconnectNow();
    return opened;
  }

  // Called once the session is really usable, not merely when the socket
  // opens: a server that accepts and then drops us must still be backed off.
  resetBackoff() {
    this.attempt = 0;
  }

  drop() {
    if (this.ws) this._lost(this.ws);
  }

  reconnectNow() {
    if (this.ws) return;
    clearTimeout(this.retryTimer);
    this._connect();
  }

  // After a network change: retry now unless parked (then nobody needs a socket).
  wake() {
    if (!this.parked) this.reconnectNow();
  }

  restart() {
    this.drop();
    this.attempt = 0;
    this.reconnectNow();
  }

  _connect() {
    this.parked = false;
    const ws = new WebSocket(this.url);
    this.ws = ws;
    ws.onopen = () => this._opened(ws);
    ws.onmessage = (e) => this._frame(ws, e.data);
    ws.onclose = (e) => this._lost(ws, e); // also follows every onerror
  }

  _opened(ws) {
    if (ws !== this.ws) return;
    clearInterval(this.pingTimer);
    this.pingTimer = setInterval(() => this._ping(), PING_EVERY_MS);
    this.openWaiters.splice(0).forEach((resolve) => resolve());
    this.handlers.onOpen();
  }

  _frame(ws, data) {
    if (ws !== this.ws) return;
    let msg;
    try { msg = JSON.parse(data); } catch { return; }
    if (msg === null || typeof msg !== "object") return;
    if (msg.type === "event") {
      this.handlers.onEvent(msg);
      return;
    }
    if (msg.type === "ephemeral") {
      this.handlers.onEphemeral(msg);
      return;
    }
    const waiter = this.pending.get(msg.ref);
    if (!waiter) {
      if (msg.type === "error") this.handlers.onStrayError(new ServerError(msg));
      return;
    }
    this.pending.delete(msg.ref);
    if (msg.type === "ok") waiter.resolve(msg);
    else waiter.reject(new ServerError(msg));
  }

  // Handles both a real close and a socket we gave up on; the guard makes a
  // late onclose from an abandoned socket harmless.
  _lost(ws, closeEvent = null) {
    if (ws !== this.ws) return;
    this.ws = null;
    ws.onopen = ws.onmessage = ws.onclose = null;
    if (ws.readyState === WebSocket.CONNECTING || ws.readyState === WebSocket.OPEN) ws.close();
    clearInterval(this.pingTimer);
    const waiters = [...this.pending.values()];
    this.pending.clear();
    waiters.forEach((w) => w.reject(new ConnectionLost()));
    clearTimeout(this.retryTimer);
    // Told first, so that mayPark below already sees the session logged out.
    if (closeEvent?.code === CLOSE_TOKEN_ENDED) this.handlers.onTokenEnded(closeEvent.reason);
    // The server closes sockets that do not log in within its login timeout;
    // reconnecting for a login form that nobody submits would cycle forever.
    this.parked = this.handlers.mayPark();
    this.handlers.onClose(this.parked);
    if (!this.parked) {
      this.retryTimer = setTimeout(() => this._connect(), backoffDelay(this.attempt++));
    }
  }

  // Browsers may not notice a dead TCP connection for minutes.
  _ping() {
    const ws = this.ws;
    const timer = setTimeout(() => { if (ws === this.ws) this.drop(); }, PING_TIMEOUT_MS);
    this.request("ping").then(() => clearTimeout(timer), () => clearTimeout(timer));
  }
}

// ---------------------------------------------------------------- Session

class Session {
  constructor(conn, hooks) {
    this.conn = conn;
    this.hooks = hooks; // { onState, onLoggedIn, onLoggedOut, onEnded, onSnapshot, onEvent, onSent, onOutbox, onLive, onError, onRecovered }
    this.token = store.get(TOKEN_KEY);
    this.user = null;
    this.epoch = null;
    this.lastSeq = 0;
    this.live = false;
    this.everOpened = false;
    this.outbox = []; // { nonce, channel, body, inflight }
    this.loggingIn = false;
    this.syncError = null; // shown by _syncFailed; cleared once live again
  }

  async onOpen() {
    this.everOpened = true;
    if (!this.token) {
      this._loggedOut();
      return;
    }
    try {
      const ok = await this.conn.request("auth", { token: this.token });
      this._loggedIn(ok.user);
      await this._resume();
    } catch (err) {
      this._syncFailed(err);
    }
  }

  onClose(parked) {
    this.live = false;
    if (parked) this.hooks.onState("idle");
    else this.hooks.onState(this.everOpened ? "reconnecting" : "connecting");
  }

  // Logged out and not logging in: no socket is needed until the form is submitted.
  mayPark() {
    return this.token === null && !this.loggingIn;
  }

  onEvent(ev) {
    // Defensive: the server promises no duplicates, but applying one twice
    // would corrupt the view, and seq is the only position we trust.
    if (this.epoch === null || !(ev.seq > this.lastSeq)) return;
    this.lastSeq = ev.seq;
    this.hooks.onEvent(ev);
  }

  // The server closed the socket with 4001: this token is over for good.
  onTokenEnded(reason) {
    if (this.token === null) return;
    this._forget();
    this.hooks.onLoggedOut();
    this.hooks.onEnded(reason);
  }

  // `invite` (a code) only matters for a new name on a server without open sign-up.
  async login(name, password, invite = "") {
    this.loggingIn = true;
    let ok;
    try {
      await this.conn.whenOpen();
      const args = { name, password };
      if (invite) args.invite = invite;
      ok = await this.conn.request("login", args);
    } finally {
      this.loggingIn = false;
    }
    this.token = ok.token;
    store.set(TOKEN_KEY, ok.token);
    this.epoch = null; // a new login always starts from a fresh snapshot
    this._loggedIn(ok.user);
    try {
      await this._resume();
    } catch (err) {
      this._syncFailed(err);
    }
  }

  async logout() {
    try {
      if (this.conn.isOpen) await this.conn.request("logout");
    } catch (err) {
      if (err.code !== "connection_lost") this.hooks.onError(err);
    }
    this._forget();
    this.hooks.onLoggedOut();
    // A fresh socket guarantees no subscription or login survives on this one.
    this.conn.restart();
    this.hooks.onState("connecting");
  }

  send(channel, body) {
    this.outbox.push({ nonce: randomNonce(), channel, body, inflight: false });
    this.hooks.onOutbox(this.outbox);
    this.flush();
  }

  flush() {
    if (!this.live) return;
    for (const item of this.outbox) if (!item.inflight) this._transmit(item);
  }

  async _transmit(item) {
    item.inflight = true;
    try {
      const ok = await this.conn.request("send", {
        channel: item.channel, body: item.body, nonce: item.nonce,
      });
      this._dequeue(item);
      this.hooks.onSent(ok.message, item.channel);
    } catch (err) {
      item.inflight = false;
      // Kept with its nonce: the resend after resume cannot create a duplicate.
      if (err.code === "connection_lost") return;
      if (err.code === "rate_limited") {
        const seconds = Number(err.frame.retry_after) || 1;
        setTimeout(() => this.flush(), seconds * 1000);
        return;
      }
      // The server is draining for a restart or overloaded: try again later.
      if (err.code === "unavailable") {
        setTimeout(() => this.flush(), RETRY_UNAVAILABLE_MS);
        return;
      }
      this._dequeue(item);
      this.hooks.onError(err);
    }
  }

  _dequeue(item) {
    const i = this.outbox.indexOf(item);
    if (i < 0) return;
    this.outbox.splice(i, 1);
    this.hooks.onOutbox(this.outbox);
  }

  async _resume() {
    let state = "connected";
    if (this.epoch !== null) {
      try {
        await this.conn.request("subscribe",
          { since: this.lastSeq, epoch: this.epoch, ephemeral: true });
        this.hooks.onResumed();
        this._goLive(state);
        return;
      } catch (err) {
        if (err.code !== "resume_gap") throw err;
      }
      state = "resynced";
    }
    await this._resync();
    this._goLive(state);
  }

  // boot's resume_point and subscribe(since) together give exactly-once: the
  // snapshot covers up to resume_point, the stream everything after it.
  async _resync() {
    const boot = await this.conn.request("boot");
    this.user = boot.user;
    this.epoch = boot.epoch;
    this.lastSeq = boot.resume_point;
    await this.hooks.onSnapshot(boot);
    await this.conn.request("subscribe",
      { since: boot.resume_point, epoch: boot.epoch, ephemeral: true });
  }

  _goLive(state) {
    this.live = true;
    this.conn.resetBackoff();
    if (this.syncError) {
      this.hooks.onRecovered(this.syncError);
      this.syncError = null;
    }
    this.hooks.onState(state);
    this.hooks.onLive();
    this.flush();
  }

  _syncFailed(err) {
    if (err.code === "connection_lost") return; // the next socket starts over
    if (err.code === "unauthorized") {
      const hadToken = this.token !== null;
      this._forget();
      this._loggedOut();
      if (hadToken) this.hooks.onEnded(""); // e.g. ended while this page was offline
      return;
    }
    // e.g. `unavailable` while the server drains: back off and try again.
    this.syncError = err;
    this.hooks.onError(err);
    this.conn.drop();
  }

  _loggedIn(user) {
    this.user = user;
    this.hooks.onLoggedIn(user);
  }

  _loggedOut() {
    this.conn.resetBackoff();
    this.hooks.onLoggedOut();
    this.hooks.onState("connected");
  }

  _forget() {
    // Another tab of this browser may have saved a newer login meanwhile.
    if (store.get(TOKEN_KEY) === this.token) store.set(TOKEN_KEY, null);
    this.token = null;
    this.user = null;
    this.epoch = null;
    this.lastSeq = 0;
    this.live = false;
    this.outbox = [];
    this.hooks.onOutbox(this.outbox);
  }
}

// --------------------------------------------------------------------- UI

const $ = (id) => document.getElementById(id);
const els = {
  state: $("conn-state"), error: $("error"), me: $("me"), logout: $("logout"),
  usersOpen: $("users-open"), passwordOpen: $("password-open"),
  splash: $("splash"), loginView: $("login-view"), chatView: $("chat-view"),
  loginForm: $("login-form"), loginName: $("login-name"), loginPassword: $("login-password"),
  loginNotice: $("login-notice"), inviteBox: $("invite-box"), loginInvite: $("login-invite"),
  channelList: $("channel-list"), newChannelForm: $("new-channel-form"), newChannelName: $("new-channel-name"),
  title: $("channel-title"), notice: $("channel-notice"), messages: $("messages"),
  typing: $("typing"),
  outbox: $("outbox"), composer: $("composer-form"), input: $("composer-input"),
  usersDialog: $("users-dialog"), usersRefresh: $("users-refresh"), usersError: $("users-error"),
  userList: $("user-list"), invites: $("invites"), inviteForm: $("invite-form"),
  inviteUses: $("invite-uses"), inviteTtl: $("invite-ttl"), inviteCreated: $("invite-created"),
  inviteLink: $("invite-link"), inviteCopy: $("invite-copy"), inviteCopied: $("invite-copied"),
  inviteList: $("invite-list"),
  passwordDialog: $("password-dialog"), passwordForm: $("password-form"),
  passwordUser: $("password-user"), passwordCurrent: $("password-current"),
  passwordNew: $("password-new"), passwordRepeat: $("password-repeat"),
  passwordError: $("password-error"), passwordOk: $("password-ok"),
  pane: $("pane"), searchForm: $("search-form"), searchInput: $("search-input"),
  searchResults: $("search-results"), searchSummary: $("search-summary"),
  searchList: $("search-list"), searchMore: $("search-more"), searchClose: $("search-close"),
};

const app = {
  me: null, // { id, name, role? }: role comes with boot and the users list
  channels: new Map(), // id -> { id, name, kind, members? }, in boot order then creation order
  unread: new Map(), // id -> read state, see "unread counts"
  view: null, // the open channel, see newView
  users: [], // the users panel's list, as the last `users` reply had it
  usersLoad: 0, // a newer load makes the replies of older ones stale
  online: new Set(), // ids of the users online now: boot's `online`, then presence frames
  typing: new Map(), // channel id -> Map(user id -> { name, timer })
  typingSent: new Map(), // channel id -> when this page last sent `typing` there
  search: null, // the results shown: { query, oldest, load }, see runSearch
};

// A fresh object per opening, so late replies for an older view are dropped.
function newView(channel) {
  return {
    channel, nodes: new Map(), deleted: new Set(),
    // id -> { body, edited_at }: the newest edit seen, so that a history page
    // or send reply fetched before the edit cannot show the old body again.
    edits: new Map(),
    oldest: Infinity, more: false, loaded: false, loading: false, gone: false,
  };
}

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

// "idle": logged out with no socket (one is opened when the login form is sent).
function setConnState(state) {
  els.state.hidden = state === "idle";
  els.state.textContent = state;
  els.state.dataset.state = state;
}

function showError(err) {
  els.error.textContent = err instanceof Error ? err.message : String(err);
}

function clearError() {
  els.error.textContent = "";
}

// A connection problem that went away by itself needs no dismissing.
function clearErrorIf(err) {
  if (els.error.textContent === err.message) clearError();
}

function showLogin() {
  closeDialogs();
  closeSearch();
  app.me = null;
  app.users = [];
  app.usersLoad++;
  app.channels.clear();
  app.unread.clear();
  resetMembership();
  app.view = null;
  els.splash.hidden = true;
  els.chatView.hidden = true;
  els.loginView.hidden = false;
  els.me.textContent = "";
  els.logout.hidden = true;
  els.usersOpen.hidden = true;
  els.passwordOpen.hidden = true;
  renderChannels();
  renderView();
  if (!els.loginName.value) els.loginName.focus();
}

// `auth` and `login` replies carry no role: keep the one boot gave.
function showChat(user) {
  const role = user.role ?? (app.me?.id === user.id ? app.me.role : undefined);
  app.me = { ...user, role };
  els.splash.hidden = true;
  els.loginView.hidden = true;
  els.chatView.hidden = false;
  els.me.textContent = user.name;
  els.logout.hidden = false;
  els.usersOpen.hidden = false;
  els.passwordOpen.hidden = false;
  showLoginNotice("");
  dropInviteFragment();
}

function showLoginNotice(text) {
  els.loginNotice.textContent = text;
  els.loginNotice.hidden = !text;
}

// Close code 4001, or a saved token the server no longer takes.
function onSessionEnded(reason) {
  const why = reason ? `You were logged out: ${reason}.` : "Your session has ended.";
  showLoginNotice(`${why} Log in again to continue.`);
}

// ------------------------------------------------------- invite links
//
// An invite link is the page's own address with the code in the fragment
// (#invite=CODE): browsers never send the fragment, so no server or proxy log
// sees the code.

function inviteFromFragment() {
  return new URLSearchParams(location.hash.slice(1)).get("invite") || "";
}

function applyInviteFragment() {
  const code = inviteFromFragment();
  if (!code) return;
  els.loginInvite.value = code;
  els.inviteBox.open = true;
}

function dropInviteFragment() {
  if (!inviteFromFragment()) return;
  history.replaceState(history.state, "", location.pathname + location.search);
}

function inviteLink(code) {
  return `${location.origin}${location.pathname}#invite=${encodeURIComponent(code)}`;
}

function renderChannels() {
  const items = [...app.channels.values()].map((channel) => {
    const li = el("li", "channel");
    li.dataset.channelId = channel.id;
    const open = app.view?.channel.id === channel.id;
    li.classList.toggle("active", open);
    const name = el("button", "channel-name", channel.name);
    name.type = "button";
    if (open) name.setAttribute("aria-current", "true");
    const del = el("button", "delete-channel", "×");
    del.type = "button";
    del.title = "Delete channel";
    del.setAttribute("aria-label", `Delete channel ${channel.name}`);
    li.append(name, del);
    decorateChannel(li, channel);
    return li;
  });
  placeChannels(items);
}

function renderView() {
  const view = app.view;
  els.messages.replaceChildren();
  els.title.textContent = view ? channelLabel(view.channel) : "No channel open";
  renderGone();
  renderPaneHead();
  renderOutbox();
  renderTyping();
}

function renderGone() {
  const gone = !app.view || app.view.gone;
  els.notice.hidden = !app.view?.gone;
  els.notice.textContent = app.view?.gone ? "This channel was deleted." : "";
  els.input.disabled = gone;
  els.composer.querySelector("button").disabled = gone;
}

function renderOutbox() {
  const open = app.view?.channel.id;
  const items = session.outbox
    .filter((item) => item.channel === open)
    .map((item) => el("li", "pending", item.body));
  els.outbox.replaceChildren(...items);
}

function formatTime(at) {
  const date = new Date(at);
  if (Number.isNaN(date.getTime())) return String(at);
  const time = date.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  if (date.toDateString() === new Date().toDateString()) return time;
  return `${date.toLocaleDateString()} ${time}`;
}

function renderMessage(msg) {
  const node = el("article", "message");
  node.dataset.messageId = msg.id;
  node.dataset.seq = String(msg.seq);
  const mine = app.me !== null && msg.sender.id === app.me.id;
  node.classList.toggle("mine", mine);
  const head = el("div", "meta");
  const time = el("time", "time", formatTime(msg.at));
  time.dateTime = msg.at;
  time.title = msg.at;
  const edited = el("span", "edited", "(edited)");
  head.append(el("span", "sender", msg.sender.name), time, edited);
  if (mine) {
    const actions = el("span", "message-actions");
    const edit = el("button", "edit-message", "Edit");
    edit.type = "button";
    const del = el("button", "delete-message", "Delete");
    del.type = "button";
    actions.append(edit, del);
    head.append(actions);
  }
  node.append(head, el("div", "body", msg.body));
  showEdited(node, msg.edited_at);
  return node;
}

function showEdited(node, editedAt) {
  const marker = node.querySelector(".edited");
  marker.hidden = !editedAt;
  if (!editedAt) return;
  node.dataset.editedAt = editedAt;
  marker.title = `Edited ${formatDateTime(editedAt)}`;
}

// ISO 8601 UTC times in one format compare as strings.
function isNewerEdit(editedAt, than) {
  return Boolean(editedAt) && (!than || editedAt >= than);
}

// A message.edited event, a replayed message.sent or our own edit_message
// reply: the message keeps its place and gets the new body and marker.
function applyEdit(id, body, editedAt) {
  const view = app.view;
  if (!view || view.deleted.has(id) || !editedAt) return;
  const known = view.edits.get(id);
  if (known && !isNewerEdit(editedAt, known.edited_at)) return;
  view.edits.set(id, { body, edited_at: editedAt });
  const node = view.nodes.get(id);
  if (!node || !isNewerEdit(editedAt, node.dataset.editedAt)) return;
  node.querySelector(".body").textContent = body;
  showEdited(node, editedAt);
}

// Keeps what the reader looks at still: older pages must not shove the view
// down, and new messages follow the bottom only if the reader was there.
function withScroll(mode, mutate) {
  const box = els.messages;
  const fromBottom = box.scrollHeight - box.scrollTop;
  const atBottom = fromBottom - box.clientHeight < 80;
  mutate();
  if (mode === "older") box.scrollTop = box.scrollHeight - fromBottom;
  else if (mode === "bottom" || atBottom) box.scrollTop = box.scrollHeight;
}

// History pages, live events and our own send replies arrive in any order;
// inserting by seq and keying by id makes the result the same either way.
function insertMessage(msg) {
  const view = app.view;
  if (view.deleted.has(msg.id)) return;
  if (view.nodes.has(msg.id)) {
    if (msg.edited_at) applyEdit(msg.id, msg.body, msg.edited_at);
    return;
  }
  const edit = view.edits.get(msg.id);
  if (edit && isNewerEdit(edit.edited_at, msg.edited_at)) {
    msg = { ...msg, body: edit.body, edited_at: edit.edited_at };
  }
  const node = renderMessage(msg);
  view.nodes.set(msg.id, node);
  view.oldest = Math.min(view.oldest, msg.seq);
  let prev = els.messages.lastElementChild;
  while (prev && Number(prev.dataset.seq) > msg.seq) prev = prev.previousElementSibling;
  if (prev) prev.after(node);
  else els.messages.prepend(node);
}

function removeMessage(id) {
  const view = app.view;
  view.deleted.add(id); // a history page fetched before the delete must not revive it
  view.nodes.get(id)?.remove();
  view.nodes.delete(id);
}

async function loadPage(view, older, limit = HISTORY_PAGE) {
  if (view.loading || (older && (!view.more || view.oldest === Infinity))) return;
  view.loading = true;
  const args = { channel: view.channel.id, limit };
  if (older) args.before = view.oldest;
  try {
    const ok = await session.conn.request("history", args);
    if (view !== app.view) return;
    view.loaded = true;
    view.more = Boolean(ok.more);
    if (ok.messages.length) view.oldest = Math.min(view.oldest, ok.messages[0].seq);
    withScroll(older ? "older" : "bottom", () => ok.messages.forEach(insertMessage));
  } finally {
    view.loading = false;
  }
  maybeLoadOlder(); // a short page leaves nothing to scroll, so keep filling
}

function maybeLoadOlder() {
  const view = app.view;
  if (!view || !view.more || view.loading) return;
  // A hidden or collapsed box always reads scrollTop 0: that is not "at the top".
  if (els.messages.clientHeight === 0 || els.messages.scrollTop > LOAD_OLDER_PX) return;
  loadPage(view, true).catch(reportUnlessOffline);
}

function reportUnlessOffline(err) {
  if (err.code !== "connection_lost") showError(err);
}

function openChannel(id) {
  const channel = app.channels.get(id);
  if (!channel) return Promise.resolve();
  closeSearch();
  store.set(CHANNEL_KEY, id);
  app.view = newView(channel);
  renderView();
  renderChannels();
  return loadPage(app.view, false).then(markSeen, reportUnlessOffline);
}

function addChannel(channel) {
  app.channels.set(channel.id, channelEntry(channel));
  if (!app.unread.has(channel.id)) app.unread.set(channel.id, newReadState(0));
  renderChannels();
}

function removeChannel(channel) {
  if (!app.channels.delete(channel.id)) return;
  app.unread.delete(channel.id);
  if (app.view?.channel.id === channel.id) {
    app.view.gone = true;
    renderGone();
  }
  renderChannels();
}

const eventHandlers = {
  "channel.created": (ev) => addChannel(ev.channel),
  "channel.deleted": (ev) => removeChannel(ev.channel),
  "message.sent": (ev) => {
    const msg = {
      id: ev.message.id, seq: ev.seq, at: ev.at, sender: ev.sender,
      body: ev.message.body, edited_at: ev.message.edited_at,
    };
    if (app.view?.channel.id === ev.channel.id) {
      withScroll("follow", () => insertMessage(msg));
    }
    countMessage(ev);
  },
  "message.deleted": (ev) => {
    if (app.view?.channel.id === ev.channel.id) removeMessage(ev.message.id);
    forgetMessage(ev);
  },
  "message.edited": (ev) => {
    if (app.view?.channel.id !== ev.channel.id) return;
    applyEdit(ev.message.id, ev.message.body, ev.message.edited_at);
  },
};

function applyEvent(ev) {
  eventHandlers[ev.kind]?.(ev); // unknown kinds are from a newer server: skip
  if (ev.kind === "message.sent") endTyping(ev.channel.id, ev.sender.id);
}

// The open channel is rebuilt from scratch: during a gap it may have lost
// messages we still show, and no event for that will ever come.
async function applySnapshot(boot) {
  showChat(boot.user);
  setOnline(boot.online);
  app.channels = new Map(boot.channels.map((c) => [c.id, channelEntry(c)]));
  membershipFromSnapshot(boot);
  const wanted = app.view?.channel.id ?? store.get(CHANNEL_KEY);
  if (wanted && app.channels.has(wanted)) {
    app.view = newView(app.channels.get(wanted));
    renderView();
    renderChannels();
    try {
      await loadPage(app.view, false);
      markSeen();
    } catch (err) {
      if (err.code === "connection_lost") throw err;
      showError(err);
    }
  } else {
    if (app.view) app.view.gone = true;
    renderView();
    renderChannels();
  }
}

// A page request cut off by a disconnect is simply asked for again.
function onLive() {
  const view = app.view;
  if (!view || view.gone) return;
  if (!view.loaded) loadPage(view, false).catch(reportUnlessOffline);
  else maybeLoadOlder();
}

// ---------------------------------------------------------------- actions

async function onLoginSubmit(e) {
  e.preventDefault();
  clearError();
  const button = els.loginForm.querySelector("button");
  button.disabled = true;
  const invite = els.loginInvite.value.trim();
  try {
    await session.login(els.loginName.value, els.loginPassword.value, invite);
    els.loginPassword.value = "";
    if (invite) { // used up or not needed: either way not for the next login
      els.loginInvite.value = "";
      els.inviteBox.open = false;
    }
  } catch (err) {
    showError(err);
  } finally {
    button.disabled = false;
  }
}

async function onNewChannelSubmit(e) {
  e.preventDefault();
  clearError();
  const name = els.newChannelName.value;
  if (!name.trim()) return;
  try {
    const ok = await session.conn.request("create_channel", newChannelArgs(name));
    els.newChannelName.value = "";
    addChannel(ok.channel);
    openChannel(ok.channel.id);
  } catch (err) {
    showError(err);
  }
}

async function onChannelListClick(e) {
  const button = e.target.closest("button");
  const li = button?.closest("li[data-channel-id]");
  if (!li) return;
  const id = li.dataset.channelId;
  clearError();
  if (button.classList.contains("channel-name")) {
    openChannel(id);
    return;
  }
  if (!button.classList.contains("delete-channel")) return;
  try {
    await session.conn.request("delete_channel", { channel: id });
    removeChannel({ id });
  } catch (err) {
    showError(err); // `forbidden` unless we created it
  }
}

async function onMessagesClick(e) {
  const button = e.target.closest("button");
  const node = button?.closest(".message");
  if (!node) return;
  if (button.classList.contains("edit-message")) {
    startEdit(node);
    return;
  }
  if (button.classList.contains("edit-cancel")) {
    endEdit(node);
    return;
  }
  if (!button.classList.contains("delete-message")) return;
  const id = node.dataset.messageId;
  clearError();
  try {
    await session.conn.request("delete_message", { message: id });
    if (app.view) removeMessage(id);
  } catch (err) {
    showError(err);
  }
}

// ------------------------------------------------------------ editing
//
// The message's body is hidden and a form takes its place; live edits from
// elsewhere keep updating the hidden body, so Cancel shows the newest text.

function startEdit(node) {
  if (node.querySelector(".edit-form")) return;
  const body = node.querySelector(".body");
  const form = el("form", "edit-form");
  const input = el("textarea", "edit-input");
  input.rows = 2;
  input.value = body.textContent;
  input.setAttribute("aria-label", "Edit message");
  const save = el("button", "edit-save", "Save");
  save.type = "submit";
  const cancel = el("button", "edit-cancel", "Cancel");
  cancel.type = "button";
  const buttons = el("div", "edit-buttons");
  buttons.append(el("span", "edit-hint", "Enter saves, Escape cancels"), cancel, save);
  const error = el("p", "edit-error");
  error.setAttribute("role", "alert");
  form.append(input, buttons, error);
  body.hidden = true;
  node.classList.add("editing");
  body.after(form);
  input.focus();
  input.setSelectionRange(input.value.length, input.value.length);
}

function endEdit(node) {
  node.querySelector(".edit-form")?.remove();
  node.querySelector(".body").hidden = false;
  node.classList.remove("editing");
  node.querySelector(".edit-message")?.focus();
}

async function onEditSubmit(e) {
  const form = e.target.closest("form.edit-form");
  if (!form) return;
  e.preventDefault();
  const node = form.closest(".message");
  const input = form.querySelector(".edit-input");
  const error = form.querySelector(".edit-error");
  const body = input.value;
  error.textContent = "";
  if (!body.trim()) {
    error.textContent = "A message cannot be empty (delete it instead).";
    return;
  }
  if ([...body].length > BODY_LIMIT) {
    error.textContent = `Message too long (at most ${BODY_LIMIT} characters).`;
    return;
  }
  if (body === node.querySelector(".body").textContent) {
    endEdit(node);
    return;
  }
  const view = app.view;
  const controls = form.querySelectorAll("textarea, button");
  controls.forEach((c) => { c.disabled = true; });
  try {
    const ok = await session.conn.request("edit_message", {
      message: node.dataset.messageId, body,
    });
    if (view === app.view) applyEdit(ok.message.id, ok.message.body, ok.message.edited_at);
    endEdit(node);
  } catch (err) {
    controls.forEach((c) => { c.disabled = false; });
    error.textContent = err.message;
    input.focus();
  }
}

function onEditKey(e) {
  const input = e.target.closest("textarea.edit-input");
  if (!input) return;
  if (e.key === "Escape") {
    e.preventDefault();
    endEdit(input.closest(".message"));
  } else if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
    e.preventDefault();
    input.form.requestSubmit();
  }
}

function onComposerSubmit(e) {
  e.preventDefault();
  const view = app.view;
  const body = els.input.value;
  if (!view || view.gone || !body.trim()) return;
  if ([...body].length > BODY_LIMIT) {
    showError(`Message too long (at most ${BODY_LIMIT} characters).`);
    return;
  }
  clearError();
  els.input.value = "";
  session.send(view.channel.id, body);
}

function onComposerKey(e) {
  // isComposing: Enter that confirms an IME candidate must not send.
  if (e.key !== "Enter" || e.shiftKey || e.isComposing) return;
  e.preventDefault();
  els.composer.requestSubmit();
}

// ------------------------------------------------- users panel, password
//
// No event announces account changes, so the panel asks when it opens, on
// Refresh, and after each change it makes. The server decides who may do what:
// the admin controls only spare a member some `forbidden` replies.

function closeDialogs() {
  for (const dialog of [els.usersDialog, els.passwordDialog, memberEls.membersDialog]) {
    if (dialog.open) dialog.close();
  }
}

function isAdmin() {
  return app.me?.role === "admin";
}

function formatDateTime(at) {
  const date = new Date(at);
  if (Number.isNaN(date.getTime())) return String(at);
  return date.toLocaleString([], { dateStyle: "medium", timeStyle: "short" });
}

function setPanelError(err) {
  els.usersError.textContent = err ? (err instanceof Error ? err.message : String(err)) : "";
}

function openUsersPanel() {
  clearError();
  setPanelError(null);
  els.inviteCreated.hidden = true;
  els.inviteLink.value = "";
  els.inviteCopied.textContent = "";
  renderUsers();
  if (!els.usersDialog.open) els.usersDialog.showModal();
  loadUsersPanel();
}

async function loadUsersPanel() {
  const load = ++app.usersLoad;
  try {
    const ok = await session.conn.request("users");
    if (load !== app.usersLoad) return;
    app.users = ok.users;
    // The list has the caller's current role (an admin may have changed it).
    const me = ok.users.find((u) => u.id === app.me?.id);
    if (me) app.me.role = me.role;
    renderUsers();
    if (isAdmin()) await loadInvites(load);
  } catch (err) {
    if (load === app.usersLoad) setPanelError(err);
  }
}

async function loadInvites(load = app.usersLoad) {
  const ok = await session.conn.request("list_invites");
  if (load !== app.usersLoad || !isAdmin()) return;
  renderInvites(ok.invites);
}

function renderUsers() {
  const admin = isAdmin();
  els.invites.hidden = !admin;
  const items = app.users.map((user) => {
    const li = el("li", "user");
    li.dataset.userId = user.id;
    li.classList.toggle("inactive", !user.active);
    const who = el("span", "user-who");
    who.append(presenceDot(user.id), el("span", "user-name", user.name));
    if (user.id === app.me?.id) who.append(el("span", "user-you", "(you)"));
    who.append(
      el("span", `badge role-${user.role === "admin" ? "admin" : "member"}`, user.role),
      el("span", `badge state-${user.active ? "active" : "inactive"}`,
        user.active ? "active" : "deactivated"),
    );
    li.append(who);
    if (admin) {
      const actions = el("span", "user-actions");
      const role = el("button", "set-role", user.role === "admin" ? "Make member" : "Make admin");
      role.type = "button";
      role.dataset.role = user.role === "admin" ? "member" : "admin";
      const active = el("button", "set-active", user.active ? "Deactivate" : "Reactivate");
      active.type = "button";
      active.dataset.op = user.active ? "deactivate_user" : "reactivate_user";
      active.classList.toggle("danger", user.active);
      actions.append(role, active);
      li.append(actions);
    }
    return li;
  });
  els.userList.replaceChildren(...items);
}

function renderInvites(invites) {
  const items = invites.map((invite) => {
    const li = el("li", "invite");
    li.dataset.inviteId = invite.id;
    const uses = invite.uses_left === 1 ? "1 use left" : `${invite.uses_left} uses left`;
    const text = `${uses} · until ${formatDateTime(invite.expires_at)} · by ${invite.created_by.name}`;
    const revoke = el("button", "revoke-invite", "Revoke");
    revoke.type = "button";
    li.append(el("span", "invite-text", text), revoke);
    return li;
  });
  if (!items.length) items.push(el("li", "invite-none", "No open invites."));
  els.inviteList.replaceChildren(...items);
}

// Runs one panel action with its button disabled; errors (e.g. `conflict`:
// no active admin would be left) are shown in the panel.
async function panelAction(button, op, args, after) {
  setPanelError(null);
  button.disabled = true;
  try {
    const ok = await session.conn.request(op, args);
    await after(ok);
  } catch (err) {
    setPanelError(err);
  } finally {
    button.disabled = false;
  }
}

function replaceUser(user) {
  app.users = app.users.map((u) => (u.id === user.id ? user : u));
  if (user.id === app.me?.id) app.me.role = user.role;
  renderUsers();
}

function onUserListClick(e) {
  const button = e.target.closest("button");
  const id = button?.closest("li[data-user-id]")?.dataset.userId;
  if (!id) return;
  if (button.classList.contains("set-role")) {
    panelAction(button, "set_role", { user: id, role: button.dataset.role },
      (ok) => replaceUser(ok.user));
  } else if (button.classList.contains("set-active")) {
    panelAction(button, button.dataset.op, { user: id }, (ok) => replaceUser(ok.user));
  }
}

function onInviteListClick(e) {
  const button = e.target.closest("button.revoke-invite");
  const id = button?.closest("li[data-invite-id]")?.dataset.inviteId;
  if (!id) return;
  panelAction(button, "revoke_invite", { invite: id }, () => loadInvites());
}

function onInviteSubmit(e) {
  e.preventDefault();
  const uses = Number(els.inviteUses.value);
  const ttl = Number(els.inviteTtl.value);
  const button = els.inviteForm.querySelector("button[type=submit]");
  panelAction(button, "create_invite", { uses, ttl }, async (ok) => {
    els.inviteLink.value = inviteLink(ok.invite.code);
    els.inviteCopied.textContent = "";
    els.inviteCreated.hidden = false;
    els.inviteLink.focus();
    els.inviteLink.select();
    await loadInvites();
  });
}

// The Clipboard API needs a secure context (https or localhost); elsewhere the
// link is left selected for the reader to copy.
async function copyInviteLink() {
  els.inviteLink.focus();
  els.inviteLink.select();
  try {
    await navigator.clipboard.writeText(els.inviteLink.value);
    els.inviteCopied.textContent = "Copied.";
  } catch {
    const copied = document.execCommand("copy"); // the pre-Clipboard-API way
    els.inviteCopied.textContent = copied ? "Copied." : "Press Ctrl+C (⌘C) to copy the selected link.";
  }
}

function openPasswordDialog() {
  clearError();
  els.passwordForm.reset();
  els.passwordUser.value = app.me?.name ?? "";
  els.passwordError.textContent = "";
  els.passwordOk.textContent = "";
  if (!els.passwordDialog.open) els.passwordDialog.showModal();
  els.passwordCurrent.focus();
}

async function onPasswordSubmit(e) {
  e.preventDefault();
  els.passwordError.textContent = "";
  els.passwordOk.textContent = "";
  if (els.passwordNew.value !== els.passwordRepeat.value) {
    els.passwordError.textContent = "The two new passwords differ.";
    els.passwordRepeat.focus();
    return;
  }
  const button = els.passwordForm.querySelector("button[type=submit]");
  button.disabled = true;
  try {
    await session.conn.request("change_password", {
      password: els.passwordCurrent.value, new_password: els.passwordNew.value,
    });
    els.passwordForm.reset();
    els.passwordUser.value = app.me?.name ?? "";
    els.passwordOk.textContent = "Password changed. Your other sessions were logged out.";
  } catch (err) {
    els.passwordError.textContent = err.message;
  } finally {
    button.disabled = false;
  }
}

function onDialogClick(e) {
  const dialog = e.currentTarget;
  if (e.target.closest(".dialog-close")) {
    dialog.close();
    return;
  }
  // A click on the backdrop lands on the dialog element itself, outside its box.
  if (e.target !== dialog) return;
  const box = dialog.getBoundingClientRect();
  const outside = e.clientX < box.left || e.clientX > box.right
    || e.clientY < box.top || e.clientY > box.bottom;
  if (outside) dialog.close();
}

// ------------------------------------------------------ typing and presence
//
// Both arrive as `ephemeral` frames (subscribe with `ephemeral: true`): live
// only, never replayed, so the page keeps them in memory and rebuilds the
// online set from `boot` (and after a resume, which has no boot, from a fresh
// one). A typing notice shows for TYPING_SHOW_MS unless repeated; the page
// sends `typing` at most every TYPING_SEND_MS while the user types.

const TYPING_SHOW_MS = 5000;
const TYPING_SEND_MS = 3000;

function applyEphemeral(msg) {
  if (msg.kind === "typing") noteTyping(msg.channel.id, msg.user);
  else if (msg.kind === "presence") notePresence(msg.user.id, msg.online === true);
  // other kinds are from a newer server: skip
}

function noteTyping(channelId, user) {
  if (user.id === app.me?.id) return; // our own other tab: not news to us
  let users = app.typing.get(channelId);
  if (!users) app.typing.set(channelId, users = new Map());
  clearTimeout(users.get(user.id)?.timer);
  const timer = setTimeout(() => endTyping(channelId, user.id), TYPING_SHOW_MS);
  users.set(user.id, { name: user.name, timer });
  if (app.view?.channel.id === channelId) renderTyping();
}

function endTyping(channelId, userId) {
  const users = app.typing.get(channelId);
  const entry = users?.get(userId);
  if (!entry) return;
  clearTimeout(entry.timer);
  users.delete(userId);
  if (users.size === 0) app.typing.delete(channelId);
  if (app.view?.channel.id === channelId) renderTyping();
}

function clearTyping() {
  for (const users of app.typing.values()) {
    for (const entry of users.values()) clearTimeout(entry.timer);
  }
  app.typing.clear();
  app.typingSent.clear();
  renderTyping();
}

function renderTyping() {
  const users = app.view && !app.view.gone ? app.typing.get(app.view.channel.id) : null;
  const names = users ? [...users.values()].map((u) => u.name) : [];
  let text = "";
  if (names.length === 1) text = `${names[0]} is typing…`;
  else if (names.length === 2) text = `${names[0]} and ${names[1]} are typing…`;
  else if (names.length > 2) text = "Several people are typing…";
  els.typing.textContent = text; // text, never HTML: names come from other users
}

function onComposerInput() {
  const view = app.view;
  if (!view || view.gone || !session.live || els.input.value.trim() === "") return;
  const now = Date.now();
  if (now - (app.typingSent.get(view.channel.id) ?? -Infinity) < TYPING_SEND_MS) return;
  app.typingSent.set(view.channel.id, now);
  // Best effort, like the frames it causes: a failure is not worth a message.
  session.conn.request("typing", { channel: view.channel.id }).catch(() => {});
}

function setOnline(ids) {
  app.online = new Set(Array.isArray(ids) ? ids : []);
  renderPresenceDots();
}

function notePresence(userId, online) {
  if (online) app.online.add(userId);
  else app.online.delete(userId);
  renderPresenceDots();
}

// After a resume (subscribe from our position, no boot) the presence frames
// of the gap are lost for good: ask for the current set.
async function refreshOnline() {
  try {
    setOnline((await session.conn.request("boot")).online);
  } catch {
    // offline again: the next resume asks again
  }
}

// A dot for any list of users (the users panel; member lists use it too):
// presenceDot(id) makes one, renderPresenceDots() keeps every one current.
function presenceDot(userId) {
  const dot = el("span", "presence-dot");
  dot.dataset.presenceOf = userId;
  paintDot(dot);
  return dot;
}

function paintDot(dot) {
  const online = app.online.has(dot.dataset.presenceOf);
  dot.classList.toggle("online", online);
  dot.title = online ? "online" : "offline";
  dot.setAttribute("aria-label", dot.title);
}

function renderPresenceDots() {
  document.querySelectorAll(".presence-dot").forEach(paintDot);
}

// ------------------------------------- private channels, dms, membership
//
// A channel is { id, name, kind, members? }: kind is public, private or dm,
// and a dm carries its members (boot, channel.created, open_dm). The server
// sends a page only what its user can see, so the page adds a channel on its
// channel.created (private and dm ones reach members only) or on our own
// member.added, and drops it on channel.deleted or our own member.removed.
// The server decides who may do what: the controls only spare a user some
// `forbidden` replies.

const memberEls = {
  newChannelPrivate: $("new-channel-private"),
  dmList: $("dm-list"), dmForm: $("new-dm-form"), dmUser: $("dm-user"),
  membersOpen: $("members-open"), membersDialog: $("members-dialog"),
  membersTitle: $("members-title"), membersError: $("members-error"),
  memberList: $("member-list"), addMemberForm: $("add-member-form"),
  addMemberUser: $("add-member-user"), leave: $("leave-channel"),
};

const membership = {
  people: [], // active users, for the two pickers
  peopleLoad: 0, // a newer `users` load makes the replies of older ones stale
  membersOf: null, // the channel id the members dialog shows
  members: [],
  // The shown channel's creator (the members reply names it): the creator may
  // remove anyone, so sees the Remove buttons, also after a reload.
  creator: null,
  membersLoad: 0,
};

function resetMembership() {
  membership.people = [];
  membership.peopleLoad++;
  membership.membersOf = null;
  membership.members = [];
  membership.creator = null;
  membership.membersLoad++;
}

function channelEntry(channel) {
  const entry = { id: channel.id, name: channel.name, kind: channel.kind || "public" };
  if (Array.isArray(channel.members)) entry.members = channel.members;
  return entry;
}

function newChannelArgs(name) {
  const args = { name };
  if (memberEls.newChannelPrivate.checked) args.private = true;
  return args;
}

// A dm is shown by who else is in it (by one's own name when alone in it).
function channelLabel(channel) {
  if (channel.kind !== "dm" || !Array.isArray(channel.members)) return channel.name;
  const others = channel.members.filter((u) => u.id !== app.me?.id);
  return others.length ? others.map((u) => u.name).join(", ") : channel.name;
}

// renderChannels builds every item alike; this adds what the kind and the
// read state change, and puts dms in their own list.
function decorateChannel(li, channel) {
  li.dataset.kind = channel.kind;
  const name = li.querySelector(".channel-name");
  if (channel.kind === "private") li.prepend(lockIcon());
  if (channel.kind === "dm") {
    name.textContent = channelLabel(channel);
    li.querySelector(".delete-channel")?.remove(); // dms only expire
  }
  const count = isViewing(channel.id) ? 0 : unreadCount(channel.id);
  li.classList.toggle("unread", count > 0);
  const badge = el("span", "unread-badge", count > 99 ? "99+" : String(count));
  badge.title = `${count} unread`;
  badge.hidden = count === 0;
  name.after(badge);
}

// Drawn, not an emoji: not every system has a font with one.
function lockIcon() {
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("viewBox", "0 0 16 16");
  svg.setAttribute("class", "channel-lock");
  svg.setAttribute("role", "img");
  svg.setAttribute("aria-label", "private");
  const title = document.createElementNS(ns, "title");
  title.textContent = "Private channel";
  const shackle = document.createElementNS(ns, "path");
  shackle.setAttribute("d", "M5 7V5a3 3 0 0 1 6 0v2");
  shackle.setAttribute("class", "lock-shackle");
  const body = document.createElementNS(ns, "rect");
  body.setAttribute("x", "3");
  body.setAttribute("y", "7");
  body.setAttribute("width", "10");
  body.setAttribute("height", "8");
  body.setAttribute("rx", "1.5");
  svg.append(title, shackle, body);
  return svg;
}

function placeChannels(items) {
  els.channelList.replaceChildren(...items.filter((li) => li.dataset.kind !== "dm"));
  memberEls.dmList.replaceChildren(...items.filter((li) => li.dataset.kind === "dm"));
}

function membershipFromSnapshot(boot) {
  readsFromSnapshot(boot);
  loadPeopleQuietly();
}

function renderPaneHead() {
  const view = app.view;
  memberEls.membersOpen.hidden = !view || view.gone || view.channel.kind !== "private";
}

// Our own member.removed (we left, or were removed): the channel and what we
// saw of it go, as if we never had it. A later member.added brings it back.
function dropChannel(id) {
  app.channels.delete(id);
  app.unread.delete(id);
  if (app.view?.channel.id === id) {
    app.view = null;
    store.set(CHANNEL_KEY, null);
    renderView();
  }
  if (membership.membersOf === id && memberEls.membersDialog.open) {
    memberEls.membersDialog.close();
  }
  renderChannels();
}

Object.assign(eventHandlers, {
  "member.added": (ev) => {
    if (ev.user?.id === app.me?.id) {
      // What came before the user joined is not unread (PROTOCOL.md).
      app.unread.set(ev.channel.id, newReadState(ev.seq));
      addChannel(ev.channel);
    }
    if (membership.membersOf === ev.channel.id) loadMembers();
  },
  "member.removed": (ev) => {
    if (ev.user?.id === app.me?.id) dropChannel(ev.channel.id);
    else if (membership.membersOf === ev.channel.id) loadMembers();
  },
  "read.updated": (ev) => applyRead(ev.channel.id, ev.read_seq, ev.unread, ev.seq),
});

// --- the user pickers (dm, add member): active users, asked for when needed

async function loadPeople() {
  const load = ++membership.peopleLoad;
  const ok = await session.conn.request("users");
  if (load !== membership.peopleLoad) return;
  membership.people = ok.users.filter((u) => u.active);
  renderPickers();
}

function loadPeopleQuietly() {
  loadPeople().catch((err) => { if (err.code !== "connection_lost") showError(err); });
}

function fillPicker(select, placeholder, users) {
  const keep = select.value;
  select.replaceChildren(new Option(placeholder, ""), ...users.map((u) => new Option(u.name, u.id)));
  if (users.some((u) => u.id === keep)) select.value = keep;
}

function renderPickers() {
  fillPicker(memberEls.dmUser, "Message a user…",
    membership.people.filter((u) => u.id !== app.me?.id));
  const inside = new Set(membership.members.map((u) => u.id));
  fillPicker(memberEls.addMemberUser, "Add a member…",
    membership.people.filter((u) => !inside.has(u.id)));
}

async function onDmSubmit(e) {
  e.preventDefault();
  const user = memberEls.dmUser.value;
  if (!user) return;
  clearError();
  try {
    const ok = await session.conn.request("open_dm", { user });
    memberEls.dmUser.value = "";
    addChannel(ok.channel);
    openChannel(ok.channel.id);
  } catch (err) {
    showError(err);
  }
}

// --- the members dialog of a private channel

function setMembersError(err) {
  memberEls.membersError.textContent = err ? (err instanceof Error ? err.message : String(err)) : "";
}

function openMembers() {
  const view = app.view;
  if (!view || view.gone || view.channel.kind !== "private") return;
  clearError();
  membership.membersOf = view.channel.id;
  membership.members = [];
  membership.creator = null;
  memberEls.membersTitle.textContent = `Members of ${view.channel.name}`;
  setMembersError(null);
  renderMembers();
  renderPickers();
  if (!memberEls.membersDialog.open) memberEls.membersDialog.showModal();
  loadMembers();
  loadPeople().catch(setMembersError);
}

async function loadMembers() {
  const id = membership.membersOf;
  if (!id) return;
  const load = ++membership.membersLoad;
  try {
    const ok = await session.conn.request("members", { channel: id });
    if (load !== membership.membersLoad || id !== membership.membersOf) return;
    membership.members = ok.members;
    membership.creator = ok.creator ? ok.creator.id : null;
    renderMembers();
    renderPickers();
  } catch (err) {
    if (load === membership.membersLoad) setMembersError(err);
  }
}

function renderMembers() {
  const mayRemove = isAdmin() || (membership.creator !== null && membership.creator === app.me?.id);
  const items = membership.members.map((user) => {
    const li = el("li", "member");
    li.dataset.userId = user.id;
    li.append(el("span", "member-name", user.name));
    if (user.id === membership.creator) li.append(el("span", "member-creator", "(creator)"));
    if (user.id === app.me?.id) {
      li.append(el("span", "user-you", "(you)"));
    } else if (mayRemove) {
      const remove = el("button", "remove-member", "Remove");
      remove.type = "button";
      remove.setAttribute("aria-label", `Remove ${user.name}`);
      li.append(remove);
    }
    return li;
  });
  memberEls.memberList.replaceChildren(...items);
}

// One dialog action with its button disabled; errors show in the dialog.
async function membersAction(button, op, args, after) {
  setMembersError(null);
  button.disabled = true;
  try {
    await session.conn.request(op, args);
    after();
  } catch (err) {
    setMembersError(err);
  } finally {
    button.disabled = false;
  }
}

function onMemberListClick(e) {
  const button = e.target.closest("button.remove-member");
  const user = button?.closest("li[data-user-id]")?.dataset.userId;
  if (!user || !membership.membersOf) return;
  membersAction(button, "remove_member", { channel: membership.membersOf, user }, loadMembers);
}

function onAddMemberSubmit(e) {
  e.preventDefault();
  const user = memberEls.addMemberUser.value;
  if (!user || !membership.membersOf) return;
  const button = memberEls.addMemberForm.querySelector("button[type=submit]");
  membersAction(button, "add_member", { channel: membership.membersOf, user }, () => {
    memberEls.addMemberUser.value = "";
    loadMembers();
  });
}

function onLeaveClick() {
  const id = membership.membersOf;
  if (!id || !app.me) return;
  membersAction(memberEls.leave, "remove_member", { channel: id, user: app.me.id },
    () => dropChannel(id));
}

// ------------------------------------------------------------ unread counts
//
// Per channel: the read position and the messages from others above it, by
// id, so that a deletion takes exactly its own message off the count. boot
// gives only a number; the ids behind it are learnt from history in the
// background (up to LEARN_PAGES pages; past that boot's number stays as
// `extra`, exact until one of those messages is deleted). A read.updated,
// ours or another tab's, moves the position and drops what it covers, so the
// tabs of one user agree. The open channel, while the tab is visible, is
// marked read up to its newest message.

const LEARN_PAGES = 4;
const LEARN_PAGE_SIZE = 500;

function newReadState(readSeq, unread = 0) {
  return { readSeq, msgs: new Map(), extra: unread, deleted: null, asked: 0 };
}

function unreadCount(id) {
  const s = app.unread.get(id);
  return s ? s.msgs.size + s.extra : 0;
}

function fromOther(sender) {
  return !app.me || sender?.id !== app.me.id;
}

function isViewing(id) {
  const view = app.view;
  return Boolean(view) && view.channel.id === id && !view.gone
    && document.visibilityState === "visible";
}

function readsFromSnapshot(boot) {
  app.unread = new Map(boot.channels.map((c) => [c.id, newReadState(c.read_seq, c.unread)]));
  for (const c of boot.channels) {
    if (c.unread > 0) learnUnread(c.id).catch(() => { /* boot's number stays */ });
  }
}

async function learnUnread(id) {
  const s = app.unread.get(id);
  s.deleted = new Set(); // deletions seen meanwhile: an older page may still have them
  const found = [];
  let before = null;
  let complete = false;
  try {
    for (let page = 0; page < LEARN_PAGES && !complete; page++) {
      const args = { channel: id, limit: LEARN_PAGE_SIZE };
      if (before !== null) args.before = before;
      const ok = await session.conn.request("history", args);
      if (app.unread.get(id) !== s) return; // a newer snapshot, or the channel went
      found.push(...ok.messages);
      const first = ok.messages[0];
      complete = !ok.more || !first || first.seq <= s.readSeq;
      if (first) before = first.seq;
    }
    if (!complete) return;
    for (const m of found) {
      if (m.seq > s.readSeq && fromOther(m.sender) && !s.deleted.has(m.id)) s.msgs.set(m.id, m.seq);
    }
    s.extra = 0;
  } finally {
    s.deleted = null;
  }
  renderChannels();
}

function countMessage(ev) {
  const s = app.unread.get(ev.channel.id);
  if (!s || ev.seq <= s.readSeq || !fromOther(ev.sender)) return;
  s.msgs.set(ev.message.id, ev.seq);
  renderChannels();
  markSeen();
}

function forgetMessage(ev) {
  const s = app.unread.get(ev.channel.id);
  if (!s) return;
  s.deleted?.add(ev.message.id);
  if (s.msgs.delete(ev.message.id)) renderChannels();
}

// `unread` is the server's count when the position moved, at seq `atSeq`
// (null for a mark_read reply, whose read.updated follows): it only
// corrects the part not known by id.
function applyRead(id, readSeq, unread, atSeq) {
  const s = app.unread.get(id);
  if (!s) return;
  if (readSeq > s.readSeq) {
    s.readSeq = readSeq;
    for (const [mid, seq] of s.msgs) if (seq <= readSeq) s.msgs.delete(mid);
  }
  if (s.extra > 0) {
    if (unread === 0) s.extra = 0;
    else if (atSeq !== null) {
      let known = 0;
      for (const seq of s.msgs.values()) if (seq <= atSeq) known++;
      s.extra = Math.max(0, unread - known);
    }
  }
  renderChannels();
}

// Every mark_read that moves is a committed event: in a busy channel watched by
// many pages, one per message per page would multiply the server's writes. So a
// page marks a channel at most every MARK_READ_MS, and once more at the end.
const MARK_READ_MS = 1500;

function markSeen() {
  const view = app.view;
  if (!view || !view.loaded || !isViewing(view.channel.id)) return;
  const id = view.channel.id;
  const s = app.unread.get(id);
  const newest = Number(els.messages.lastElementChild?.dataset.seq) || 0;
  if (!s || unreadCount(id) === 0 || newest <= s.readSeq || newest <= s.asked) return;
  const wait = (s.markedAt || 0) + MARK_READ_MS - Date.now();
  if (wait > 0) {
    if (!s.markTimer) {
      s.markTimer = setTimeout(() => {
        s.markTimer = null;
        markSeen();
      }, wait);
    }
    return;
  }
  s.markedAt = Date.now();
  s.asked = newest;
  session.conn.request("mark_read", { channel: id, seq: newest })
    .then((ok) => applyRead(id, ok.read_seq, ok.unread, null))
    .catch((err) => {
      s.asked = 0; // asked again when the channel is next seen
      reportUnlessOffline(err);
    });
}

function wireMembership() {
  memberEls.dmForm.addEventListener("submit", onDmSubmit);
  // The list is asked for when the picker is about to be used: new users appear.
  memberEls.dmUser.addEventListener("focus", loadPeopleQuietly);
  memberEls.membersOpen.addEventListener("click", openMembers);
  memberEls.memberList.addEventListener("click", onMemberListClick);
  memberEls.addMemberForm.addEventListener("submit", onAddMemberSubmit);
  memberEls.leave.addEventListener("click", onLeaveClick);
  memberEls.membersDialog.addEventListener("click", onDialogClick);
  memberEls.membersDialog.addEventListener("close", () => {
    membership.membersOf = null;
    membership.membersLoad++;
  });
  memberEls.dmList.addEventListener("click", onChannelListClick);
  document.addEventListener("visibilitychange", () => {
    renderChannels();
    markSeen();
  });
}

// ------------------------------------------------------------ search
//
// Results take the conversation's place in the pane; choosing one opens its
// channel and loads older history until the message is there, then shows it.

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

function renderSearchHit(hit) {
  const button = el("button", "search-hit");
  button.type = "button";
  button.dataset.channelId = hit.channel.id;
  button.dataset.messageId = hit.id;
  button.dataset.seq = String(hit.seq);
  const meta = el("span", "meta");
  const time = el("time", "time", formatTime(hit.at));
  time.dateTime = hit.at;
  time.title = hit.at;
  meta.append(el("span", "hit-channel", hit.channel.name), el("span", "sender", hit.sender.name),
    time);
  if (hit.edited_at) meta.append(el("span", "edited", "(edited)"));
  button.append(meta, el("span", "body", hit.body));
  const li = el("li");
  li.append(button);
  return li;
}

function showSearch(shown) {
  els.searchResults.hidden = !shown;
  els.pane.classList.toggle("searching", shown);
}

function closeSearch() {
  if (!app.search) return;
  app.search = null;
  els.searchList.replaceChildren();
  showSearch(false);
}

// A newer search (or Close) makes the replies of older ones stale.
let searchLoads = 0;

async function runSearch(query, older) {
  const load = ++searchLoads;
  const args = { query, limit: SEARCH_PAGE };
  if (older) args.before = app.search.oldest;
  else {
    app.search = { query, oldest: Infinity, load };
    els.searchList.replaceChildren();
    els.searchSummary.textContent = "Searching…";
    els.searchMore.hidden = true;
    showSearch(true);
  }
  els.searchMore.disabled = true;
  try {
    const ok = await session.conn.request("search", args);
    if (load !== searchLoads || !app.search) return;
    els.searchList.append(...ok.messages.map(renderSearchHit));
    for (const hit of ok.messages) app.search.oldest = Math.min(app.search.oldest, hit.seq);
    const count = els.searchList.childElementCount;
    els.searchSummary.textContent = count === 0 ? "No messages found."
      : `${count}${ok.more ? "+" : ""} message${count === 1 && !ok.more ? "" : "s"}`;
    els.searchMore.hidden = !ok.more;
  } catch (err) {
    if (load !== searchLoads || !app.search) return;
    // bad_request names what is wrong with the query; show it where the results go
    els.searchSummary.textContent = err.message;
  } finally {
    els.searchMore.disabled = false;
  }
}

function onSearchSubmit(e) {
  e.preventDefault();
  const query = els.searchInput.value;
  if (!query.trim()) return;
  clearError();
  runSearch(query, false);
}

function onSearchListClick(e) {
  const hit = e.target.closest(".search-hit");
  if (!hit) return;
  clearError();
  jumpToMessage(hit.dataset.channelId, hit.dataset.messageId, Number(hit.dataset.seq))
    .catch(reportUnlessOffline);
}

async function jumpToMessage(channelId, messageId, seq) {
  if (!app.channels.has(channelId)) {
    showError("That channel no longer exists.");
    return;
  }
  if (app.view?.channel.id !== channelId) await openChannel(channelId);
  else closeSearch();
  const view = app.view;
  // The view holds the newest messages down to view.oldest, with no gap: older
  // pages are loaded until the message is among them (or history ends).
  for (let waits = 0; view === app.view && !view.nodes.has(messageId); ) {
    if (view.loading || !view.loaded) {
      if (++waits > 600) return; // 30 s without a page: give up quietly
      await sleep(50);
      continue;
    }
    if (!view.more || view.oldest < seq) break;
    await loadPage(view, true, JUMP_PAGE);
  }
  if (view !== app.view) return;
  const node = view.nodes.get(messageId);
  if (!node) {
    showError("That message is no longer there.");
    return;
  }
  for (const old of els.messages.querySelectorAll(".message.highlight")) {
    old.classList.remove("highlight");
  }
  node.classList.add("highlight");
  node.scrollIntoView({ block: "center" });
}

// ------------------------------------------------------------------ wiring

const conn = new Connection(wsUrl(), {
  onOpen: () => session.onOpen(),
  onClose: (parked) => session.onClose(parked),
  onEvent: (ev) => session.onEvent(ev),
  onEphemeral: (msg) => { if (app.me) applyEphemeral(msg); },
  onStrayError: showError,
  onTokenEnded: (reason) => session.onTokenEnded(reason),
  mayPark: () => session.mayPark(),
});

const session = new Session(conn, {
  onState: setConnState,
  onLoggedIn: showChat,
  onLoggedOut: () => { clearTyping(); setOnline([]); showLogin(); },
  onEnded: onSessionEnded,
  onSnapshot: applySnapshot,
  onEvent: applyEvent,
  onSent: (message, channelId) => {
    if (app.view?.channel.id === channelId) withScroll("bottom", () => insertMessage(message));
  },
  onOutbox: () => renderOutbox(),
  onLive,
  onResumed: refreshOnline,
  onError: showError,
  onRecovered: clearErrorIf,
});

els.loginForm.addEventListener("submit", onLoginSubmit);
els.logout.addEventListener("click", () => { clearError(); showLoginNotice(""); session.logout(); });
els.usersOpen.addEventListener("click", openUsersPanel);
els.usersRefresh.addEventListener("click", loadUsersPanel);
els.userList.addEventListener("click", onUserListClick);
els.inviteList.addEventListener("click", onInviteListClick);
els.inviteForm.addEventListener("submit", onInviteSubmit);
els.inviteCopy.addEventListener("click", copyInviteLink);
els.passwordOpen.addEventListener("click", openPasswordDialog);
els.passwordForm.addEventListener("submit", onPasswordSubmit);
for (const dialog of [els.usersDialog, els.passwordDialog]) {
  dialog.addEventListener("click", onDialogClick);
}
window.addEventListener("hashchange", () => {
  applyInviteFragment();
  if (app.me) dropInviteFragment(); // logged in already: kept for after a logout
});
els.newChannelForm.addEventListener("submit", onNewChannelSubmit);
els.channelList.addEventListener("click", onChannelListClick);
els.messages.addEventListener("click", onMessagesClick);
els.messages.addEventListener("submit", onEditSubmit);
els.messages.addEventListener("keydown", onEditKey);
els.messages.addEventListener("scroll", maybeLoadOlder, { passive: true });
els.composer.addEventListener("submit", onComposerSubmit);
els.input.addEventListener("keydown", onComposerKey);
els.input.addEventListener("input", onComposerInput);
els.error.addEventListener("click", clearError);
els.searchForm.addEventListener("submit", onSearchSubmit);
els.searchList.addEventListener("click", onSearchListClick);
els.searchMore.addEventListener("click", () => runSearch(app.search.query, true));
els.searchClose.addEventListener("click", () => { searchLoads++; closeSearch(); });
// Skip the rest of a backoff wait when the network or the tab comes back.
window.addEventListener("online", () => conn.wake());
document.addEventListener("visibilitychange", () => {
  if (document.visibilityState === "visible") conn.wake();
});
wireMembership();

applyInviteFragment();
// Without a saved token the form can be filled in while the socket opens.
if (!session.token) showLogin();
setConnState("connecting");
conn.start();
