// livevote viewer page logic: signs in as a demo user (the demo server's /demo/token stands in for
// your own backend), shows the user's balance live from BALANCE_UPDATED, lists the streamer's
// events and votes on them with the cost shown, explaining refusals in words.

"use strict";

// `window.livevote` comes from the package's classic-script build, loaded just before this file.
const sdk = window.livevote;

const query = new URLSearchParams(window.location.search);
const server = (query.get("server") || (/^https?:$/.test(window.location.protocol) ? window.location.origin : "http://127.0.0.1:8080")).replace(/\/+$/, "");

const userSelect = document.getElementById("user");
const balanceElement = document.getElementById("balance");
const statusElement = document.getElementById("status");
const messageElement = document.getElementById("message");
const eventsElement = document.getElementById("events");
const emptyElement = document.getElementById("empty");

let client = null;
let unlisteners = [];
let messageTimer = null;
let statusTimer = null;
/** Votes per click, chosen per event. */
const amounts = new Map();
/** Event cards by id. */
const cards = new Map();

/** What each refusal means for a viewer. */
function explain(error, event, votes) {
  const cost = event ? event.costPerVote * votes : 0;
  switch (error && error.code) {
    case "INSUFFICIENT_BALANCE":
      return `Not enough points: this vote costs ${format(cost)} and you have ${format(client.balance() ?? 0)}.`;
    case "EVENT_CLOSED":
      return "Voting has closed for this event.";
    case "RATE_LIMITED":
      return "Slow down a little: too many votes at once. Try again in a second.";
    case "UNKNOWN_OPTION":
      return "That answer is no longer part of this vote.";
    case "INVALID_VOTES":
      return "You can cast between 1 and 1,000 votes at a time.";
    case "NOT_FOUND":
      return "This event no longer exists.";
    case "NETWORK_ERROR":
      return "Could not reach the server. Check your connection and try again.";
    case "UNAUTHORIZED":
    case "TOKEN_EXPIRED":
      return "Your sign-in has expired. Reload the page to sign in again.";
    default:
      return `The vote was not accepted${error && error.message ? `: ${error.message}` : "."}`;
  }
}

function format(number) {
  return Number(number).toLocaleString("en-US");
}

function showMessage(text, kind = "error") {
  clearTimeout(messageTimer);
  messageElement.textContent = text;
  messageElement.className = `message ${kind === "success" ? "success" : ""}`;
  messageElement.dataset.kind = kind;
  messageElement.hidden = false;
  messageTimer = setTimeout(() => (messageElement.hidden = true), kind === "success" ? 3000 : 6000);
}

/** The user id a token was issued for (its `sub` claim), to subscribe to the user's channel. */
function tokenSubject(token) {
  const payload = token.split(".")[1] || "";
  const json = atob(payload.replace(/-/g, "+").replace(/_/g, "/").padEnd(Math.ceil(payload.length / 4) * 4, "="));
  return JSON.parse(json).sub;
}

/** Who may sign in: the demo's users, or the one token given in the query string. */
async function loadUsers() {
  if (query.get("token")) {
    const token = query.get("token");
    return [{ name: query.get("name") || "you", signIn: async () => ({ token, streamerId: query.get("streamerId"), userId: tokenSubject(token) }) }];
  }
  const response = await fetch(`${server}/demo/config`);
  if (!response.ok) throw new Error("this server has no demo users: add ?token=…&streamerId=… to the address");
  const config = await response.json();
  return config.users.map((user) => ({
    name: user.name,
    signIn: async () => {
      // Development only: a real page gets its token from its own backend.
      const answer = await fetch(`${server}/demo/token?role=viewer&user=${user.index}`);
      if (!answer.ok) throw new Error(`could not get a token (${answer.status})`);
      const body = await answer.json();
      return { token: body.token, streamerId: body.streamerId, userId: body.userId };
    },
  }));
}

function listen(topic, listener) {
  if (typeof client.on === "function") return client.on(topic, listener);
  const id = client.listen(topic, listener);
  return () => client.unlisten(id);
}

async function signIn(user) {
  for (const stop of unlisteners) stop();
  unlisteners = [];
  if (client) client.close();
  client = null;
  cards.clear();
  eventsElement.querySelectorAll(".event").forEach((element) => element.remove());
  balanceElement.textContent = "–";
  const { token, streamerId, userId } = await user.signIn();
  client = await sdk.connect({ url: server, streamerId, token, channels: [`user:${userId}`] });
  unlisteners.push(listen("store", render), listen("balance", showBalance), listen("status", showStatus));
  showBalance(client.balance());
  showStatus(client.status());
  render();
}

function showBalance(balance) {
  if (balance === null || balance === undefined) return;
  const text = `${format(balance)} points`;
  if (balanceElement.textContent === text) return;
  balanceElement.textContent = text;
  balanceElement.dataset.balance = String(balance);
  balanceElement.classList.add("changed");
  setTimeout(() => balanceElement.classList.remove("changed"), 600);
}

function showStatus(status) {
  clearTimeout(statusTimer);
  const state = status && status.state;
  if (state === "live") {
    statusElement.hidden = true;
    return;
  }
  const text = state === "closed" ? `Disconnected${status.error && status.error.message ? `: ${status.error.message}` : "."}` : "Reconnecting…";
  // A short blip is not worth a banner.
  statusTimer = setTimeout(() => {
    statusElement.textContent = text;
    statusElement.hidden = false;
  }, state === "closed" ? 0 : 1000);
}

function render() {
  if (!client) return;
  const events = client.events();
  const seen = new Set();
  for (const event of events) {
    seen.add(event.id);
    let card = cards.get(event.id);
    if (!card) {
      card = createCard(event);
      cards.set(event.id, card);
    }
    updateCard(card, event);
  }
  for (const [id, card] of cards) {
    if (!seen.has(id)) {
      card.remove();
      cards.delete(id);
    }
  }
  // New events are added below the others and nothing is ever reordered: a list that moves
  // while someone reaches for a button makes them vote on the wrong question.
  for (const event of events) {
    const card = cards.get(event.id);
    if (!card.isConnected) eventsElement.appendChild(card);
  }
  emptyElement.hidden = events.length > 0;
}

function createCard(event) {
  const card = document.createElement("section");
  card.className = "event";
  card.dataset.eventId = event.id;
  card.innerHTML = `
    <div class="event-head"><h2></h2><span class="countdown"></span></div>
    <div class="meta"></div>
    <div class="amount">Votes per click:
      <button type="button" data-amount="1" aria-pressed="true">1</button>
      <button type="button" data-amount="5" aria-pressed="false">5</button>
      <button type="button" data-amount="10" aria-pressed="false">10</button>
    </div>
    <ul class="options"></ul>`;
  card.querySelector("h2").textContent = event.title;
  card.querySelectorAll(".amount button").forEach((button) =>
    button.addEventListener("click", () => {
      amounts.set(event.id, Number(button.dataset.amount));
      card.querySelectorAll(".amount button").forEach((other) => other.setAttribute("aria-pressed", String(other === button)));
      render();
    }),
  );
  const list = card.querySelector(".options");
  for (const option of event.options) {
    const item = document.createElement("li");
    item.className = "option";
    item.dataset.optionId = option.id;
    item.innerHTML = `
      <span class="option-label"></span>
      <button type="button" class="vote"></button>
      <div class="track"><div class="bar"></div></div>
      <span class="option-share"></span>`;
    item.querySelector(".option-label").textContent = option.label;
    item.querySelector(".vote").addEventListener("click", () => vote(event.id, option));
    list.appendChild(item);
  }
  return card;
}

function updateCard(card, event) {
  const closed = event.status === "closed";
  const totals = (closed && event.result ? event.result.totals : event.totals) || {};
  const sum = event.options.reduce((total, option) => total + Number(totals[option.id] || 0), 0);
  const votes = amounts.get(event.id) || 1;
  card.classList.toggle("closed", closed);
  card.querySelector(".meta").textContent = `${format(event.costPerVote)} points per vote · ${format(sum)} ${sum === 1 ? "vote" : "votes"} so far`;
  card.querySelector(".amount").hidden = closed;
  const remaining = closed ? 0 : Math.max(0, Number(client.remainingMs(event)) || 0);
  const seconds = Math.ceil(remaining / 1000);
  card.querySelector(".countdown").textContent = closed ? "Closed" : remaining > 0 ? `${Math.floor(seconds / 60)}:${String(seconds % 60).padStart(2, "0")} left` : "closing…";
  card.querySelectorAll(".option").forEach((item) => {
    const count = Number(totals[item.dataset.optionId] || 0);
    const share = sum > 0 ? count / sum : 0;
    item.querySelector(".bar").style.width = `${(share * 100).toFixed(1)}%`;
    item.querySelector(".option-share").textContent = `${Math.round(share * 100)}% · ${format(count)}`;
    item.classList.toggle("winner", closed && event.result && event.result.optionId === item.dataset.optionId);
    const button = item.querySelector(".vote");
    // The cost is on the button, so nobody spends points without seeing how many.
    button.textContent = closed ? "Closed" : `Vote${votes > 1 ? ` ×${votes}` : ""} · ${format(event.costPerVote * votes)} pts`;
    button.dataset.cost = String(event.costPerVote * votes);
    button.disabled = closed || remaining === 0;
  });
}

async function vote(eventId, option) {
  const event = client.event(eventId);
  const votes = amounts.get(eventId) || 1;
  try {
    const answer = await client.vote(eventId, option.id, votes);
    showBalance(answer.balance);
    showMessage(`You voted ${votes > 1 ? `${votes}× ` : ""}for “${option.label}” (−${format(event.costPerVote * votes)} points).`, "success");
  } catch (error) {
    showMessage(explain(error, event, votes));
  }
}

async function main() {
  if (!sdk) {
    showMessage("The livevote package did not load: build it with `cargo xtask npm`.");
    return;
  }
  let users;
  try {
    users = await loadUsers();
  } catch (error) {
    showMessage(`Cannot start: ${error.message}`);
    return;
  }
  users.forEach((user, index) => userSelect.add(new Option(user.name, String(index))));
  const chosen = Number(query.get("user") || 0);
  userSelect.value = String(chosen < users.length ? chosen : 0);
  userSelect.addEventListener("change", () => signIn(users[Number(userSelect.value)]).catch((error) => showMessage(`Cannot sign in: ${error.message}`)));
  try {
    await signIn(users[Number(userSelect.value)]);
  } catch (error) {
    showMessage(`Cannot sign in: ${error.message}`);
  }
  // Countdowns move with the clock, not only with messages.
  setInterval(render, 500);
}

main();
