// livevote OBS overlay logic: connects to the streamer's channel with the `livevote` package and
// draws one card per event (title, animated bars, countdown by the server's clock), highlights
// the result after the close for a few seconds, and shows a small indicator while reconnecting.
// Everything is configured from the query string (see README.md); there is no build step.

"use strict";

// `window.livevote` comes from the package's classic-script build, loaded just before this file.
const sdk = window.livevote;

const settings = readSettings(new URLSearchParams(window.location.search));
const stack = document.getElementById("stack");
const connection = document.getElementById("connection");

/** Cards by event id: what the overlay has seen of each event and its element. */
const cards = new Map();
/** Set once the first live connection was made: before that, "connecting" is not news. */
let wasLive = false;
let connectionTimer = null;
let client = null;

function readSettings(query) {
  const servedByLivevote = /^https?:$/.test(window.location.protocol) && window.location.hostname !== "absolute";
  // OBS serves a "local file" browser source from http://absolute/..., so only a page served by
  // a real host can assume the server is its own origin.
  const server = (query.get("server") || (servedByLivevote ? window.location.origin : "http://127.0.0.1:8080")).replace(/\/+$/, "");
  const number = (name, fallback, minimum, maximum) => {
    const value = Number(query.get(name));
    return Number.isFinite(value) && value >= minimum && value <= maximum && query.get(name) !== null ? value : fallback;
  };
  return {
    server,
    streamerId: query.get("streamerId") || "",
    token: query.get("token") || "",
    tokenUrl: query.get("tokenUrl") ? new URL(query.get("tokenUrl"), server + "/").toString() : "",
    holdMs: number("hold", 8, 1, 600) * 1000,
    maxCards: number("max", 2, 1, 6),
    position: query.get("position") || "top-right",
    ...lookSettings(query),
  };
}

/** The look: theme, scale, colours, font and which events to show; anything malformed is ignored. */
function lookSettings(query) {
  const pick = (name, allowed, fallback) => (allowed.includes(query.get(name)) ? query.get(name) : fallback);
  // Colours as OBS widget URLs carry them: hex digits, with or without the "#" (%23).
  const colour = (name) => {
    const value = (query.get(name) || "").replace(/^#/, "");
    return /^([0-9a-f]{3}|[0-9a-f]{4}|[0-9a-f]{6}|[0-9a-f]{8})$/i.test(value) ? `#${value}` : null;
  };
  const scale = Number(query.get("scale"));
  const font = query.get("font") || "";
  return {
    theme: pick("theme", ["dark", "light"], "dark"),
    show: pick("show", ["all", "open", "results"], "all"),
    scale: query.get("scale") !== null && Number.isFinite(scale) && scale >= 0.25 && scale <= 4 ? scale : 1,
    accent: colour("accent"),
    accent2: colour("accent2"),
    // A family name only (letters, digits, spaces, dashes): it goes into CSS.
    font: /^[\w \-]{1,64}$/.test(font) ? font : null,
  };
}

/** Applies the look settings to the page: classes for the theme, CSS variables for the rest. */
function applyLook() {
  document.body.classList.add(`theme-${settings.theme}`);
  const style = document.documentElement.style;
  style.setProperty("--scale", String(settings.scale));
  if (settings.accent) style.setProperty("--accent", settings.accent);
  if (settings.accent2) style.setProperty("--accent-2", settings.accent2);
  if (settings.font) style.setProperty("--font", `"${settings.font}"`);
}

function showSetupHelp(problem) {
  const setup = document.getElementById("setup");
  setup.hidden = false;
  setup.innerHTML = `<strong>livevote overlay: ${escapeHtml(problem)}</strong><br>
    Add the settings to the address, for example<br>
    <code>index.html?server=http://127.0.0.1:8080&amp;streamerId=&lt;uuid&gt;&amp;token=&lt;jwt&gt;</code><br>
    (or <code>tokenUrl=</code> instead of <code>token=</code>). See README.md next to this page.`;
}

function escapeHtml(text) {
  return String(text).replace(/[&<>"']/g, (character) => `&#${character.charCodeAt(0)};`);
}

/** A token for the connection: the one from the query string, or a fresh one from tokenUrl. */
async function fetchToken() {
  if (!settings.tokenUrl) return settings.token;
  const response = await fetch(settings.tokenUrl, { cache: "no-store" });
  if (!response.ok) throw new Error(`tokenUrl answered ${response.status}`);
  const body = await response.json();
  return body.token;
}

async function start() {
  document.body.classList.add(`position-${settings.position}`);
  applyLook();
  if (!sdk) return showSetupHelp("the livevote package did not load (build it with `cargo xtask npm`)");
  if (!settings.streamerId) return showSetupHelp("streamerId is missing");
  if (!settings.token && !settings.tokenUrl) return showSetupHelp("token (or tokenUrl) is missing");

  const options = { url: settings.server, streamerId: settings.streamerId };
  if (settings.tokenUrl) options.getToken = fetchToken;
  else options.token = settings.token;

  // The package retries the socket by itself; this loop only covers a first start that failed
  // before a client existed (for example the token URL was not reachable yet).
  for (let attempt = 0; client === null; attempt += 1) {
    try {
      client = await sdk.connect(options);
    } catch (error) {
      console.warn("livevote overlay: could not start, retrying", error);
      setConnectionIndicator(true, "connecting…");
      await new Promise((resolve) => setTimeout(resolve, Math.min(1000 * 2 ** attempt, 15000)));
    }
  }
  listen("store", render);
  listen("status", onStatus);
  onStatus(client.status());
  render();
  // Countdowns and the result's hold time move with the clock, not only with messages.
  setInterval(render, 250);
}

/** Adds a listener to the client, whichever of the package's two styles it offers. */
function listen(topic, listener) {
  if (typeof client.on === "function") return client.on(topic, listener);
  const id = client.listen(topic, listener);
  return () => client.unlisten(id);
}

function onStatus(status) {
  const state = status && status.state;
  if (state === "live") {
    wasLive = true;
    setConnectionIndicator(false);
  } else if (state === "closed") {
    const reason = status.error && status.error.message ? status.error.message : "disconnected";
    setConnectionIndicator(true, `disconnected: ${reason}`, 0);
  } else if (wasLive) {
    setConnectionIndicator(true, "reconnecting…");
  } else {
    // A first connection that takes a while is worth a word too, but not a flicker.
    setConnectionIndicator(true, "connecting…", 3000);
  }
}

/** Shows the indicator after a short delay (a blip of a reconnect never shows) or hides it. */
function setConnectionIndicator(visible, text, delayMs = 800) {
  clearTimeout(connectionTimer);
  if (!visible) {
    connection.hidden = true;
    return;
  }
  connectionTimer = setTimeout(() => {
    connection.querySelector(".connection-text").textContent = text;
    connection.hidden = false;
  }, delayMs);
}

function render() {
  if (!client) return;
  const now = performance.now();
  const current = new Set();
  for (const event of client.events()) {
    current.add(event.id);
    let card = cards.get(event.id);
    if (!card) {
      // An event first seen already closed (a snapshot's recent result) is old news: skip it.
      card = { firstSeen: now, closedSeen: event.status === "closed" ? -Infinity : null, longestRemaining: 0, element: null };
      cards.set(event.id, card);
    }
    if (event.status === "closed" && card.closedSeen === null) card.closedSeen = now;
    card.event = event;
  }

  const holding = (card) => card.closedSeen !== null && card.closedSeen !== -Infinity && now - card.closedSeen < settings.holdMs;
  // `show=open` hides results, `show=results` shows nothing until a vote closes.
  const results = settings.show === "open" ? [] : [...cards.values()].filter(holding).sort((a, b) => b.closedSeen - a.closedSeen);
  const open = settings.show === "results" ? [] : [...cards.values()].filter((card) => card.event.status === "open" && current.has(card.event.id)).sort((a, b) => b.firstSeen - a.firstSeen);
  const visible = new Set([...results, ...open].slice(0, settings.maxCards));

  for (const [id, card] of cards) {
    if (visible.has(card)) continue;
    if (card.element) dismiss(card);
    // Forget events the client forgot, so that the map does not grow through a long stream.
    if (!current.has(id) && !holding(card)) cards.delete(id);
  }
  const ordered = [...visible].sort((a, b) => b.firstSeen - a.firstSeen);
  ordered.forEach((card, index) => {
    if (!card.element) card.element = createCard(card.event);
    updateCard(card);
    // Positions count the cards that stay; a leaving card fades out where it is.
    const staying = [...stack.children].filter((element) => !element.classList.contains("leaving"));
    if (staying[index] !== card.element) stack.insertBefore(card.element, staying[index] || null);
  });
}

function dismiss(card) {
  const element = card.element;
  card.element = null;
  element.classList.remove("entering");
  element.classList.add("leaving");
  setTimeout(() => element.remove(), 550);
}

function createCard(event) {
  const element = document.createElement("article");
  element.className = "card entering";
  element.addEventListener("animationend", (animation) => {
    if (animation.target === element && animation.animationName === "card-in") element.classList.remove("entering");
  });
  element.dataset.eventId = event.id;
  element.innerHTML = `
    <div class="time-band"></div>
    <div class="card-head"><span class="badge">Live vote</span><span class="countdown"></span></div>
    <h1 class="title"></h1>
    <ul class="options"></ul>
    <div class="footer"><span class="total"></span><span class="cost"></span></div>`;
  element.querySelector(".title").textContent = event.title;
  const list = element.querySelector(".options");
  for (const option of event.options) {
    const item = document.createElement("li");
    item.className = "option";
    item.dataset.optionId = option.id;
    item.innerHTML = `
      <div class="option-line"><span class="option-label"></span><span class="option-percent">0%</span></div>
      <div class="track"><div class="bar"></div></div>`;
    item.querySelector(".option-label").textContent = option.label;
    list.appendChild(item);
  }
  element.querySelector(".cost").textContent = `${event.costPerVote.toLocaleString("en-US")} points per vote`;
  return element;
}

function updateCard(card) {
  const { event, element } = card;
  const closed = event.status === "closed";
  const totals = (closed && event.result ? event.result.totals : event.totals) || {};
  const votes = event.options.map((option) => Number(totals[option.id] || 0));
  const sum = votes.reduce((total, count) => total + count, 0);
  const best = Math.max(...votes);
  const winner = closed && event.result ? event.result.optionId : null;

  element.classList.toggle("closed", closed);
  element.dataset.status = event.status;
  element.querySelector(".badge").textContent = closed ? "Result" : "Live vote";

  element.querySelectorAll(".option").forEach((item, index) => {
    const share = sum > 0 ? votes[index] / sum : 0;
    const percent = `${Math.round(share * 100)}%`;
    const percentElement = item.querySelector(".option-percent");
    if (percentElement.textContent !== percent) percentElement.textContent = percent;
    // Setting the same width again would restart nothing, but skip it to keep style work low.
    const width = `${(share * 100).toFixed(1)}%`;
    const bar = item.querySelector(".bar");
    if (bar.style.width !== width) bar.style.width = width;
    item.classList.toggle("leading", !closed && sum > 0 && votes[index] === best);
    item.classList.toggle("winner", item.dataset.optionId === winner);
  });

  element.querySelector(".total").textContent = `${sum.toLocaleString("en-US")} ${sum === 1 ? "vote" : "votes"}`;

  const countdown = element.querySelector(".countdown");
  const band = element.querySelector(".time-band");
  if (closed) {
    countdown.textContent = "Voting closed";
    countdown.classList.remove("urgent");
    band.style.transform = "scaleX(1)";
    return;
  }
  // remainingMs uses the server's clock, so a viewer machine whose clock is off counts right.
  const remaining = Math.max(0, Number(client.remainingMs(event)) || 0);
  card.longestRemaining = Math.max(card.longestRemaining, remaining);
  const seconds = Math.ceil(remaining / 1000);
  countdown.textContent = remaining > 0 ? `${Math.floor(seconds / 60)}:${String(seconds % 60).padStart(2, "0")}` : "closing…";
  countdown.classList.toggle("urgent", remaining > 0 && remaining <= 10000);
  band.style.transform = `scaleX(${card.longestRemaining > 0 ? remaining / card.longestRemaining : 0})`;
}

start();
